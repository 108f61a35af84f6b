//! The bpf-fixtures runner: each vector's namespace state is built in a fresh namespace, its
//! map state programmed into a freshly loaded object, and its frame run through
//! BPF_PROG_TEST_RUN; verdict, output bytes and counters are compared, and the output is checked
//! by an independent parser (etherparse), checksums included.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use dataplane_common::{
    CounterKey, CounterValue, Endpoint, Hook, Mode, NodeConfig, ROUTE_F_ENCAP, ROUTE_F_SAME_SUBNET,
    Reason, RouteKind, RouteValue, program_names,
};
use dataplane_user::{loader, maps};
use serde::Deserialize;

use crate::NetNs;

/// One vector, as written in `bpf-fixtures/vectors/*.toml` (merged with its base).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// What the vector shows, in a sentence.
    pub name: String,
    /// A file in `bpf-fixtures/bases/` whose setup, node, endpoints and routes come first.
    #[serde(default)]
    pub base: Option<String>,
    /// from_pod | from_uplink | to_uplink | xdp_uplink
    #[serde(default)]
    pub program: String,
    /// The device the packet is on (ctx ifindex; for XDP, ingress_ifindex).
    #[serde(default)]
    pub interface: String,
    #[serde(default)]
    pub mark: u32,
    /// The CPU test_run runs on (the outer IP ID of DF-clear packets depends on it).
    #[serde(default)]
    pub cpu: usize,
    /// Shell lines run in the namespace before anything else (ip, sysctl).
    #[serde(default)]
    pub setup: Vec<String>,
    #[serde(default)]
    pub node: Option<NodeSpec>,
    #[serde(default)]
    pub endpoint: Vec<EndpointSpec>,
    #[serde(default)]
    pub route: Vec<RouteSpec>,
    /// The input frame, hex (whitespace ignored).
    #[serde(default)]
    pub input: String,
    #[serde(default)]
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub address: Ipv4Addr,
    pub uplink: String,
    pub mtu: u32,
    pub mode: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub interface: String,
    pub address: Ipv4Addr,
    pub pod_mac: String,
    pub host_mac: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub cidr: String,
    /// remote_block | own_block | peer_node
    pub kind: String,
    #[serde(default)]
    pub node: Option<Ipv4Addr>,
    /// encap, same_subnet
    #[serde(default)]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// tc: ok | shot | redirect; xdp: pass | drop
    pub verdict: String,
    /// The output frame, hex; absent means "the input, unchanged".
    #[serde(default)]
    pub output: Option<String>,
    /// Every counter that moves; all others must stay unchanged.
    #[serde(default)]
    pub counters: Vec<CounterSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSpec {
    pub interface: String,
    pub hook: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What the self-test breaks on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// Flip one byte of the expected output (or of the input, for an unchanged output).
    FlipExpectedByte,
    /// Change one map entry: the first endpoint's pod address, or the first route's node.
    ChangeMapEntry,
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf-fixtures")
}

/// Every vector, sorted by file name, merged with its base.
pub fn load_vectors() -> Result<Vec<(String, Vector)>> {
    let dir = fixtures_dir().join("vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            Ok((file, load_vector(&p)?))
        })
        .collect()
}

pub fn load_vector(path: &Path) -> Result<Vector> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: Vector =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(base) = v.base.clone() {
        let bpath = fixtures_dir().join("bases").join(&base);
        let btext = std::fs::read_to_string(&bpath)
            .with_context(|| format!("reading {}", bpath.display()))?;
        let b: Vector =
            toml::from_str(&btext).with_context(|| format!("parsing {}", bpath.display()))?;
        v.setup = b.setup.into_iter().chain(v.setup).collect();
        v.endpoint = b.endpoint.into_iter().chain(v.endpoint).collect();
        v.route = b.route.into_iter().chain(v.route).collect();
        if v.node.is_none() {
            v.node = b.node;
        }
    }
    ensure!(!v.program.is_empty(), "{}: no program", path.display());
    ensure!(v.expect.is_some(), "{}: no [expect]", path.display());
    Ok(v)
}

pub fn hex(s: &str) -> Result<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    ensure!(digits.len() % 2 == 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| anyhow!("hex: {e}")))
        .collect()
}

fn mac(s: &str) -> Result<[u8; 6]> {
    let b: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {s}"))?;
    b.try_into().map_err(|_| anyhow!("MAC {s}: not 6 bytes"))
}

fn cidr(s: &str) -> Result<([u8; 4], u32)> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("{s}: not a CIDR"))?;
    let addr: Ipv4Addr = a.parse().with_context(|| format!("{s}"))?;
    let len: u32 = l.parse().with_context(|| format!("{s}"))?;
    ensure!(len <= 32, "{s}: prefix longer than 32");
    Ok((addr.octets(), len))
}

fn hook_by_name(s: &str) -> Result<Hook> {
    Hook::ALL
        .into_iter()
        .find(|h| h.name() == s)
        .ok_or_else(|| anyhow!("unknown hook {s}"))
}

fn reason_by_name(s: &str) -> Result<Reason> {
    Reason::ALL
        .iter()
        .copied()
        .find(|r| r.name() == s)
        .ok_or_else(|| anyhow!("unknown reason {s}"))
}

fn describe(key: &CounterKey, names: &BTreeMap<u32, String>) -> String {
    format!(
        "{}/{}/{}",
        names
            .get(&key.ifindex)
            .cloned()
            .unwrap_or_else(|| key.ifindex.to_string()),
        Hook::from_u8(key.hook).map_or("?", Hook::name),
        Reason::from_u8(key.reason).map_or("?", Reason::name),
    )
}

/// The sk_buff context for test_run: ifindex (selects skb->dev) and mark.
fn skb_ctx(ifindex: u32, mark: u32) -> Vec<u8> {
    // struct __sk_buff is 192 bytes; mark at 8, ifindex at 40.
    let mut ctx = vec![0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// struct xdp_md: data, data_end, data_meta, ingress_ifindex (at 12), rx_queue_index, egress_ifindex.
fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    let mut ctx = vec![0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// What one run produced.
struct Outcome {
    retval: u32,
    output: Vec<u8>,
    delta: BTreeMap<CounterKey, CounterValue>,
    names: BTreeMap<u32, String>,
}

/// Runs one vector; Ok(()) when everything it expects is what happened.
pub fn run_vector(v: &Vector, mutation: Mutation) -> Result<()> {
    let expect = v.expect.as_ref().ok_or_else(|| anyhow!("no [expect]"))?;
    let input = hex(&v.input).context("input")?;
    let mut expected_out = match &expect.output {
        Some(o) => hex(o).context("expect.output")?,
        None => input.clone(),
    };
    // The vector's own expectation must be a well-formed frame (the fixture is checked too),
    // unless the packet is dropped (malformed inputs are).
    if !matches!(expect.verdict.as_str(), "shot" | "drop") {
        check_frame(&expected_out).context("expect.output does not parse")?;
    }
    if mutation == Mutation::FlipExpectedByte {
        let i = expected_out.len() - 1;
        expected_out[i] ^= 0xff;
    }

    let ns = NetNs::new("fx")?;
    if !v.setup.is_empty() {
        ns.sh(&v.setup.join("\n")).context("setup")?;
    }
    let out = ns.enter(|| execute(v, &input, mutation))??;

    let verdict = match (v.program.as_str(), out.retval) {
        (program_names::XDP_UPLINK, 1) => "drop",
        (program_names::XDP_UPLINK, 2) => "pass",
        (_, 0) => "ok",
        (_, 2) => "shot",
        (_, 7) => "redirect",
        _ => "other",
    };
    let mut problems = Vec::new();
    if verdict != expect.verdict {
        problems.push(format!(
            "verdict: expected {}, got {verdict} ({})",
            expect.verdict, out.retval
        ));
    }
    // A dropped packet's bytes are not delivered anywhere: only compare what continues.
    if verdict != "shot" && verdict != "drop" {
        if out.output != expected_out {
            problems.push(format!(
                "output differs:\n  expected {}\n  got      {}",
                to_hex(&expected_out),
                to_hex(&out.output)
            ));
        }
        if let Err(e) = check_frame(&out.output) {
            problems.push(format!("output does not parse: {e:#}"));
        }
    }
    // Counters: exactly the expected ones moved.
    let mut expected_counters = BTreeMap::new();
    let by_name: BTreeMap<&str, u32> = out.names.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    for c in &expect.counters {
        let ifindex = *by_name
            .get(c.interface.as_str())
            .ok_or_else(|| anyhow!("counter interface {} is not in the namespace", c.interface))?;
        let key = CounterKey {
            ifindex,
            hook: hook_by_name(&c.hook)? as u8,
            reason: reason_by_name(&c.reason)? as u8,
            _pad: [0; 2],
        };
        expected_counters.insert(
            key,
            CounterValue {
                packets: c.packets,
                bytes: c.bytes,
            },
        );
    }
    if expected_counters != out.delta {
        let fmt = |m: &BTreeMap<CounterKey, CounterValue>| {
            m.iter()
                .map(|(k, v)| format!("{}={}p/{}B", describe(k, &out.names), v.packets, v.bytes))
                .collect::<Vec<_>>()
                .join(", ")
        };
        problems.push(format!(
            "counters: expected [{}], got [{}]",
            fmt(&expected_counters),
            fmt(&out.delta)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// Inside the namespace: load, program the maps, run, read the counters.
fn execute(v: &Vector, input: &[u8], mutation: Mutation) -> Result<Outcome> {
    let ifindex_of = |dev: &str| -> Result<u32> {
        let c = std::ffi::CString::new(dev)?;
        // SAFETY: valid C string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        ensure!(i != 0, "no device {dev} in the namespace");
        Ok(i)
    };
    let mut names = BTreeMap::new();
    let mut ebpf = loader::open_object()?;
    loader::load_all(&mut ebpf)?;

    if let Some(node) = &v.node {
        let uplink = ifindex_of(&node.uplink)?;
        names.insert(uplink, node.uplink.clone());
        let mode = match node.mode.as_str() {
            "always" => Mode::Always,
            "cross-subnet" => Mode::CrossSubnet,
            m => bail!("node.mode {m}"),
        };
        maps::set_config(
            &mut ebpf,
            &NodeConfig {
                node_ip: node.address.octets(),
                uplink_ifindex: uplink,
                mtu: node.mtu,
                mode: mode as u8,
                ready: 1,
                _pad: [0; 2],
            },
        )?;
    }
    for (i, ep) in v.endpoint.iter().enumerate() {
        let ifindex = ifindex_of(&ep.interface)?;
        names.insert(ifindex, ep.interface.clone());
        let mut pod_ip = ep.address.octets();
        if mutation == Mutation::ChangeMapEntry && i == 0 {
            pod_ip[3] ^= 1;
        }
        let (pod_mac, host_mac) = (mac(&ep.pod_mac)?, mac(&ep.host_mac)?);
        maps::put_endpoint(
            &mut ebpf,
            ifindex,
            &Endpoint {
                pod_ip,
                pod_mac,
                host_mac,
            },
        )?;
        maps::put_route(
            &mut ebpf,
            pod_ip,
            32,
            &RouteValue {
                kind: RouteKind::LocalEndpoint as u8,
                flags: 0,
                _pad: [0; 2],
                ifindex,
                node_ip: [0; 4],
                pod_mac,
                host_mac,
            },
        )?;
    }
    for (i, r) in v.route.iter().enumerate() {
        let (addr, len) = cidr(&r.cidr)?;
        let kind = match r.kind.as_str() {
            "remote_block" => RouteKind::RemoteBlock,
            "own_block" => RouteKind::OwnBlock,
            "peer_node" => RouteKind::PeerNode,
            k => bail!("route kind {k}"),
        };
        let mut flags = 0;
        for f in &r.flags {
            flags |= match f.as_str() {
                "encap" => ROUTE_F_ENCAP,
                "same_subnet" => ROUTE_F_SAME_SUBNET,
                f => bail!("route flag {f}"),
            };
        }
        let mut node_ip = r.node.map(|n| n.octets()).unwrap_or_default();
        if mutation == Mutation::ChangeMapEntry && v.endpoint.is_empty() && i == 0 {
            node_ip[3] ^= 1;
        }
        maps::put_route(
            &mut ebpf,
            addr,
            len,
            &RouteValue {
                kind: kind as u8,
                flags,
                _pad: [0; 2],
                ifindex: 0,
                node_ip,
                pod_mac: [0; 6],
                host_mac: [0; 6],
            },
        )?;
    }
    let on = ifindex_of(&v.interface)?;
    names.entry(on).or_insert_with(|| v.interface.clone());
    // Deterministic outer IP IDs: the per-CPU counter of the CPU the vector asks for.
    pin_to_cpu(v.cpu)?;

    let before = maps::counters(&ebpf)?;
    let mut out = vec![0u8; input.len() + 256];
    let result = if v.program == program_names::XDP_UPLINK {
        let p: &Xdp = ebpf.program(&v.program).unwrap().try_into()?;
        let ctx = xdp_ctx(on, input.len());
        p.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
    } else {
        let p: &SchedClassifier = ebpf
            .program(&v.program)
            .ok_or_else(|| anyhow!("no program {}", v.program))?
            .try_into()?;
        let ctx = skb_ctx(on, v.mark);
        p.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
    }
    .with_context(|| format!("BPF_PROG_TEST_RUN of {}", v.program))?;
    out.truncate(result.data_size_out as usize);
    let after = maps::counters(&ebpf)?;
    let mut delta = BTreeMap::new();
    for (k, a) in &after {
        let b = before.get(k).copied().unwrap_or_default();
        if a != &b {
            delta.insert(
                *k,
                CounterValue {
                    packets: a.packets - b.packets,
                    bytes: a.bytes - b.bytes,
                },
            );
        }
    }
    Ok(Outcome {
        retval: result.return_value,
        output: out,
        delta,
        names,
    })
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET within its bounds; affects this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Independent parse of a frame: Ethernet, then for IPv4 the header checksum, and for IP-in-IP
/// the inner header's too; for ARP a well-formed IPv4-over-Ethernet body.
pub fn check_frame(frame: &[u8]) -> Result<()> {
    use etherparse::{EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice};
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|e| anyhow!("ethernet: {e}"))?;
    let rest = &frame[eth.slice().len()..];
    match eth.ether_type() {
        EtherType::IPV4 => {
            let ip = Ipv4HeaderSlice::from_slice(rest).map_err(|e| anyhow!("ipv4: {e}"))?;
            verify_ipv4_checksum(ip.slice()).context("ipv4 header")?;
            ensure!(
                ip.total_len() as usize <= rest.len(),
                "ipv4 total length beyond the frame"
            );
            if ip.protocol() == etherparse::IpNumber::IPV4 {
                let inner = Ipv4HeaderSlice::from_slice(&rest[ip.slice().len()..])
                    .map_err(|e| anyhow!("inner ipv4: {e}"))?;
                verify_ipv4_checksum(inner.slice()).context("inner ipv4 header")?;
                ensure!(
                    inner.total_len() as usize + ip.slice().len() <= ip.total_len() as usize,
                    "inner total length beyond the outer"
                );
            }
        }
        EtherType::ARP => {
            ensure!(rest.len() >= 28, "ARP body shorter than 28 bytes");
        }
        _ => {}
    }
    Ok(())
}

fn verify_ipv4_checksum(hdr: &[u8]) -> Result<()> {
    let mut sum = 0u32;
    for w in hdr.chunks(2) {
        sum += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ensure!(sum == 0xffff, "checksum does not verify (sum {sum:#06x})");
    Ok(())
}
