//! `ipipd routes`: the running node's routes map (what replaces the route table).

use anyhow::Result;
use dataplane_user::inspect;

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let rows = inspect::routes(&r.node.pin_dir()?)?;
    print(r.output, &rows, |rows| {
        println!("{:<20} {:<22} {:<12} TARGET", "PREFIX", "KIND", "FLAGS");
        for row in rows {
            let target = match (row.ifindex, row.node) {
                (Some(i), _) => format!("ifindex {i}"),
                (_, Some(n)) => format!("via {n}"),
                _ => String::new(),
            };
            println!(
                "{:<20} {:<22} {:<12} {target}",
                row.prefix,
                row.kind,
                row.flags.join(",")
            );
        }
    })
}
