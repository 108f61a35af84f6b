//! `ipipd status`: the running node's settings and attachments (from its pins) and, when its
//! daemon answers on the state directory's socket, its blocks and the datastore's state.

use anyhow::Result;
use dataplane_user::{
    attach,
    control::{self, Answer, PoolInfo, Request},
    inspect,
    metrics::DatastoreHealth,
    net::Ipv4Net,
};
use serde::Serialize;

use super::{Read, output::print};

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    maps: inspect::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<Vec<Ipv4Net>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datastore: Option<DatastoreHealth>,
    /// Where the daemon's name, uplink and address came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    found: Option<String>,
    /// ipipd's nftables table (natOutgoing), when it is in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    nat_outgoing: Option<dataplane_user::nat::Shown>,
    /// The tunnel device's address (calico-etcd mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_address: Option<std::net::Ipv4Addr>,
    /// The datastore's pools, as the daemon read them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<PoolInfo>,
    /// What of the datastore's view the daemon leaves out, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<(String, String)>,
}

pub async fn run(r: Read) -> Result<()> {
    let mut maps = inspect::status(&r.node.pin_dir()?)?;
    // The netlink filters (kernels without TCX, and a large first start's until they are
    // moved to TCX links) are recorded in the state directory, not pinned.
    if let Ok(dir) = r.node.state_dir() {
        let filters = attach::read_filters(&dir);
        maps.attachments.extend(
            filters
                .iter()
                .map(|f| format!("{}:{}(netlink)", f.ifname, f.hook_of(&maps.uplink).name())),
        );
        maps.attachments.sort();
    }
    let mut s = Status {
        maps,
        blocks: None,
        datastore: None,
        found: None,
        nat_outgoing: dataplane_user::nat::current(),
        tunnel_address: None,
        pools: Vec::new(),
        skipped: Vec::new(),
    };
    if let Ok(dir) = r.node.state_dir()
        && let Ok(mut c) = control::Client::connect(&dir).await
        && let Ok(Some(Answer::Node(n))) = c.call(&Request::Node).await
    {
        s.blocks = Some(n.blocks);
        s.datastore = n.datastore;
        s.found = Some(n.found);
        s.tunnel_address = n.tunnel_address;
        s.pools = n.pools;
        s.skipped = n.skipped;
    }
    print(r.output, &s, |st| {
        let s = &st.maps;
        println!("node        {}", s.node_ip);
        if let Some(f) = &st.found {
            println!("            {f}");
        }
        println!(
            "uplink      {} #{} (mtu {})",
            s.uplink, s.uplink_ifindex, s.mtu
        );
        println!(
            "tunnel      {} #{} (mtu {}){}",
            s.tunnel,
            s.tunnel_ifindex,
            s.tunnel_mtu,
            st.tunnel_address
                .map_or(String::new(), |a| format!(", address {a}"))
        );
        println!("mode        {}", s.mode);
        println!("routes      {}", s.routes);
        println!("endpoints   {}", s.endpoints);
        println!("attached    {}", s.attachments.join(" "));
        if let Some(n) = &st.nat_outgoing {
            println!(
                "nat         {} masqueraded out of the pod network ({} prefixes; table {})",
                n.sources.join(" "),
                n.pod_network.len(),
                n.table
            );
        }
        if let Some(b) = &st.blocks {
            let b: Vec<String> = b.iter().map(|b| b.to_string()).collect();
            println!("blocks      {}", b.join(" "));
        }
        for p in &st.pools {
            println!(
                "pool        {} /{}{}{}",
                p.cidr,
                p.block_size,
                if p.nat_outgoing { " natOutgoing" } else { "" },
                p.calico.as_ref().map_or(String::new(), |c| format!(
                    " ipipMode {}{} ({})",
                    c.ipip_mode.name(),
                    if c.disabled { " disabled" } else { "" },
                    c.name
                ))
            );
        }
        if let Some(d) = &st.datastore {
            println!("datastore   {}", d.summary());
            for line in d.details() {
                println!("            {line}");
            }
        }
        for (what, why) in &st.skipped {
            println!("left out    {what}: {why}");
        }
    })
}
