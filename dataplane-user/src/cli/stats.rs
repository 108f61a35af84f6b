//! `ipipd stats`: the running node's counters, per interface, hook and reason.

use anyhow::Result;
use dataplane_user::inspect;

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let pin_dir = r.node.pin_dir()?;
    let rows = inspect::stats(&pin_dir)?;
    let flows = inspect::kernel_flows(&pin_dir, &rows).ok();
    print(r.output, &rows, |rows| {
        println!(
            "{:<16} {:<12} {:<26} {:>12} {:>14}",
            "INTERFACE", "HOOK", "REASON", "PACKETS", "BYTES"
        );
        for s in rows {
            println!(
                "{:<16} {:<12} {:<26} {:>12} {:>14}",
                s.interface, s.hook, s.reason, s.packets, s.bytes
            );
        }
        if let Some(f) = &flows {
            println!(
                "\nkernel flows: {} of {} entries; {} recorded, {} evicted; {} replies handed to the kernel",
                f.entries, f.capacity, f.recorded, f.evicted, f.replies
            );
        }
    })
}
