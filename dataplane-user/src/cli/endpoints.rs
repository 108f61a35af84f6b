//! `ipipd endpoints`: the running node's endpoints map, with each pod's name when the node's
//! state directory is known (`--config` or `--state-dir`): the CNI plugin's, or Calico's.

use anyhow::Result;
use dataplane_user::{datastore::sync, desired::RuntimeChanges, inspect};

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let mut rows = inspect::endpoints(&r.node.pin_dir()?)?;
    if let Ok(dir) = r.node.state_dir() {
        // The CNI plugin's pods are runtime changes; Calico's (calico-etcd mode) workload
        // endpoints in the datastore's cached view.
        let rt = RuntimeChanges::load(&dir).unwrap_or_default();
        let cached = sync::load_cache(&dir).unwrap_or_default();
        for row in &mut rows {
            row.pod = rt
                .endpoints_added
                .iter()
                .find(|e| e.address == row.address)
                .and_then(|e| e.pod.clone())
                .or_else(|| {
                    cached
                        .view
                        .calico
                        .workloads
                        .values()
                        .find(|w| w.address == row.address)
                        .map(|w| w.pod.clone())
                });
        }
    }
    print(r.output, &rows, |rows| {
        println!(
            "{:<8} {:<16} {:<16} {:<18} {:<18} POD",
            "IFINDEX", "INTERFACE", "ADDRESS", "POD_MAC", "HOST_MAC"
        );
        for e in rows {
            println!(
                "{:<8} {:<16} {:<16} {:<18} {:<18} {}",
                e.ifindex,
                e.interface,
                e.address,
                e.pod_mac,
                e.host_mac,
                e.pod.as_deref().unwrap_or("-")
            );
        }
    })
}
