//! Observability: the counters in `ipipd stats -o json` and in /metrics (scraped over HTTP inside
//! the node's namespace, parsed as Prometheus text) move exactly as a scripted traffic mix
//! says; /readyz turns ready only after attach and lists pending endpoints; `ipipd monitor`
//! shows a spoofed packet's drop with its reason.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, Daemon, ipipd_binary, seed_nodes},
    counters::{Counters, moved, ping, stats},
    require_root,
    traffic::{set_pmtudisc, tcp_transfer, udp_receive, udp_socket},
};

const M1: Ipv4Addr = Ipv4Addr::new(192, 168, 179, 2);
const N1: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 129);
const N2: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 130);
fn get(ns: &NetNs, path: &str) -> Option<(u16, String)> {
    ipipd_tests::metrics_get(ns, path)
}

/// ipipd_packets_total / ipipd_bytes_total by (interface, hook, reason), from a Prometheus
/// text parser.
fn scrape(ns: &NetNs) -> Counters {
    let (code, body) = get(ns, "/metrics").expect("metrics endpoint");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    let mut out = Counters::new();
    for s in &parsed.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v as u64,
            _ => continue,
        };
        let key = (
            s.labels.get("interface").unwrap_or("").to_string(),
            s.labels.get("hook").unwrap_or("").to_string(),
            s.labels.get("reason").unwrap_or("").to_string(),
        );
        match s.metric.as_str() {
            "ipipd_packets_total" => out.entry(key).or_default().0 = v,
            "ipipd_bytes_total" => out.entry(key).or_default().1 = v,
            _ => {}
        }
    }
    assert!(!out.is_empty(), "no ipipd counters in /metrics:\n{body}");
    out
}

#[test]
fn stats_and_metrics_count_a_scripted_mix_exactly() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("o-mix", &seed_nodes(2)).unwrap();
    for n in ["master", "node"] {
        c.start_daemon(n, None).unwrap();
    }
    let n1 = c.node("node").pod(N1).ns.view();
    let m1 = c.node("master").pod(M1).ns.view();
    let node = c.node("node").ns.view();
    // Warm up (ARP for the gateway, the underlay's neighbours), then read the baseline.
    let out = ping(&n1, &format!("-c 1 -W 2 {M1}"));
    assert!(out.contains("1 received"), "{out}\n{}", c.logs());
    let (s0, p0) = (stats(&c, "node"), scrape(&node));

    // The mix: 5 pings across (5 requests encapsulated, 5 replies decapsulated), 7 UDP
    // datagrams across (no reply), and 3 pings from a spoofed source (dropped at the pod).
    let out = ping(&n1, &format!("-c 5 -i 0.1 -W 2 {M1}"));
    assert!(out.contains("5 received"), "{out}");
    let rx = udp_socket(&m1, M1, 5800).unwrap();
    let tx = udp_socket(&n1, N1, 0).unwrap();
    set_pmtudisc(&tx, false).unwrap();
    for _ in 0..7 {
        tx.send_to(&[9; 100], (M1, 5800)).unwrap();
    }
    assert_eq!(udp_receive(&rx, 7).len(), 7);
    n1.sh(&format!("ip addr add {N2}/32 dev eth0")).unwrap();
    let out = ping(&n1, &format!("-c 3 -i 0.1 -W 1 -I {N2} {M1}"));
    assert!(out.contains(" 0 received"), "{out}");
    n1.sh(&format!("ip addr del {N2}/32 dev eth0")).unwrap();

    let (s1, p1) = (stats(&c, "node"), scrape(&node));
    for (what, before, after) in [("stats", &s0, &s1), ("/metrics", &p0, &p1)] {
        assert_eq!(
            moved(before, after, "encap"),
            (12, 5 * 98 + 7 * 142),
            "{what}: encap (5 ICMP of 98 bytes + 7 UDP of 142 bytes, as the pod veth saw them)"
        );
        assert_eq!(
            moved(before, after, "decap_deliver").0,
            5,
            "{what}: decapsulated replies"
        );
        assert_eq!(
            moved(before, after, "drop_spoofed_source"),
            (3, 3 * 98),
            "{what}: spoofed pings"
        );
    }
    // The two views agree on every counter of the mix.
    let of_mix = |c: &Counters| -> Counters {
        c.iter()
            .filter(|((_, _, r), _)| {
                ["encap", "decap_deliver", "drop_spoofed_source"].contains(&r.as_str())
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(of_mix(&s1), of_mix(&p1), "ipipd stats and /metrics");

    // TCP, by bytes: at least what was sent, through encap on the receiving side's peer.
    let t = tcp_transfer(&m1, M1, 5801, &n1, 1 << 20).unwrap();
    assert_eq!(t.sent, t.received);
    let p2 = scrape(&node);
    let (_, bytes) = moved(&p1, &p2, "encap");
    assert!(bytes >= 1 << 20, "encap bytes {bytes} after 1 MiB of TCP");

    // Map occupancy, attach state and build info are there too.
    let (_, body) = get(&node, "/metrics").unwrap();
    for needle in [
        "ipipd_map_entries{map=\"ipipd_eps_v6\"} 2",
        "ipipd_attached{",
        "ipipd_ready 1",
        "ipipd_build_info{",
    ] {
        assert!(body.contains(needle), "{needle} not in /metrics:\n{body}");
    }
}

#[test]
fn readyz_turns_ready_only_after_attach_and_lists_pending_endpoints() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("o-ready", &seed_nodes(1)).unwrap();
    // One endpoint whose interface does not exist: pending, and no reason to wait.
    let cfg = c.config_for("node", "")
        + "\n[[endpoint]]\naddress = \"192.168.83.150\"\ninterface = \"calilater00000\"\n";
    let dir = c.dir.join("node");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ipipd.toml"), cfg).unwrap();
    let node = c.node("node").ns.view();
    let mut d = Daemon::spawn(
        &node,
        &dir.join("ipipd.toml"),
        &dir.join("state"),
        &c.bpffs.join("node"),
    )
    .unwrap();
    // Every answer from the first one on, until ready (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers: Vec<(u16, String)> = Vec::new();
    while answers.last().is_none_or(|(code, _)| *code != 200) {
        assert!(
            Instant::now() < deadline,
            "never ready: {answers:?}\n{}",
            d.log_text()
        );
        if let Some(a) = get(&node, "/readyz") {
            answers.push(a);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // /healthz answers while starting already, and the first /readyz answers were not ready.
    let (first_code, first_body) = &answers[0];
    assert_eq!(
        *first_code, 503,
        "the first /readyz answer came before the attach: {first_body}"
    );
    assert!(first_body.starts_with("not ready"), "{first_body}");
    d.wait_ready().unwrap();
    let (code, body) = get(&node, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    for line in [
        "eth0 from_uplink attached",
        "ipipd0 to_tunnel attached",
        "calin0000000 from_pod attached",
        "pending endpoint 192.168.83.150 (waiting for calilater00000)",
    ] {
        assert!(body.contains(line), "{line:?} not in /readyz:\n{body}");
    }
    assert_eq!(get(&node, "/healthz").unwrap().0, 200);
    let (_, metrics) = get(&node, "/metrics").unwrap();
    assert!(metrics.contains("ipipd_endpoints_pending 1"), "{metrics}");
    assert_eq!(d.stop().unwrap().code(), Some(0));
}

#[test]
fn monitor_shows_a_spoofed_drop_with_its_reason() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("o-mon", &seed_nodes(2)).unwrap();
    for n in ["master", "node"] {
        c.start_daemon(n, None).unwrap();
    }
    let node = c.node("node").ns.view();
    let n1 = c.node("node").pod(N1).ns.view();
    let state = c.node("node").daemon.as_ref().unwrap().state_dir.clone();
    let pin = c.bpffs.join("node");
    assert!(
        get(&node, "/metrics")
            .unwrap()
            .1
            .contains("ipipd_monitor_clients 0"),
        "nobody watches at first"
    );
    let mut mon = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(ipipd_binary().unwrap())
        .args(["monitor", "--drops-only", "-o", "json", "--count", "1"])
        .arg("--seconds")
        .arg("60")
        .arg("--state-dir")
        .arg(&state)
        .arg("--pin-dir")
        .arg(&pin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Connected once the daemon counts it (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(&node, "/metrics")
        .unwrap()
        .1
        .contains("ipipd_monitor_clients 1")
    {
        assert!(Instant::now() < deadline, "the monitor never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Traffic that is not dropped is not shown (drops only), then one spoofed ping.
    let out = ping(&n1, &format!("-c 2 -i 0.1 -W 2 {M1}"));
    assert!(out.contains("2 received"), "{out}");
    n1.sh(&format!("ip addr add {N2}/32 dev eth0")).unwrap();
    let out = ping(&n1, &format!("-c 1 -W 1 -I {N2} {M1}"));
    assert!(out.contains(" 0 received"), "{out}");

    let mut line = String::new();
    BufReader::new(mon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status = mon.wait().unwrap();
    let mut err = String::new();
    let _ = mon.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "ipipd monitor: {status}: {err}");
    let ev: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(ev["reason"], "drop_spoofed_source", "{ev}");
    assert_eq!(ev["verdict"], "drop", "{ev}");
    assert_eq!(ev["hook"], "from_pod", "{ev}");
    assert_eq!(ev["interface"], "calin0000000", "{ev}");
    assert_eq!(ev["outer"]["src"], N2.to_string(), "{ev}");
    assert_eq!(ev["outer"]["dst"], M1.to_string(), "{ev}");
    assert_eq!(ev["outer"]["proto"], 1, "{ev}");
    // The client is gone: the daemon turned the monitor off.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(&node, "/metrics")
        .unwrap()
        .1
        .contains("ipipd_monitor_clients 0")
    {
        assert!(Instant::now() < deadline, "the monitor stayed on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ten idle connections on the metrics port and ten on the control socket delay nobody:
/// /healthz, /readyz and a CLI change are answered while all twenty are still open (each is
/// served by a task of its own, with its own deadline), and a request line larger than the
/// bound is refused with an error reply instead of being buffered.
#[test]
fn idle_and_oversize_clients_delay_nobody() {
    use std::os::unix::net::UnixStream;
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("o-idle", &seed_nodes(1)).unwrap();
    c.start_daemon("node", None).unwrap();
    let node = c.node("node").ns.view();
    let state_dir = c.node("node").daemon.as_ref().unwrap().state_dir.clone();
    let sock = state_dir.join("ipipd.sock");
    let idle_tcp: Vec<TcpStream> = node
        .enter(|| {
            (0..10)
                .map(|_| TcpStream::connect(ipipd_tests::METRICS).unwrap())
                .collect()
        })
        .unwrap();
    let idle_unix: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();

    assert_eq!(get(&node, "/healthz"), Some((200, "ok\n".to_string())));
    let (code, body) = get(&node, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    let st = state_dir.to_str().unwrap();
    c.node("node")
        .ipipd(&[
            "endpoint",
            "add",
            "--address",
            "192.168.83.140",
            "--interface",
            "calilater1",
            "--state-dir",
            st,
        ])
        .unwrap();
    c.node("node")
        .ipipd(&[
            "endpoint",
            "del",
            "--address",
            "192.168.83.140",
            "--state-dir",
            st,
        ])
        .unwrap();

    // Every idle connection is still open: nothing above waited for one to time out.
    let still_open = |r: std::io::Result<usize>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    for mut s in idle_tcp {
        s.set_nonblocking(true).unwrap();
        assert!(
            still_open(s.read(&mut [0u8; 64])),
            "a metrics connection was closed"
        );
    }
    for mut s in idle_unix {
        s.set_nonblocking(true).unwrap();
        assert!(
            still_open(s.read(&mut [0u8; 64])),
            "a control connection was closed"
        );
    }

    // 1 MiB without a newline: refused with a reply, not read into memory.
    let big = UnixStream::connect(&sock).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = {
        let mut w = big.try_clone().unwrap();
        std::thread::spawn(move || {
            // The daemon stops reading once the bound is passed: a broken pipe is expected.
            let _ = w.write_all(&vec![b'x'; 1 << 20]);
        })
    };
    let mut reply = String::new();
    BufReader::new(&big).read_line(&mut reply).unwrap();
    assert_eq!(
        reply.trim(),
        r#"{"ok":false,"error":"request refused: longer than 65536 bytes"}"#
    );
    drop(big);
    writer.join().unwrap();
    // And the daemon still answers.
    assert_eq!(get(&node, "/healthz"), Some((200, "ok\n".to_string())));
}

/// Polls `f` every 50 ms for at most 20 s; the last value when it never held.
fn within_20s<T>(mut f: impl FnMut() -> T, ok: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = f();
        if ok(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The uplink deleted: /readyz says so. Created again with its name and address (a new
/// ifindex): from_uplink is attached to it, the programs are re-keyed, /readyz is ready again
/// and pods talk across nodes both ways.
#[test]
fn a_recreated_uplink_is_attached_again_and_readyz_follows() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("o-upl", &seed_nodes(1)).unwrap();
    for n in ["master", "node"] {
        let cfg = c.config_for(n, "");
        c.start_daemon(n, Some(cfg)).unwrap();
    }
    let node = c.node("node").ns.view();
    let n1 = c.node("node").pod(N1).ns.view();
    let m1 = c.node("master").pod(M1).ns.view();
    let before = ping(&n1, &format!("-c 2 -i 0.2 -W 1 {M1}"));
    assert!(before.contains(" 0% packet loss"), "{before}");
    let old = node.ifindex("eth0").unwrap();

    node.ip("link del eth0").unwrap();
    let (code, body) = within_20s(
        || get(&node, "/readyz").unwrap_or_default(),
        |(code, body)| *code == 503 && body.contains("the uplink eth0 (gone)"),
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the uplink eth0 (gone)"), "{body}");

    // Back: the same name, address and bridge port, a new ifindex.
    let i = c.nodes.iter().position(|n| n.spec.name == "node").unwrap();
    let spec = c.node("node").spec.clone();
    c.underlay
        .sh(&format!(
            "ip link add up{i} mtu {mtu} type veth peer name eth0 netns {ns}; \
             ip link set up{i} master br{b} up",
            mtu = spec.mtu,
            ns = node.name,
            b = spec.bridge
        ))
        .unwrap();
    node.sh(&format!(
        "ip link set eth0 mtu {} up; ip addr add {}/{} dev eth0",
        spec.mtu, spec.address, spec.prefix_len
    ))
    .unwrap();
    assert_ne!(node.ifindex("eth0").unwrap(), old, "a new ifindex");
    let (code, body) = within_20s(
        || get(&node, "/readyz").unwrap_or_default(),
        |(code, _)| *code == 200,
    );
    assert_eq!(code, 200, "{body}\n{}", c.logs());
    assert!(body.contains("eth0 from_uplink attached"), "{body}");
    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 2 {M1}"));
    assert!(out.contains(" 0% packet loss"), "{out}\n{}", c.logs());
    let out = ping(&m1, &format!("-c 3 -i 0.2 -W 2 {N1}"));
    assert!(out.contains(" 0% packet loss"), "{out}\n{}", c.logs());
    let log = c.node("node").daemon.as_ref().unwrap().log_text();
    assert!(!log.contains("Invalid argument"), "{log}");
}
