//! `ipipd status`: the running node's settings and attachments.

use anyhow::Result;
use dataplane_user::inspect;

use super::{Read, output::print};

pub fn run(r: Read) -> Result<()> {
    let s = inspect::status(&r.node.pin_dir()?)?;
    print(r.output, &s, |s| {
        println!("node        {}", s.node_ip);
        println!(
            "uplink      {} #{} (mtu {})",
            s.uplink, s.uplink_ifindex, s.mtu
        );
        println!(
            "tunnel      {} #{} (mtu {})",
            s.tunnel, s.tunnel_ifindex, s.tunnel_mtu
        );
        println!("mode        {}", s.mode);
        println!("routes      {}", s.routes);
        println!("endpoints   {}", s.endpoints);
        println!("attached    {}", s.attachments.join(" "));
    })
}
