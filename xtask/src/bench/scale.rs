//! The control plane at scale: 10,000 remote blocks and the endpoints `--scale-endpoints` asks for.

use std::{net::Ipv4Addr, process::Command};

use ipipd_tests::cluster::{Cluster, PodSpec, seed_nodes};

use super::control::{cni_calls, pod_pace};
use super::*;

/// How many rows `ipipd <what> -o json` lists on the node "node".
pub(super) fn rows(c: &Cluster, what: &str) -> Result<usize> {
    Ok(c.ipipd_json("node", &[what])?
        .as_array()
        .map_or(0, |a| a.len()))
}

/// `n` remote /26 blocks in 10.0.0.0/8, on 100 peers in the uplink's /20 (reachable, never
/// sent to).
pub(super) fn scale_peers(n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let peers = 100.min(n);
    let mut s = String::new();
    for p in 0..peers {
        let addr = Ipv4Addr::new(172, 31, 250, 1 + p as u8);
        let blocks: Vec<String> = (p..n)
            .step_by(peers)
            .map(|i| {
                let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i as u32) * 64;
                format!("\"{}/26\"", Ipv4Addr::from(base))
            })
            .collect();
        s += &format!(
            "\n[[peer]]\naddress = \"{addr}\"\nblocks = [{}]\n",
            blocks.join(", ")
        );
    }
    s
}

/// This process's soft limit of open files lowered (and inherited by what it starts) until
/// dropped.
struct NoFileLimit(libc::rlimit);

impl NoFileLimit {
    fn set_soft(soft: u64) -> Result<Self> {
        let mut was = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointers to rlimit structs.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) != 0 {
                bail!("getrlimit: {}", std::io::Error::last_os_error());
            }
            let now = libc::rlimit {
                rlim_cur: soft.min(was.rlim_max),
                rlim_max: was.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &now) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
        Ok(NoFileLimit(was))
    }
}

impl Drop for NoFileLimit {
    fn drop(&mut self) {
        // SAFETY: a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

/// Endpoints added at runtime, and pods through the CNI plugin, on the node at scale.
const SCALE_ADDS: usize = 20;

/// The control plane at scale: time to program `scale_blocks` remote blocks and
/// `scale_endpoints` endpoints, one endpoint add, and the encap path's cost at that size.
pub(super) fn scale(plan: &Plan, _ipipd: &Path, bench_bin: &Path) -> Result<Value> {
    let mut c = Cluster::new("bsc", &seed_nodes(1))?;
    // The endpoints' veths (the pod ends stay in the node namespace: only the host ends matter
    // to ipipd), made in one `ip -batch`.
    let n = plan.scale_endpoints;
    let batch: String = (0..n)
        .map(|i| {
            format!("link add cbx{i:07} type veth peer name pbx{i:07}\nlink set cbx{i:07} up\n")
        })
        .collect();
    let file = c.dir.join("veths.batch");
    std::fs::write(&file, batch)?;
    let t = Instant::now();
    ipipd_tests::check(
        Command::new("ip")
            .args(["-n", &c.node("node").ns.name, "-batch"])
            .arg(&file),
    )?;
    let veths_s = t.elapsed().as_secs_f64();
    let mut cfg = c.config_for("node", "");
    cfg += &scale_peers(plan.scale_blocks);
    // The node's own block must hold its endpoints (10.128.0.0/17: 32,768 addresses, apart from
    // the remote blocks in 10.0.0.0/12).
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    if n > 32_000 {
        bail!("{n} endpoints do not fit the bench's endpoint block");
    }
    for i in 0..n {
        let ip = Ipv4Addr::from(base + 1 + i as u32);
        cfg += &format!("\n[[endpoint]]\naddress = \"{ip}\"\ninterface = \"cbx{i:07}\"\n");
    }
    cfg = cfg.replace(
        "cidr = \"192.168.83.128/26\"",
        "cidr = \"192.168.83.128/26\"\n\n[[block]]\ncidr = \"10.128.0.0/17\"",
    );
    // The daemon runs under the common default soft limit of open files (1,024): a node with
    // ten times as many endpoints must not need more.
    let limit = NoFileLimit::set_soft(1024)?;
    let t = Instant::now();
    let started = c.start_daemon_within("node", Some(cfg), Duration::from_secs(900));
    let startup_s = t.elapsed().as_secs_f64();
    started?;
    let pid = c.node("node").daemon.as_ref().map(|d| d.pid()).unwrap_or(0);
    let daemon_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let pin = c.bpffs.join("node");
    let (n_routes, n_eps) = (rows(&c, "routes")?, rows(&c, "endpoints")?);
    if n_routes < plan.scale_blocks || n_eps < n {
        bail!("the scaled daemon programmed {n_routes} routes and {n_eps} endpoints");
    }
    // A large first start attaches the pods as netlink filters and moves them to TCX links
    // in the background: until /readyz lists none "(netlink)" (on a TCX kernel).
    let ns = c.node("node").ns.view();
    let modes = || {
        ipipd_tests::metrics_get(&ns, "/readyz")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let netlink_at_ready = modes().matches("from_pod attached (netlink)").count();
    let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 20);
    while modes().contains("attached (netlink)") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tcx_s = t.elapsed().as_secs_f64();
    drop(limit);
    let still = modes().matches("attached (netlink)").count();
    if still > 0 {
        bail!("{still} attachments are still netlink filters {tcx_s:.0} s after the start");
    }

    // Endpoints added at runtime one after another, each timed from the CLI's start to its
    // answer (the entry is in the map by then: checked below for all of them), each on a TCX
    // link at once ([`super::control::ONE_POD_EVERY`]).
    let state = c.dir.join("node/state");
    let mut adds = Vec::new();
    let mut pace = Instant::now();
    for i in 0..SCALE_ADDS {
        pod_pace(&mut pace);
        let (address, interface) = (
            Ipv4Addr::new(192, 168, 83, 140 + i as u8),
            format!("calibenchadd{i:02}"),
        );
        c.node_mut("node").add_pod(
            "bsc-p",
            PodSpec {
                address,
                interface: interface.clone(),
            },
        )?;
        let t = Instant::now();
        c.node("node").ipipd(&[
            "endpoint",
            "add",
            "--address",
            &address.to_string(),
            "--interface",
            &interface,
            "--state-dir",
            &state.to_string_lossy(),
        ])?;
        adds.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let eps = c.node("node").ipipd(&[
        "endpoints",
        "-o",
        "json",
        "--pin-dir",
        &pin.to_string_lossy(),
    ])?;
    if let Some(i) = (0..SCALE_ADDS).find(|i| !eps.contains(&format!("\"192.168.83.{}\"", 140 + i)))
    {
        bail!(
            "endpoint 192.168.83.{} added at runtime is not in the map",
            140 + i
        );
    }
    // Pods through the CNI plugin on that node (its IPAM hands out from the endpoints' block).
    let (cni_add, cni_del) = cni_calls(&c, "node", SCALE_ADDS)?;
    // A restart at that size: SIGTERM, then a start that adopts everything.
    let limit = NoFileLimit::set_soft(1024)?;
    let t = Instant::now();
    c.stop_daemon("node")?;
    let cfg_text = std::fs::read_to_string(c.dir.join("node/ipipd.toml"))?;
    let restarted = c.start_daemon_within("node", Some(cfg_text), Duration::from_secs(900));
    let restart_s = t.elapsed().as_secs_f64();
    drop(limit);
    restarted?;
    drop(c);
    eprintln!(
        "xtask bench: encap path cost with {} more remote blocks",
        plan.scale_blocks
    );
    let big = testrun(plan, bench_bin, plan.scale_blocks)?;
    Ok(json!({
        "blocks": plan.scale_blocks,
        "endpoints": n,
        "routes_programmed": n_routes,
        "endpoints_programmed": n_eps,
        "create_veths_s": veths_s,
        "startup_to_ready_s": startup_s,
        "netlink_filters_at_ready": netlink_at_ready,
        "all_tcx_s": tcx_s,
        "nofile_soft_limit": 1024,
        "daemon_fds": daemon_fds,
        "endpoint_add_ms": median_p99(adds),
        "cni_add_ms": cni_add,
        "cni_del_ms": cni_del,
        "restart_to_ready_s": restart_s,
        "testrun_at_scale": big,
    }))
}
