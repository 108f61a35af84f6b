//! `ipipd endpoints`: the running node's endpoints map.

use anyhow::Result;
use dataplane_user::inspect;

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let rows = inspect::endpoints(&r.node.pin_dir()?)?;
    print(r.output, &rows, |rows| {
        println!(
            "{:<8} {:<16} {:<18} HOST_MAC",
            "IFINDEX", "ADDRESS", "POD_MAC"
        );
        for e in rows {
            println!(
                "{:<8} {:<16} {:<18} {}",
                e.ifindex, e.address, e.pod_mac, e.host_mac
            );
        }
    })
}
