//! The packet fuzzer: mutated and random frames through every program with BPF_PROG_TEST_RUN,
//! the programs loaded on a running daemon's pinned maps (its routes, endpoints, peers and
//! neighbours), and invariants checked on every outcome, not only "no crash":
//!
//! - a forwarded frame (`TC_ACT_REDIRECT`) is well-formed: Ethernet, IPv4 lengths and
//!   checksums, the inner header's too for IP-in-IP, no VLAN tag;
//! - nothing is decapsulated to a pod unless it came from a peer node's address to this node's;
//! - nothing a pod's veth forwards has a source other than that pod's address;
//! - nothing leaves for the underlay with a pod address as its outer source;
//! - every run is a counted decision, and a drop always has a drop reason, and only a drop has.
//!
//! Seeds are the bpf-fixtures vectors; mutations touch every header field, lengths, options,
//! VLAN tags, fragments and nesting, plus random frames. `cargo test` runs a bounded, seeded
//! slice (`IPIPD_FUZZ_FRAMES`, default 20,000; `IPIPD_FUZZ_SEED`); `cargo xtask fuzz` runs
//! 10^6 frames. Each run prints its seed, its count and what the programs decided.

#[allow(dead_code)]
mod fixtures;

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::RingBuf;
use dataplane_common::{Event, Hook, MonitorMode, Reason, map_names};
use dataplane_user::{loader, maps};
use ipipd_bench::testrun;
use ipipd_tests::{
    cluster::{Cluster, seed_nodes},
    require_root,
    traffic::ipv4_packet,
};

const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 156);
const MASTER: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 157);
const STRANGER: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 200);
const N1: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 129);
const N2: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 130);
const M1: Ipv4Addr = Ipv4Addr::new(192, 168, 179, 2);
/// The pod blocks of the seed's cluster (the node's and the master's).
const BLOCKS: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(192, 168, 83, 128), 26),
    (Ipv4Addr::new(192, 168, 179, 0), 26),
];
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const XDP_DROP: i32 = 1;

/// xorshift64*: a small, seeded, reproducible generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: a number, please")),
        Err(_) => default,
    }
}

fn in_blocks(a: Ipv4Addr) -> bool {
    BLOCKS.iter().any(|(net, len)| {
        let mask = u32::MAX << (32 - len);
        u32::from(a) & mask == u32::from(*net)
    })
}

/// The addresses a mutation puts into headers: the interesting ones and a random one.
fn address(rng: &mut Rng) -> Ipv4Addr {
    let pick = [
        NODE,
        MASTER,
        STRANGER,
        N1,
        N2,
        M1,
        Ipv4Addr::new(192, 168, 83, 140),
        Ipv4Addr::new(192, 168, 83, 128),
        Ipv4Addr::new(169, 254, 1, 1),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(224, 0, 0, 1),
    ];
    if rng.chance(4) {
        Ipv4Addr::from(rng.next() as u32)
    } else {
        pick[rng.below(pick.len())]
    }
}

/// The offset of the first IPv4 header, past any VLAN tags; None when the frame carries none.
fn ip_at(f: &[u8]) -> Option<usize> {
    let mut off = 12;
    loop {
        match f.get(off..off + 2)? {
            [0x81, 0x00] | [0x88, 0xa8] => off += 4,
            [0x08, 0x00] => return (f.len() >= off + 2 + 20).then_some(off + 2),
            _ => return None,
        }
    }
}

fn fix_checksum(f: &mut [u8], ip: usize) {
    let ihl = ((f[ip] & 0x0f) as usize * 4).max(20);
    if f.len() < ip + ihl {
        return;
    }
    f[ip + 10] = 0;
    f[ip + 11] = 0;
    let c = testrun::checksum(&f[ip..ip + ihl]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}

/// One mutation of `f`, chosen by `rng`.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let ip = ip_at(f);
    match rng.below(11) {
        // Bits anywhere in the headers.
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len().min(80));
                f[i] ^= 1 << rng.below(8);
            }
        }
        // One IPv4 header field set to a boundary or random value.
        1 => {
            if let Some(ip) = ip {
                match rng.below(9) {
                    0 => f[ip] = [0x45, 0x44, 0x46, 0x4f, 0x65, 0x40, rng.byte()][rng.below(7)],
                    1 => f[ip + 1] = rng.byte(),
                    2 => {
                        let len = [0u16, 19, 20, 21, (f.len() - ip) as u16, 0xffff];
                        let v = len[rng.below(len.len())].wrapping_add(rng.below(3) as u16);
                        f[ip + 2..ip + 4].copy_from_slice(&v.to_be_bytes());
                    }
                    3 => {
                        let frag = [0x2000u16, 0x0001, 0x4000, 0x6000, 0x1fff, rng.next() as u16];
                        let v = frag[rng.below(frag.len())];
                        f[ip + 6..ip + 8].copy_from_slice(&v.to_be_bytes());
                    }
                    4 => f[ip + 8] = [0u8, 1, 2, 255][rng.below(4)],
                    5 => f[ip + 9] = [4u8, 1, 6, 17, 41, 47, rng.byte()][rng.below(7)],
                    6 => {
                        f[ip + 10] = rng.byte();
                        f[ip + 11] = rng.byte();
                        return;
                    }
                    7 => f[ip + 12..ip + 16].copy_from_slice(&address(rng).octets()),
                    _ => f[ip + 16..ip + 20].copy_from_slice(&address(rng).octets()),
                }
                if rng.chance(3) {
                    return; // the checksum left stale
                }
                fix_checksum(f, ip);
            }
        }
        // Shorter or longer.
        2 => {
            let n = 14 + rng.below(f.len().saturating_sub(13));
            f.truncate(n);
        }
        3 => {
            for _ in 0..1 + rng.below(64) {
                f.push(rng.byte());
            }
        }
        // A VLAN tag (802.1Q or 802.1ad) in the data.
        4 => {
            let tpid = if rng.chance(2) {
                [0x81, 0x00]
            } else {
                [0x88, 0xa8]
            };
            let tag = [tpid[0], tpid[1], 0, rng.byte()];
            f.splice(12..12, tag);
        }
        // IP-in-IP around it (again, when it is already): from a peer, a stranger or a pod.
        5 => {
            if let Some(ip) = ip {
                let src = [MASTER, MASTER, STRANGER, M1, address(rng)][rng.below(5)];
                let dst = [NODE, NODE, address(rng)][rng.below(3)];
                let outer = ipv4_packet(src, dst, 4, rng.byte() & 3, &f[ip..]);
                f.truncate(ip);
                f.extend(outer);
            }
        }
        // The inner header of IP-in-IP: one field.
        6 => {
            if let Some(ip) = ip
                && f[ip + 9] == 4
                && f.len() >= ip + 40
            {
                let inner = ip + 20;
                match rng.below(4) {
                    0 => f[inner] = [0x45, 0x44, 0x46, 0x35][rng.below(4)],
                    1 => f[inner + 1] = rng.byte(),
                    2 => f[inner + 8] = [0u8, 1, 2][rng.below(3)],
                    _ => f[inner + 12..inner + 16].copy_from_slice(&address(rng).octets()),
                }
                if rng.chance(2) {
                    fix_checksum(f, inner);
                }
            }
        }
        // IP options (a valid checksum over them, or not).
        7 => {
            if let Some(ip) = ip {
                let ihl = (f[ip] & 0x0f) as usize * 4;
                if (20..60).contains(&ihl) && f.len() >= ip + ihl {
                    let words = 1 + rng.below((60 - ihl) / 4);
                    let opts: Vec<u8> = (0..words * 4).map(|_| rng.byte()).collect();
                    f.splice(ip + ihl..ip + ihl, opts);
                    f[ip] = 0x40 | ((ihl / 4 + words) as u8);
                    let tot = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) as usize + words * 4;
                    f[ip + 2..ip + 4].copy_from_slice(&(tot.min(0xffff) as u16).to_be_bytes());
                    if !rng.chance(3) {
                        fix_checksum(f, ip);
                    }
                }
            }
        }
        // The EtherType.
        8 => {
            let t = [[0x08, 0x06], [0x86, 0xdd], [0x88, 0xcc], [0x08, 0x00]][rng.below(4)];
            f[12..14].copy_from_slice(&t);
        }
        // A well-formed packet between interesting addresses, in IP-in-IP or not.
        9 => {
            let inner = ipv4_packet(
                address(rng),
                address(rng),
                [1, 6, 17][rng.below(3)],
                0,
                &[0; 16],
            );
            let payload = if rng.chance(2) {
                ipv4_packet(address(rng), address(rng), 4, rng.byte() & 3, &inner)
            } else {
                inner
            };
            f.truncate(12);
            f.extend([0x08, 0x00]);
            f.extend(payload);
        }
        // Random bytes.
        _ => {
            let n = 14 + rng.below(200);
            *f = (0..n).map(|_| rng.byte()).collect();
        }
    }
}

/// What one run did.
struct Run<'a> {
    program: &'a str,
    /// The pod behind the veth from_pod ran on.
    pod: Option<Ipv4Addr>,
    input: &'a [u8],
    retval: i32,
    output: &'a [u8],
    events: &'a [Event],
}

fn ipv4_src(f: &[u8]) -> Option<Ipv4Addr> {
    let ip = ip_at(f)?;
    Some(Ipv4Addr::new(
        f[ip + 12],
        f[ip + 13],
        f[ip + 14],
        f[ip + 15],
    ))
}

fn ipv4_dst(f: &[u8]) -> Option<Ipv4Addr> {
    let ip = ip_at(f)?;
    Some(Ipv4Addr::new(
        f[ip + 16],
        f[ip + 17],
        f[ip + 18],
        f[ip + 19],
    ))
}

/// The invariants; the first one broken, described.
fn check(r: &Run) -> Result<(), String> {
    let reasons: Vec<Reason> = r
        .events
        .iter()
        .filter_map(|e| Reason::from_u8(e.reason))
        .collect();
    // (xdp_uplink counts only its drops: what it passes, from_uplink counts.)
    if reasons.is_empty() && r.program != "xdp_uplink" {
        return Err("no decision was counted".into());
    }
    let dropped = if r.program == "xdp_uplink" {
        r.retval == XDP_DROP
    } else {
        r.retval == TC_ACT_SHOT
    };
    let drop_reason = reasons.iter().any(|x| x.is_drop());
    if dropped != drop_reason {
        return Err(format!("verdict {} with reasons {reasons:?}", r.retval));
    }
    if r.program == "xdp_uplink" || r.retval != TC_ACT_REDIRECT {
        return Ok(());
    }
    let has = |x: Reason| reasons.contains(&x);
    // Forwarded: well-formed, untagged, as far as ipipd looked into it: an encapsulated
    // packet's outer and inner headers, an ARP reply's body, any other packet's own header.
    // What a packet carries beyond (IP-in-IP to a pod, say) is the receiver's to check.
    if has(Reason::Encap) || has(Reason::ArpReply) {
        fixtures::check_frame(r.output).map_err(|e| format!("malformed output: {e:#}"))?;
    } else {
        top_header_ok(r.output).map_err(|e| format!("malformed output: {e}"))?;
    }
    if matches!(r.output.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8])) {
        return Err("a tagged frame forwarded".into());
    }
    if has(Reason::DecapDeliver) {
        if ipv4_src(r.input) != Some(MASTER) || ipv4_dst(r.input) != Some(NODE) {
            return Err(format!(
                "decapsulated to a pod from {:?} to {:?}",
                ipv4_src(r.input),
                ipv4_dst(r.input)
            ));
        }
        if ip_at(r.input) != Some(14) {
            return Err("a tagged tunnel frame decapsulated to a pod".into());
        }
    }
    if r.program == "from_pod"
        && (has(Reason::Encap) || has(Reason::DeliverPodToPod) || has(Reason::ForwardSameSubnet))
    {
        let src = ipv4_src(r.input);
        if src != r.pod {
            return Err(format!(
                "forwarded from the pod {:?} with source {src:?}",
                r.pod
            ));
        }
    }
    if has(Reason::Encap) || has(Reason::HostToPeer) {
        let outer = ipv4_src(r.output);
        if outer.is_none_or(in_blocks) {
            return Err(format!("left for the underlay with outer source {outer:?}"));
        }
        if has(Reason::Encap) && outer != Some(NODE) {
            return Err(format!("encapsulated with outer source {outer:?}"));
        }
    }
    Ok(())
}

/// An Ethernet frame whose IPv4 header is whole, its lengths consistent and its checksum good.
fn top_header_ok(f: &[u8]) -> Result<(), String> {
    let ip = ip_at(f).ok_or("not IPv4 over Ethernet")?;
    let ihl = (f[ip] & 0x0f) as usize * 4;
    let tot = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) as usize;
    if f[ip] >> 4 != 4 || ihl < 20 || tot < ihl || ip + tot > f.len() {
        return Err(format!("IPv4 header {:02x}, total length {tot}", f[ip]));
    }
    if testrun::checksum(&f[ip..ip + ihl]) != 0 {
        return Err("IPv4 header checksum".into());
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fuzzed_frames_keep_the_invariants() {
    if !require_root() {
        return;
    }
    let frames = env_u64("IPIPD_FUZZ_FRAMES", 20_000);
    let seed = env_u64("IPIPD_FUZZ_SEED", 0x1b1d_2003);
    let mut c = Cluster::new("fz", &seed_nodes(2)).unwrap();
    c.start_daemon("node", None).unwrap();
    let node = c.node("node");
    let pin_dir = node.daemon.as_ref().unwrap().pin_dir.clone();
    let pods: Vec<(u32, Ipv4Addr)> = node
        .pods
        .iter()
        .map(|p| (node.ns.ifindex(&p.spec.interface).unwrap(), p.spec.address))
        .collect();
    let uplink = node.ns.ifindex("eth0").unwrap();
    let tunnel = node.ns.ifindex("ipipd0").unwrap();
    let seeds: Vec<(String, Vec<u8>)> = fixtures::load_vectors()
        .unwrap()
        .into_iter()
        .filter_map(|(_, v)| Some((v.program.clone(), fixtures::hex(&v.input).ok()?)))
        .filter(|(_, f)| f.len() >= 14)
        .collect();
    assert!(seeds.len() > 50, "{} seeds", seeds.len());

    let report = node
        .ns
        .enter(move || -> Result<String, String> {
            let mut ebpf = loader::open_object_pinned(&pin_dir, dataplane_common::KERNEL_FLOWS).map_err(|e| format!("{e:#}"))?;
            loader::load_all(&mut ebpf).map_err(|e| format!("{e:#}"))?;
            let mut cfg = maps::config(&ebpf).map_err(|e| format!("{e:#}"))?;
            cfg.monitor = MonitorMode::All as u8;
            maps::set_config(&mut ebpf, &cfg).map_err(|e| format!("{e:#}"))?;
            let mut ring = RingBuf::try_from(
                ebpf.take_map(map_names::EVENTS)
                    .ok_or("no events map")?,
            )
            .map_err(|e| format!("{e}"))?;
            let mut rng = Rng(seed | 1);
            let mut tally: BTreeMap<String, u64> = BTreeMap::new();
            let mut refused = 0u64;
            let programs = ["from_pod", "from_uplink", "to_tunnel", "xdp_uplink"];
            let mut out = vec![0u8; 4096];
            for n in 0..frames {
                let (program, base) = &seeds[rng.below(seeds.len())];
                let program = if rng.chance(5) {
                    programs[rng.below(programs.len())]
                } else {
                    program.as_str()
                };
                let mut frame = base.clone();
                for _ in 0..1 + rng.below(3) {
                    mutate(&mut rng, &mut frame);
                }
                frame.truncate(1500);
                let (ifindex, pod) = match program {
                    "from_pod" => {
                        let (i, a) = pods[rng.below(pods.len())];
                        (i, Some(a))
                    }
                    "to_tunnel" => (tunnel, None),
                    _ => (uplink, None),
                };
                let hook = match program {
                    "from_pod" => Hook::FromPod,
                    "from_uplink" => Hook::FromUplink,
                    "to_tunnel" => Hook::ToTunnel,
                    _ => Hook::XdpUplink,
                };
                let r = testrun::run(&ebpf, program, ifindex, (0, 0), &frame, &mut out, 1);
                let mut events = Vec::new();
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<Event>() {
                        // SAFETY: the programs write whole Events; read unaligned.
                        let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        events.push(e);
                    }
                }
                let Ok(result) = r else {
                    // The kernel refuses some frames before any program runs (too short for
                    // its own checks): nothing ran, nothing to check.
                    refused += 1;
                    if !events.is_empty() {
                        return Err(format!("frame {n}: refused, yet decisions were made"));
                    }
                    continue;
                };
                let output = &out[..(result.data_size_out as usize).min(out.len())];
                let events: Vec<Event> =
                    events.into_iter().filter(|e| e.hook == hook as u8).collect();
                let run = Run {
                    program,
                    pod,
                    input: &frame,
                    retval: result.return_value as i32,
                    output,
                    events: &events,
                };
                if let Err(e) = check(&run) {
                    return Err(format!(
                        "seed {seed}, frame {n}: {program} on #{ifindex}: {e}\n input  {}\n output {}\n reasons {:?}",
                        hex(&frame),
                        hex(output),
                        events
                            .iter()
                            .map(|e| Reason::from_u8(e.reason).map_or("?", Reason::name))
                            .collect::<Vec<_>>()
                    ));
                }
                for e in &events {
                    let name = Reason::from_u8(e.reason).map_or("?", Reason::name);
                    *tally.entry(format!("{program}/{name}")).or_default() += 1;
                }
            }
            cfg = maps::config(&ebpf).map_err(|e| format!("{e:#}"))?;
            cfg.monitor = MonitorMode::Off as u8;
            maps::set_config(&mut ebpf, &cfg).map_err(|e| format!("{e:#}"))?;
            let mut s = format!(
                "fuzz: seed {seed}, {frames} frames, {refused} refused by BPF_PROG_TEST_RUN, invariants held; decisions:\n"
            );
            for (k, v) in tally {
                s += &format!("  {k:<40} {v}\n");
            }
            Ok(s)
        })
        .unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    // For `cargo xtask test`, which prints it after the suite (a passing test's output is not
    // shown).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-report.txt"),
        &report,
    );
}
