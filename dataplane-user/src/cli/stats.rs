//! `ipipd stats`: the running node's counters, per interface, hook and reason.

use anyhow::Result;
use dataplane_user::inspect;

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let rows = inspect::stats(&r.node.pin_dir()?)?;
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
    })
}
