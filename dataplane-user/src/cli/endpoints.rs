//! `ipipd endpoints`: the running node's endpoints map, with each pod's name when the node's
//! state directory is known (`--config` or `--state-dir`).

use anyhow::Result;
use dataplane_user::{desired::RuntimeChanges, inspect};

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let mut rows = inspect::endpoints(&r.node.pin_dir()?)?;
    if let Ok(dir) = r.node.state_dir()
        && let Ok(rt) = RuntimeChanges::load(&dir)
    {
        for row in &mut rows {
            row.pod = rt
                .endpoints_added
                .iter()
                .find(|e| e.address == row.address)
                .and_then(|e| e.pod.clone());
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
