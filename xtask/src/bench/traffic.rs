//! The traffic part: each setup built in the seed's topology, its workloads run (iperf3, request/
//! response), whole-machine CPU and each program's in-situ cost read over each run, and the
//! floors that A_floor puts in front of ipipd's programs.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::{Command, Stdio},
};

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, seed_nodes},
};

use super::*;

/// Whether the running kernel has the ipip module loaded (setup D).
pub(super) fn kernel_has_ipip() -> bool {
    Path::new("/sys/module/ipip").exists()
}

/// The setups, in groups that run back to back: A with A_floor, whose in-situ program costs
/// are compared run for run, so that the machine's drift between the two stays small.
pub(super) fn setups() -> Vec<Vec<Setup>> {
    let mut a = vec![Setup::A];
    // The floors go first in the TCX chain, in front of ipipd's programs.
    if ipipd_tests::kernel_has_tcx() {
        a.push(Setup::AFloor);
    }
    let mut v = vec![
        a,
        vec![Setup::AXdp],
        vec![Setup::ASlow],
        vec![Setup::B, Setup::BMtu],
        vec![Setup::C],
    ];
    if kernel_has_ipip() {
        v.push(vec![Setup::D]);
    }
    v
}

/// Round `round`'s order: the groups rotated by the round, and each group's own order reversed
/// every other round, so that drift of the machine spreads over every setup.
pub(super) fn round_order(groups: &[Vec<Setup>], round: usize) -> Vec<Setup> {
    let mut order = Vec::new();
    for i in 0..groups.len() {
        let g = &groups[(i + round) % groups.len()];
        if round % 2 == 1 {
            order.extend(g.iter().rev());
        } else {
            order.extend(g.iter());
        }
    }
    order
}

fn cpu_busy_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((total - idle) / hz)
}

/// Builds one setup, runs every workload on it, and tears it down.
pub(super) fn run_setup(s: Setup, plan: &Plan, bench_bin: &Path) -> Result<Vec<(Workload, Run)>> {
    let mut c = Cluster::new(&format!("b{}", s.key()), &seed_nodes(1))?;
    // Program id -> which side of the data direction its ipipd runs on.
    let mut roles: BTreeMap<u32, &'static str> = BTreeMap::new();
    // The pods' MTU where a tunnel's (or, in B_mtu, its MTU's) 20 bytes come off the uplink's.
    let tunnel_mtu = |c: &Cluster, n: &str| -> Result<()> {
        let node = c.node(n);
        node.pods[0]
            .ns
            .sh(&format!("ip link set eth0 mtu {}", node.spec.mtu - 20))?;
        Ok(())
    };
    let (client, server, server_ip) = match s {
        Setup::A | Setup::AXdp | Setup::AFloor | Setup::ASlow => {
            for (n, role) in SIDES {
                tunnel_mtu(&c, n)?;
                let extra = match s {
                    Setup::AXdp => "xdp = \"native\"",
                    Setup::ASlow => "fast_path = false",
                    _ => "",
                };
                let cfg = c.config_for(n, extra);
                loaded_by(bench_bin, &mut roles, role, || c.start_daemon(n, Some(cfg)))?;
            }
            (
                c.node("master").pods[0].ns.view(),
                c.node("node").pods[0].ns.view(),
                c.node("node").pods[0].spec.address,
            )
        }
        Setup::B | Setup::BMtu => {
            if s == Setup::BMtu {
                for (n, _) in SIDES {
                    tunnel_mtu(&c, n)?;
                }
            }
            c.node("master").kernel_plain_routing(c.node("node"))?;
            c.node("node").kernel_plain_routing(c.node("master"))?;
            (
                c.node("master").pods[0].ns.view(),
                c.node("node").pods[0].ns.view(),
                c.node("node").pods[0].spec.address,
            )
        }
        Setup::D => {
            for (n, peer) in [("master", "node"), ("node", "master")] {
                tunnel_mtu(&c, n)?;
                c.node(n).kernel_tunl0(c.node(peer))?;
            }
            (
                c.node("master").pods[0].ns.view(),
                c.node("node").pods[0].ns.view(),
                c.node("node").pods[0].spec.address,
            )
        }
        Setup::C => (
            c.node("master").ns.view(),
            c.node("node").ns.view(),
            c.node("node").spec.address,
        ),
    };
    // Warm up neighbours (and, in A, the programs) before measuring.
    let warm = client.sh(&format!("ping -c 2 -i 0.2 -W 2 {server_ip} >/dev/null"));
    if let Err(e) = warm {
        bail!(
            "{}: no connectivity before the runs: {e:#}\n{}",
            s.name(),
            c.logs()
        );
    }
    let _floors = if s == Setup::AFloor {
        Some(Floors::attach(&c, bench_bin, &mut roles)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (i, w) in WORKLOADS.into_iter().enumerate() {
        let port = 5300 + 2 * i as u16;
        let one_run = |port: u16| match w {
            Workload::Rr => rr(&client, &server, server_ip, port, plan.seconds),
            _ => iperf(&client, &server, server_ip, port, w, plan),
        };
        // Throughput and CPU with kernel.bpf_stats_enabled off: B and C do not pay for the
        // kernel's per-run accounting, so A must not either. (A_floor is measured for its
        // program costs only.)
        let mut r = Run::default();
        if s != Setup::AFloor {
            set_bpf_stats(false)?;
            let perf = match &plan.profile {
                Some(dir) => Some(
                    Command::new("perf")
                        .args(["record", "-a", "-g", "-F", "999", "-q", "-o"])
                        .arg(profile::file(dir, s.key(), w.key()))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting perf record (Debian's linux-perf)")?,
                ),
                None => None,
            };
            let cpu0 = cpu_busy_s()?;
            r = one_run(port)?;
            r.cpu_s = cpu_busy_s()? - cpu0;
            if let Some(mut p) = perf {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
                let _ = p.wait();
            }
        }
        // The programs' in-situ cost: the same workload again, with the accounting on.
        if matches!(s, Setup::A | Setup::AXdp | Setup::AFloor | Setup::ASlow) {
            set_bpf_stats(true)?;
            let (p0, h0) = (progstats(bench_bin)?, hook_bytes(&c)?);
            let stats_run = one_run(port + 1);
            let (p1, h1) = (progstats(bench_bin)?, hook_bytes(&c)?);
            set_bpf_stats(false)?;
            let stats_run = stats_run?;
            if s == Setup::AFloor {
                r = stats_run;
            }
            for (id, (name, t1, n1)) in &p1 {
                let Some(role) = roles.get(id) else { continue };
                let key = format!("{name}@{role}");
                let (_, t0, n0) = p0.get(id).cloned().unwrap_or_default();
                let b = h1.get(&key).copied().unwrap_or(0.0) - h0.get(&key).copied().unwrap_or(0.0);
                let e = r.progs.entry(key).or_default();
                e.0 += t1 - t0;
                e.1 += n1 - n0;
                e.2 += b;
            }
        }
        out.push((w, r));
    }
    drop(c);
    Ok(out)
}

fn iperf(
    client: &NetNs,
    server: &NetNs,
    server_ip: Ipv4Addr,
    port: u16,
    w: Workload,
    plan: &Plan,
) -> Result<Run> {
    let seconds = plan.seconds;
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server.name, "timeout"])
        .arg((seconds + 30).to_string())
        .args(["iperf3", "-s", "-1", "-B"])
        .arg(server_ip.to_string())
        .arg("-p")
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let mut args: Vec<String> = vec![
        "-c".into(),
        server_ip.to_string(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        seconds.to_string(),
        "-J".into(),
    ];
    match w {
        Workload::Tcp4 => args.extend(["-P".into(), "4".into()]),
        Workload::Udp64 => args.extend(["-u", "-b", "0", "-l", "64"].map(String::from)),
        _ => {}
    }
    if matches!(w, Workload::Tcp1 | Workload::Tcp4) {
        args.extend(["-C".into(), plan.cc.clone()]);
    }
    let mut last_err = String::new();
    let mut parsed = None;
    // The server needs a moment to listen: a bounded number of tries.
    for _ in 0..20 {
        let out = Command::new("ip")
            .args(["netns", "exec", &client.name, "timeout"])
            .arg((seconds + 20).to_string())
            .arg("iperf3")
            .args(&args)
            .output()
            .context("running iperf3 -c")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() && v.get("error").is_none() {
            parsed = Some(v);
            break;
        }
        last_err = v["error"].as_str().unwrap_or("no output").to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = srv.wait();
    let v = parsed.with_context(|| format!("iperf3 {}: {last_err}", w.name()))?;
    let end = &v["end"];
    Ok(match w {
        Workload::Udp64 => {
            let sum = &end["sum"];
            let sent = sum["packets"].as_f64().unwrap_or(0.0);
            let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
            let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
            let received = (sent - lost).max(0.0);
            Run {
                rate: received / secs,
                bytes: received * 64.0,
                packets: received,
                ..Default::default()
            }
        }
        _ => {
            let sum = &end["sum_received"];
            let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
            Run {
                retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
                rate: sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
                bytes,
                // Full-sized segments of the pod MTU: the packet count the bytes stand for.
                packets: bytes / 1428.0,
                ..Default::default()
            }
        }
    })
}

/// TCP request/response, 64 bytes each way, one connection, for `seconds`.
fn rr(client: &NetNs, server: &NetNs, server_ip: Ipv4Addr, port: u16, seconds: u32) -> Result<Run> {
    let listener =
        server.enter(move || TcpListener::bind(SocketAddrV4::new(server_ip, port)))??;
    let srv = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(_) => return Ok(()),
            }
        }
    });
    let n = client.enter(move || -> Result<u64> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(server_ip, port).into(),
            Duration::from_secs(5),
        )?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [7u8; 64];
        let end = Instant::now() + Duration::from_secs(seconds as u64);
        let mut n = 0u64;
        while Instant::now() < end {
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            n += 1;
        }
        Ok(n)
    })??;
    let _ = srv.join();
    let rate = n as f64 / seconds as f64;
    Ok(Run {
        rate,
        bytes: n as f64 * 128.0,
        packets: n as f64 * 2.0,
        ..Default::default()
    })
}

/// (name, run_time_ns, run_cnt) of every loaded program of ipipd's and the floors', by id.
fn progstats(bench_bin: &Path) -> Result<BTreeMap<u32, (String, f64, f64)>> {
    let out = ipipd_tests::check(Command::new(bench_bin).arg("progstats"))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(id, x)| {
            Some((
                id.parse().ok()?,
                (
                    x["name"].as_str()?.to_string(),
                    x["run_time_ns"].as_f64().unwrap_or(0.0),
                    x["run_cnt"].as_f64().unwrap_or(0.0),
                ),
            ))
        })
        .collect())
}

/// Runs `load`, then gives every program it loaded (an id that was not loaded before) to
/// `role`, the side of the data direction it runs on.
fn loaded_by(
    bench_bin: &Path,
    roles: &mut BTreeMap<u32, &'static str>,
    role: &'static str,
    load: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = progstats(bench_bin)?;
    load()?;
    for id in progstats(bench_bin)?.into_keys() {
        if !before.contains_key(&id) {
            roles.insert(id, role);
        }
    }
    Ok(())
}

/// The floor programs of setup A_floor, attached first on the data direction's hooks (sender:
/// the client pod's veth ingress; receiver: the uplink's ingress), each held by an
/// `ipipd-bench floor` process until its standard input closes.
struct Floors(Vec<std::process::Child>);

impl Floors {
    fn attach(
        c: &Cluster,
        bench_bin: &Path,
        roles: &mut BTreeMap<u32, &'static str>,
    ) -> Result<Floors> {
        let (snd, rcv) = (c.node("master"), c.node("node"));
        let mac = |ns: &NetNs, dev: &str| -> Result<String> {
            Ok(ns
                .sh(&format!("cat /sys/class/net/{dev}/address"))?
                .trim()
                .to_string())
        };
        let snd_pod_if = snd.pods[0].spec.interface.clone();
        let rcv_pod_if = rcv.pods[0].spec.interface.clone();
        let jobs: Vec<(&NetNs, &'static str, Vec<String>)> = vec![
            (
                &snd.ns,
                "sender",
                vec![
                    "--prog=floor_encap".into(),
                    format!("--iface={snd_pod_if}"),
                    "--direction=ingress".into(),
                    "--out-if=eth0".into(),
                    format!("--src-ip={}", snd.spec.address),
                    format!("--dst-ip={}", rcv.spec.address),
                    format!("--smac={}", mac(&snd.ns, "eth0")?),
                    format!("--dmac={}", mac(&rcv.ns, "eth0")?),
                ],
            ),
            (
                &rcv.ns,
                "receiver",
                vec![
                    "--prog=floor_decap".into(),
                    "--iface=eth0".into(),
                    "--direction=ingress".into(),
                    format!("--out-if={rcv_pod_if}"),
                    format!("--smac={}", mac(&rcv.ns, &rcv_pod_if)?),
                    format!("--dmac={}", mac(&rcv.pods[0].ns, "eth0")?),
                ],
            ),
        ];
        let mut floors = Floors(Vec::new());
        for (ns, role, args) in jobs {
            loaded_by(bench_bin, roles, role, || {
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns.name])
                    .arg(bench_bin)
                    .arg("floor")
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("ipipd-bench floor")?;
                let mut line = String::new();
                let stdout = child.stdout.take().context("floor stdout")?;
                floors.0.push(child);
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
                if !line.starts_with("attached") {
                    bail!("ipipd-bench floor {}: did not attach", args.join(" "));
                }
                Ok(())
            })?;
        }
        Ok(floors)
    }
}

impl Drop for Floors {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Bytes counted per hook on each side (`ipipd stats`), keyed `<hook>@<role>`.
fn hook_bytes(c: &Cluster) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (n, role) in SIDES {
        let pin = c.bpffs.join(n);
        let text =
            c.node(n)
                .ipipd(&["stats", "-o", "json", "--pin-dir", &pin.to_string_lossy()])?;
        let v: Value = serde_json::from_str(&text)?;
        for r in v.as_array().into_iter().flatten() {
            *out.entry(format!("{}@{role}", r["hook"].as_str().unwrap_or("?")))
                .or_insert(0.0) += r["bytes"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(out)
}

/// kernel.bpf_stats_enabled: each program's run time and count, at the price of two clock
/// reads per run. On only while the programs' in-situ cost is measured.
fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write(BPF_STATS, if on { "1" } else { "0" })
        .with_context(|| format!("writing {BPF_STATS}"))
}
