//! `ipipd-bench`: the BPF side of `cargo xtask bench`, run inside a node's namespace next to a
//! running ipipd.
//!
//! - `testrun`: BPF_PROG_TEST_RUN cost of each packet path of ipipd's programs, each against its
//!   floor (a program doing only the helper calls the path cannot avoid) and a do-nothing program,
//!   all measured the same way. ipipd's programs are loaded afresh on the daemon's pinned maps, so
//!   they see its live routes, endpoints and neighbours.
//! - `progstats`: run_time_ns and run_cnt (kernel.bpf_stats_enabled) of the loaded programs that
//!   carry ipipd's or the floors' names, by program id.
//! - `floor`: one floor program attached first on an interface (TCX), in front of ipipd's, so
//!   that the bench measures the path and its floor in situ on the same flow.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, tc::TcAttachOptions},
};
use clap::{Parser, Subcommand};
use dataplane_common::program_names;
use ipipd_bench::{
    testrun::{self, checksum},
    trace,
};
use serde::Serialize;

static FLOORS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipipd-bench-floors"));
/// ipipd's programs built with their `cost` feature: each map access and helper call counted.
static COST_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipipd-dataplane"));

#[derive(Parser)]
#[command(name = "ipipd-bench", about = "The BPF side of `cargo xtask bench`")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Registers `nodes` nodes with one /26 each (10.64.0.0/10 on) in the datastore, in
    /// transactions, from `first` on.
    DsFill {
        #[arg(long)]
        etcd: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        nodes: u32,
        #[arg(long, default_value_t = 0)]
        first: u32,
    },
    /// Adds nodes one at a time and times each from its transaction to the block's entry in
    /// the running ipipd's routes map (JSON: the milliseconds of each).
    DsAddWait {
        #[arg(long)]
        etcd: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        pin_dir: PathBuf,
        #[arg(long)]
        count: u32,
        /// The index of the first node added (after those of ds-fill).
        #[arg(long)]
        first: u32,
    },
    /// Adds nodes at `rate` per second for `seconds`, paced, while watching the running
    /// ipipd's routes map: each node's lag from its transaction's start to its block's entry,
    /// and how much of it was etcd's (JSON: the milliseconds of each lag, each transaction and
    /// each lag after its transaction's answer, and the adds that were late against the pace).
    DsChurn {
        #[arg(long)]
        etcd: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        pin_dir: PathBuf,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: u32,
        #[arg(long)]
        first: u32,
    },
    /// BPF_PROG_TEST_RUN cost per path, its floor's, and a do-nothing program's (JSON).
    Testrun {
        /// The running ipipd's pin directory (its maps are reused).
        #[arg(long)]
        pin_dir: PathBuf,
        /// A local pod's host-side veth, and a second local pod's.
        #[arg(long)]
        pod_if: String,
        #[arg(long)]
        pod2_if: String,
        #[arg(long, default_value = "eth0")]
        uplink: String,
        /// A pod of the peer node, the peer node, and an underlay host that is no peer.
        #[arg(long)]
        remote_pod: Ipv4Addr,
        #[arg(long)]
        peer: Ipv4Addr,
        #[arg(long)]
        stranger: Ipv4Addr,
        /// Calls of repeat = 1 per path for paths that change their input (spread over rounds).
        #[arg(long, default_value_t = 100_000)]
        calls: u32,
        /// The repeat count for paths that leave their input unchanged.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Alternating rounds (path, floor, do-nothing) the calls are spread over.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// run_time_ns and run_cnt of every loaded program of ipipd's and of the floors, by
    /// program id (JSON).
    Progstats,
    /// Attaches one floor program first in an interface's TCX chain, in front of ipipd's, for
    /// an in-situ comparison on one flow; detaches when standard input closes.
    Floor {
        /// floor_encap, floor_decap or noop_tc.
        #[arg(long)]
        prog: String,
        #[arg(long)]
        iface: String,
        #[arg(long, value_parser = ["ingress", "egress"])]
        direction: String,
        /// Where the floor redirects to (encap: the uplink; decap: the pod's host-side veth).
        #[arg(long)]
        out_if: Option<String>,
        /// The outer source and destination (encap).
        #[arg(long)]
        src_ip: Option<Ipv4Addr>,
        #[arg(long)]
        dst_ip: Option<Ipv4Addr>,
        /// The MACs the floor writes (encap: the uplink's and the peer's; decap: the host
        /// veth's and the pod's).
        #[arg(long, value_parser = dataplane_user::net::parse_mac)]
        smac: Option<[u8; 6]>,
        #[arg(long, value_parser = dataplane_user::net::parse_mac)]
        dmac: Option<[u8; 6]>,
    },
}

/// Program names whose run time `progstats` reports.
const FLOOR_NAMES: [&str; 3] = ["floor_encap", "floor_decap", "noop_tc"];

fn floor(
    prog: &str,
    iface: &str,
    direction: &str,
    out_if: Option<&str>,
    ips: (Option<Ipv4Addr>, Option<Ipv4Addr>),
    macs: (Option<[u8; 6]>, Option<[u8; 6]>),
) -> Result<()> {
    if !FLOOR_NAMES.contains(&prog) {
        bail!("--prog must be one of {FLOOR_NAMES:?}");
    }
    let out = match out_if {
        Some(d) => ifindex(d)?,
        None => 0,
    };
    let src = ips.0.map_or([0; 4], |a| a.octets());
    let dst = ips.1.map_or([0; 4], |a| a.octets());
    let smac = macs.0.unwrap_or_default();
    let dmac = macs.1.unwrap_or_default();
    let mut ebpf = EbpfLoader::new()
        .override_global("FLOOR_OUT_IFINDEX", &out, true)
        .override_global("FLOOR_SRC_IP", &src, true)
        .override_global("FLOOR_DST_IP", &dst, true)
        .override_global("FLOOR_SMAC", &smac, true)
        .override_global("FLOOR_DMAC", &dmac, true)
        .load(FLOORS_OBJECT)
        .context("loading the floors")?;
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .with_context(|| format!("no program {prog}"))?
        .try_into()?;
    p.load()?;
    let at = if direction == "ingress" {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    let link = p
        .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::first()))
        .with_context(|| format!("attaching {prog} first on {iface} {direction} (TCX)"))?;
    println!("attached {prog} on {iface} {direction}");
    // Held until the bench closes our standard input.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    p.detach(link)?;
    Ok(())
}

/// The bench's node `i`: its name, address (on the real node's underlay /16) and block.
fn ds_node(
    i: u32,
) -> (
    dataplane_user::datastore::model::NodeRecord,
    dataplane_user::net::Ipv4Net,
) {
    // On the bench's underlay /16, clear of its hosts (172.31.242.0/24).
    let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 1)) + i);
    let block = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + i * 64);
    (
        dataplane_user::datastore::model::NodeRecord {
            name: format!("bench-{i:05}").into(),
            address,
        },
        dataplane_user::net::Ipv4Net::new(block, 26),
    )
}

fn datastore(etcd: &str, prefix: &str) -> dataplane_user::datastore::DatastoreCfg {
    dataplane_user::datastore::DatastoreCfg {
        endpoints: vec![etcd.to_string()],
        prefix: prefix.to_string(),
        ca: None,
        cert: None,
        key: None,
    }
}

fn ds_fill(etcd: &str, prefix: &str, nodes: u32, first: u32) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = dataplane_user::datastore::Store::connect(&datastore(etcd, prefix)).await?;
        for i in first..first + nodes {
            let (n, b) = ds_node(i);
            store.add_node(&n, &[b]).await?;
        }
        Ok(())
    })
}

fn ds_add_wait(
    etcd: &str,
    prefix: &str,
    pin_dir: &std::path::Path,
    count: u32,
    first: u32,
) -> Result<()> {
    let trie = routes_map(pin_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ms = Vec::new();
    rt.block_on(async {
        let store = dataplane_user::datastore::Store::connect(&datastore(etcd, prefix)).await?;
        for i in first..first + count {
            let (n, b) = ds_node(i);
            let t = std::time::Instant::now();
            store.add_node(&n, &[b]).await?;
            loop {
                if has_remote_block(&trie, b) {
                    break;
                }
                if t.elapsed() > std::time::Duration::from_secs(30) {
                    bail!("{b} of {} not in the routes map after 30 s", n.name);
                }
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::Ok(())
    })?;
    println!("{}", serde_json::to_string(&ms)?);
    Ok(())
}

/// The routes map of the ipipd pinned in `pin_dir`, and whether a block is in it as a peer's.
fn routes_map(
    pin_dir: &std::path::Path,
) -> Result<aya::maps::LpmTrie<aya::maps::MapData, [u8; 4], dataplane_common::RouteValue>> {
    use aya::maps::{LpmTrie, Map, MapData};
    Ok(LpmTrie::try_from(Map::LpmTrie(MapData::from_pin(
        pin_dir.join(dataplane_common::map_names::ROUTES),
    )?))?)
}

fn has_remote_block(
    trie: &aya::maps::LpmTrie<aya::maps::MapData, [u8; 4], dataplane_common::RouteValue>,
    b: dataplane_user::net::Ipv4Net,
) -> bool {
    trie.get(&aya::maps::lpm_trie::Key::new(26, b.addr.octets()), 0)
        .is_ok_and(|v| v.kind == dataplane_common::RouteKind::RemoteBlock as u8)
}

/// One block the churn wrote: when its transaction started, when etcd answered (None while it
/// has not), and when the map had it.
struct Sent {
    block: dataplane_user::net::Ipv4Net,
    at: std::time::Instant,
    committed: Option<std::time::Instant>,
    seen: Option<std::time::Instant>,
}

fn ds_churn(
    etcd: &str,
    prefix: &str,
    pin_dir: &std::path::Path,
    (rate, seconds): (u32, u32),
    first: u32,
) -> Result<()> {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };
    let trie = routes_map(pin_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let total = rate * seconds;
    let period = Duration::from_secs(1) / rate;
    let sent: Mutex<Vec<Sent>> = Mutex::new(Vec::new());
    let writing = AtomicBool::new(true);
    let mut late = 0u32;
    std::thread::scope(|s| -> Result<()> {
        // The map is watched on its own thread, every 200 µs, so that a slow transaction of
        // the writer's does not delay noticing the blocks written before it.
        let watcher = s.spawn(|| -> Result<()> {
            loop {
                let done = !writing.load(Ordering::Acquire);
                let mut all = sent.lock().unwrap();
                let mut waiting = false;
                for w in all.iter_mut().filter(|w| w.seen.is_none()) {
                    if has_remote_block(&trie, w.block) {
                        w.seen = Some(Instant::now());
                    } else if w.at.elapsed() > Duration::from_secs(30) {
                        bail!(
                            "{} not in the routes map 30 s after its transaction",
                            w.block
                        );
                    } else {
                        waiting = true;
                    }
                }
                drop(all);
                if done && !waiting {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let written = rt.block_on(async {
            let store = dataplane_user::datastore::Store::connect(&datastore(etcd, prefix)).await?;
            let start = Instant::now();
            for next in 0..total {
                let slot = start + period * next;
                let now = Instant::now();
                if now < slot {
                    tokio::time::sleep(slot - now).await;
                }
                let at = Instant::now();
                if at > slot + period {
                    late += 1;
                }
                let (n, b) = ds_node(first + next);
                let i = {
                    let mut all = sent.lock().unwrap();
                    all.push(Sent {
                        block: b,
                        at,
                        committed: None,
                        seen: None,
                    });
                    all.len() - 1
                };
                store.add_node(&n, &[b]).await?;
                sent.lock().unwrap()[i].committed = Some(Instant::now());
            }
            anyhow::Ok(())
        });
        writing.store(false, Ordering::Release);
        let watched = watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
        written.and(watched)
    })?;
    let all = sent.into_inner().unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let of = |f: &dyn Fn(&Sent) -> Option<Duration>| all.iter().filter_map(f).map(ms).collect();
    let lag_ms: Vec<f64> = of(&|w| Some(w.seen? - w.at));
    let commit_ms: Vec<f64> = of(&|w| Some(w.committed? - w.at));
    // A block can be in the map before etcd's answer reaches the writer: 0 then.
    let after_commit_ms: Vec<f64> = of(&|w| Some(w.seen?.saturating_duration_since(w.committed?)));
    println!(
        "{}",
        serde_json::json!({
            "lag_ms": lag_ms,
            "commit_ms": commit_ms,
            "after_commit_ms": after_commit_ms,
            "late_writes": late,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::DsChurn {
            etcd,
            prefix,
            pin_dir,
            rate,
            seconds,
            first,
        } => ds_churn(&etcd, &prefix, &pin_dir, (rate, seconds), first)?,
        Cmd::DsFill {
            etcd,
            prefix,
            nodes,
            first,
        } => ds_fill(&etcd, &prefix, nodes, first)?,
        Cmd::DsAddWait {
            etcd,
            prefix,
            pin_dir,
            count,
            first,
        } => ds_add_wait(&etcd, &prefix, &pin_dir, count, first)?,
        Cmd::Testrun {
            pin_dir,
            pod_if,
            pod2_if,
            uplink,
            remote_pod,
            peer,
            stranger,
            calls,
            repeat,
            rounds,
        } => {
            let env = Env::discover(&pin_dir, &pod_if, &pod2_if, &uplink)?;
            let paths = paths(&env, remote_pod, peer, stranger);
            let results = measure(&pin_dir, &paths, calls, repeat, rounds.max(1))?;
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
        Cmd::Progstats => {
            let mut by_id = BTreeMap::new();
            for info in aya::programs::loaded_programs() {
                let info = info?;
                let Some(name) = info.name_as_str() else {
                    continue;
                };
                if !program_names::ALL.contains(&name) && !FLOOR_NAMES.contains(&name) {
                    continue;
                }
                by_id.insert(
                    info.id().to_string(),
                    serde_json::json!({
                        "name": name,
                        "run_time_ns": info.run_time().as_nanos() as u64,
                        "run_cnt": info.run_count(),
                    }),
                );
            }
            println!("{}", serde_json::to_string_pretty(&by_id)?);
        }
        Cmd::Floor {
            prog,
            iface,
            direction,
            out_if,
            src_ip,
            dst_ip,
            smac,
            dmac,
        } => floor(
            &prog,
            &iface,
            &direction,
            out_if.as_deref(),
            (src_ip, dst_ip),
            (smac, dmac),
        )?,
    }
    Ok(())
}

/// What the packets are built from: the node's devices and addresses, from the kernel and the
/// daemon's maps.
struct Env {
    pod_if: u32,
    uplink: u32,
    /// The tunnel device (ifindex, MAC), as the daemon's config entry names it.
    tunnel: (u32, [u8; 6]),
    uplink_mac: [u8; 6],
    node_ip: Ipv4Addr,
    pod: (Ipv4Addr, [u8; 6], [u8; 6]),
    pod2: Ipv4Addr,
}

fn ifindex(dev: &str) -> Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .with_context(|| format!("no device {dev}"))?;
    Ok(s.trim().parse()?)
}

fn mac(dev: &str) -> Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))?;
    dataplane_user::net::parse_mac(s.trim()).map_err(|e| anyhow!("{dev}: {e}"))
}

impl Env {
    fn discover(
        pin_dir: &std::path::Path,
        pod_if: &str,
        pod2_if: &str,
        uplink: &str,
    ) -> Result<Env> {
        let mut ebpf =
            dataplane_user::loader::open_object_pinned(pin_dir, dataplane_common::KERNEL_FLOWS)?;
        let cfg = dataplane_user::maps::config(&ebpf)?;
        let (p, p2) = (ifindex(pod_if)?, ifindex(pod2_if)?);
        let eps = dataplane_user::maps::endpoints(&mut ebpf)?;
        let ep = eps
            .get(&p, 0)
            .with_context(|| format!("no endpoint on {pod_if}"))?;
        let ep2 = eps
            .get(&p2, 0)
            .with_context(|| format!("no endpoint on {pod2_if}"))?;
        Ok(Env {
            pod_if: p,
            uplink: ifindex(uplink)?,
            tunnel: (cfg.tunnel_ifindex, cfg.tunnel_mac),
            uplink_mac: mac(uplink)?,
            node_ip: Ipv4Addr::from(cfg.node_ip),
            pod: (Ipv4Addr::from(ep.pod_ip), ep.pod_mac, ep.host_mac),
            pod2: Ipv4Addr::from(ep2.pod_ip),
        })
    }
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&len.to_be_bytes());
    h.extend(src.octets());
    h.extend(dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(payload);
    h
}

/// An ICMP echo request with 56 bytes of data (ping's default): 84 bytes of IPv4.
fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    m.extend((0..56u8).collect::<Vec<_>>());
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &m)
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0x30, 0x39, 0x15, 0xb3, 0, 72, 0, 0];
    m.extend([0xab; 64]);
    ipv4(src, dst, 17, &m)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend(dst);
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

fn arp_request(pod_mac: [u8; 6], pod_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend(pod_mac);
    a.extend(pod_ip.octets());
    a.extend([0; 6]);
    a.extend(target.octets());
    eth([0xff; 6], pod_mac, 0x0806, &a)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The output differs from the input: repeat = 1, many calls, the median.
    Changes,
    /// The input is left as it was: one call with a large repeat.
    Unchanged,
}

struct Path {
    name: &'static str,
    program: &'static str,
    floor: &'static str,
    ifindex: u32,
    packet: Vec<u8>,
    verdict: u32,
    kind: Kind,
}

const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn paths(e: &Env, remote_pod: Ipv4Addr, peer: Ipv4Addr, stranger: Ipv4Addr) -> Vec<Path> {
    let (pod_ip, pod_mac, host_mac) = e.pod;
    let from_pod =
        |dst: Ipv4Addr, src: Ipv4Addr| eth(host_mac, pod_mac, 0x0800, &icmp_echo(src, dst));
    let on_uplink = |ip: Vec<u8>| eth(e.uplink_mac, [0x02, 0, 0, 0, 0, 0x99], 0x0800, &ip);
    let ipip = |src: Ipv4Addr, dst: Ipv4Addr, inner: Vec<u8>| ipv4(src, dst, 4, &inner);
    vec![
        Path {
            name: "encap (pod -> remote pod)",
            program: program_names::FROM_POD,
            floor: "floor_encap",
            ifindex: e.pod_if,
            packet: from_pod(remote_pod, pod_ip),
            verdict: TC_REDIRECT,
            kind: Kind::Changes,
        },
        Path {
            name: "local delivery (pod -> pod)",
            program: program_names::FROM_POD,
            floor: "floor_deliver",
            ifindex: e.pod_if,
            packet: from_pod(e.pod2, pod_ip),
            verdict: TC_REDIRECT,
            kind: Kind::Changes,
        },
        Path {
            name: "ARP reply (169.254.1.1)",
            program: program_names::FROM_POD,
            floor: "floor_arp_reply",
            ifindex: e.pod_if,
            packet: arp_request(pod_mac, pod_ip, Ipv4Addr::new(169, 254, 1, 1)),
            verdict: TC_REDIRECT,
            kind: Kind::Changes,
        },
        Path {
            name: "drop: spoofed source",
            program: program_names::FROM_POD,
            floor: "noop_tc",
            ifindex: e.pod_if,
            packet: from_pod(remote_pod, Ipv4Addr::new(10, 99, 0, 1)),
            verdict: TC_SHOT,
            kind: Kind::Unchanged,
        },
        Path {
            name: "decap (peer -> local pod)",
            program: program_names::FROM_UPLINK,
            floor: "floor_decap",
            ifindex: e.uplink,
            packet: on_uplink(ipip(peer, e.node_ip, icmp_echo(remote_pod, pod_ip))),
            verdict: TC_REDIRECT,
            kind: Kind::Changes,
        },
        Path {
            name: "pass: non-IPIP to the node",
            program: program_names::FROM_UPLINK,
            floor: "noop_tc",
            ifindex: e.uplink,
            packet: on_uplink(udp(peer, e.node_ip)),
            verdict: TC_OK,
            kind: Kind::Unchanged,
        },
        Path {
            name: "drop: IPIP from a non-peer",
            program: program_names::FROM_UPLINK,
            floor: "noop_tc",
            ifindex: e.uplink,
            packet: on_uplink(ipip(stranger, e.node_ip, icmp_echo(remote_pod, pod_ip))),
            verdict: TC_SHOT,
            kind: Kind::Unchanged,
        },
        Path {
            name: "encap (host -> remote pod, tunnel device)",
            program: program_names::TO_TUNNEL,
            floor: "floor_encap",
            ifindex: e.tunnel.0,
            packet: eth(
                e.tunnel.1,
                e.tunnel.1,
                0x0800,
                &icmp_echo(e.node_ip, remote_pod),
            ),
            verdict: TC_REDIRECT,
            kind: Kind::Changes,
        },
        Path {
            name: "XDP pass: IPIP from a peer",
            program: program_names::XDP_UPLINK,
            floor: "noop_xdp",
            ifindex: e.uplink,
            packet: on_uplink(ipip(peer, e.node_ip, icmp_echo(remote_pod, pod_ip))),
            verdict: XDP_PASS,
            kind: Kind::Unchanged,
        },
        Path {
            name: "XDP drop: IPIP from a non-peer",
            program: program_names::XDP_UPLINK,
            floor: "noop_xdp",
            ifindex: e.uplink,
            packet: on_uplink(ipip(stranger, e.node_ip, icmp_echo(remote_pod, pod_ip))),
            verdict: XDP_DROP,
            kind: Kind::Unchanged,
        },
    ]
}

/// One BPF_PROG_TEST_RUN: (verdict, ns per run as the kernel timed it).
fn run_once(ebpf: &Ebpf, prog: &str, p: &Path, repeat: u32) -> Result<(u32, u64)> {
    let mut out = vec![0u8; p.packet.len() + 256];
    let r = testrun::run(ebpf, prog, p.ifindex, (0, 0), &p.packet, &mut out, repeat)?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

/// ns per run of `prog` on `p`: one call of `repeat` (its mean), or, for a path whose packet
/// the program changes, `calls` calls of repeat 1 (their [`middle_mean`]).
fn sample(ebpf: &Ebpf, prog: &str, p: &Path, calls: u32, repeat: u32) -> Result<(u32, f64)> {
    match p.kind {
        Kind::Unchanged => {
            let (v, ns) = run_once(ebpf, prog, p, repeat)?;
            Ok((v, ns as f64))
        }
        Kind::Changes => {
            let mut v = 0;
            let mut t = Vec::with_capacity(calls as usize);
            for _ in 0..calls {
                let (rv, ns) = run_once(ebpf, prog, p, 1)?;
                v = rv;
                t.push(ns);
            }
            Ok((v, middle_mean(t)))
        }
    }
}

/// The mean of the middle half of `v` (the interquartile mean): as robust to a run's outliers
/// (an interrupt, a migration) as the median, but not bound to the clock's steps. A single run
/// is tens of ns, and where the host's clock moves in steps (10 ns on some virtual machines)
/// every run's time, and so the median, is a multiple of the step; the runs' spread across
/// steps lets the mean resolve between them.
fn middle_mean(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    let (from, to) = (v.len() / 4, v.len() - v.len() / 4);
    let mid = &v[from..to];
    if mid.is_empty() {
        return f64::NAN;
    }
    mid.iter().sum::<u64>() as f64 / mid.len() as f64
}

#[derive(Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(|a, b| a.total_cmp(b));
    Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

#[derive(Serialize)]
struct PathResult {
    path: &'static str,
    program: &'static str,
    method: String,
    verdict: u32,
    /// ns per run, minus the do-nothing program's.
    ns: Spread,
    floor: &'static str,
    floor_ns: Spread,
    /// The do-nothing program's own ns per run, measured the same way.
    noop_ns: Spread,
    /// ns / floor_ns (None when the floor is the do-nothing program).
    over_floor: Option<Spread>,
    /// What one packet of the path costs, counted by the `cost` build of the same programs on
    /// the same maps (a second run, the route cache warm): map accesses by map, helper calls
    /// by helper.
    lookups: BTreeMap<&'static str, u64>,
    helper_calls: BTreeMap<&'static str, u64>,
    /// The program as ipipd's own build loads it: translated instructions, the instructions
    /// the verifier processed (every path), the JIT image's bytes.
    program_insns: Option<u32>,
    verified_insns: Option<u32>,
    jited_bytes: u32,
    /// The BPF instructions one packet of the path executes in ipipd's program and in its
    /// floor, counted by the bench's interpreter (a second packet, as `lookups`); None where the
    /// path calls a helper the interpreter does not model.
    insns_run: Option<u64>,
    floor_insns_run: Option<u64>,
}

/// The instructions one packet of `p` executes in `prog` of `obj` (the second of two runs:
/// the caches of the first warm), checked against the verdict the kernel gave.
fn count_insns(obj: &mut trace::Object, prog: &str, p: &Path, verdict: u32) -> Result<Option<u64>> {
    let mut t = None;
    for _ in 0..2 {
        t = match obj.run(prog, p.ifindex, (0, 0), &p.packet) {
            Ok(t) => Some(t),
            Err(e) if trace::unmodelled(&e) => return Ok(None),
            Err(e) => return Err(e.context(format!("{}: interpreting {prog}", p.name))),
        };
    }
    let t = t.context("no run")?;
    if t.verdict != verdict as u64 {
        bail!(
            "{}: the interpreter's {prog} returned {}, the kernel's {verdict}",
            p.name,
            t.verdict
        );
    }
    Ok(Some(t.insns))
}

/// The `cost` build's counts, summed over CPUs, by item.
fn cost_totals(cost: &Ebpf) -> Result<Vec<u64>> {
    use dataplane_common::cost;
    let map = cost
        .map(cost::MAP)
        .context("the cost build has no cost map")?;
    let counts = aya::maps::PerCpuArray::<_, u64>::try_from(map)?;
    (0..cost::NAMES.len() as u32)
        .map(|i| Ok(counts.get(&i, 0)?.iter().sum()))
        .collect()
}

/// Counts by item name.
type Counts = BTreeMap<&'static str, u64>;

/// The map accesses and helper calls of one packet of `p`, run twice through the `cost` build
/// (the second run's: the caches warm, as in steady traffic), split into lookups and helpers.
fn path_cost(cost: &Ebpf, p: &Path) -> Result<(Counts, Counts)> {
    use dataplane_common::cost::{LOOKUPS, NAMES};
    run_once(cost, p.program, p, 1)?;
    let before = cost_totals(cost)?;
    let (v, _) = run_once(cost, p.program, p, 1)?;
    if v != p.verdict {
        bail!(
            "{}: the cost build returned {v}, expected {}",
            p.name,
            p.verdict
        );
    }
    let after = cost_totals(cost)?;
    let (mut lookups, mut helpers) = (BTreeMap::new(), BTreeMap::new());
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        if a > b {
            let into = if i < LOOKUPS {
                &mut lookups
            } else {
                &mut helpers
            };
            into.insert(NAMES[i], a - b);
        }
    }
    Ok((lookups, helpers))
}

fn measure(
    pin_dir: &std::path::Path,
    paths: &[Path],
    calls: u32,
    repeat: u32,
    rounds: u32,
) -> Result<Vec<PathResult>> {
    let mut ipipd =
        dataplane_user::loader::open_object_pinned(pin_dir, dataplane_common::KERNEL_FLOWS)?;
    let loaded = dataplane_user::loader::load_all(&mut ipipd)?;
    let mut cost =
        dataplane_user::loader::open_pinned(COST_OBJECT, pin_dir, dataplane_common::KERNEL_FLOWS)?;
    dataplane_user::loader::load_all(&mut cost)?;
    let mut floors = EbpfLoader::new()
        .load(FLOORS_OBJECT)
        .context("loading the floors object")?;
    for name in [
        "noop_tc",
        "floor_encap",
        "floor_decap",
        "floor_deliver",
        "floor_arp_reply",
    ] {
        let p: &mut SchedClassifier = floors
            .program_mut(name)
            .with_context(|| format!("no floor {name}"))?
            .try_into()?;
        p.load()?;
    }
    let x: &mut Xdp = floors
        .program_mut("noop_xdp")
        .context("noop_xdp")?
        .try_into()?;
    x.load()?;
    let mut ipipd_insns = trace::Object::on(dataplane_user::EBPF_OBJECT, &ipipd, 0)?;
    let mut floor_insns = trace::Object::on(FLOORS_OBJECT, &floors, 0)?;

    let mut results = Vec::new();
    for p in paths {
        let per_round = (calls / rounds).max(1);
        let noop = if p.program == program_names::XDP_UPLINK {
            "noop_xdp"
        } else {
            "noop_tc"
        };
        let (mut own, mut floor, mut nothing, mut ratio) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut verdict = 0;
        for _ in 0..rounds {
            let (v, t) = sample(&ipipd, p.program, p, per_round, repeat)?;
            if v != p.verdict {
                bail!(
                    "{}: {} returned {v}, expected {} (is the data plane programmed?)",
                    p.name,
                    p.program,
                    p.verdict
                );
            }
            verdict = v;
            let (_, f) = sample(&floors, p.floor, p, per_round, repeat)?;
            let (_, n) = sample(&floors, noop, p, per_round, repeat)?;
            own.push((t - n).max(0.0));
            nothing.push(n);
            if p.floor != noop {
                floor.push((f - n).max(0.0));
                ratio.push((t - n).max(0.0) / (f - n).max(1.0));
            } else {
                floor.push(0.0);
            }
        }
        let (lookups, helper_calls) = path_cost(&cost, p)?;
        let prog = loaded.iter().find(|l| l.name == p.program);
        let insns_run = count_insns(&mut ipipd_insns, p.program, p, p.verdict)?;
        // A do-nothing floor runs one instruction and its exit; a real one ends in the path's
        // verdict.
        let floor_insns_run = match p.floor {
            f if f == noop => None,
            f => count_insns(&mut floor_insns, f, p, p.verdict)?,
        };
        results.push(PathResult {
            insns_run,
            floor_insns_run,
            lookups,
            helper_calls,
            program_insns: prog.and_then(|l| l.xlated_bytes).map(|b| b / 8),
            verified_insns: prog.and_then(|l| l.verified_insns),
            jited_bytes: prog.map_or(0, |l| l.jited_bytes),
            path: p.name,
            program: p.program,
            method: match p.kind {
                Kind::Changes => format!("{calls} calls, repeat 1, interquartile mean"),
                Kind::Unchanged => format!("repeat {repeat}, mean"),
            },
            verdict,
            ns: spread(own),
            floor: p.floor,
            floor_ns: spread(floor),
            noop_ns: spread(nothing),
            over_floor: (!ratio.is_empty()).then(|| spread(ratio)),
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::middle_mean;

    #[test]
    fn the_middle_mean_leaves_out_the_quarters_at_both_ends_and_resolves_between_clock_steps() {
        // Runs of 67 ns on a clock that steps by 10 ns: 70 seven times in ten, 60 three times;
        // and a quarter of outliers each way, which the middle half leaves out.
        let mut v = vec![0; 20];
        v.extend([60; 12]);
        v.extend([70; 28]);
        v.extend([5_000; 20]);
        assert_eq!(middle_mean(v), 67.0);
        // (The median of the same runs could only say 60 or 70.)
        assert_eq!(middle_mean(vec![1, 2, 3, 4]), 2.5);
        assert_eq!(middle_mean(vec![7]), 7.0);
        assert!(middle_mean(Vec::new()).is_nan());
    }
}
