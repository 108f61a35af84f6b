//! deploy/ipipd.yaml and deploy/teardown.yaml: valid against Kubernetes' OpenAPI schemas
//! (PyPI's kubernetes-validate, offline, which `cargo xtask setup` installs), and true to the
//! binary — read from the manifests, not copied: the agent's command line run as written (in a
//! node's namespace, its config the cluster's) answers its liveness and readiness probes on
//! their host, port and paths; the init container's command line installs the plugin into the
//! directories its volumes mount; the ConfigMap's config parses; the paths the binary uses by
//! default (state, pins, CNI directories, the config) are the volumes' mounts.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, ipipd_binary, seed_nodes},
    require_root,
};
use serde_json::Value;

/// The status of a GET of `path` at `at` (HOST:PORT) from inside `ns`, as the kubelet probes a
/// host-network pod.
fn http_get(ns: &NetNs, at: &str, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let (at, path) = (at.to_string(), path.to_string());
    ns.enter(move || {
        let mut s = std::net::TcpStream::connect(&at).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {at}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    })
    .ok()?
}

/// A node as the ConfigMap's config meets it: NODE_NAME set, an uplink with an address.
struct Host;

impl dataplane_user::host::Host for Host {
    fn interfaces(&self) -> Result<Vec<dataplane_user::autodetect::HostInterface>, String> {
        Ok(vec![dataplane_user::autodetect::HostInterface {
            name: "ens5".into(),
            index: 2,
            up: true,
            addrs: vec!["10.0.0.7".parse().unwrap()],
        }])
    }
    fn source_toward(&self, _: std::net::Ipv4Addr) -> Option<std::net::Ipv4Addr> {
        None
    }
    fn env_node_name(&self) -> Option<String> {
        Some("worker-1".into())
    }
    fn hostname(&self) -> String {
        "ip-10-0-0-7".into()
    }
}

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
        .join(file)
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A program of kubernetes-validate's virtualenv, which `cargo xtask setup` makes under
/// target/ (xtask's `VALIDATE_VENV`); the one on PATH where there is none.
fn validator_tool(name: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/kubernetes-validate/bin")
        .join(name);
    if venv.is_file() {
        venv
    } else {
        PathBuf::from(name)
    }
}

/// Whether kubernetes-validate (and its PyYAML) is there: missing, a loud failure under CI and
/// a printed skip elsewhere.
fn have_validator() -> bool {
    if Command::new(validator_tool("kubernetes-validate"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let msg = "kubernetes-validate is missing (cargo xtask setup installs it from PyPI)";
    assert!(!under_ci(), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

/// The documents of a YAML file, as JSON (PyYAML, which kubernetes-validate brings).
fn documents(file: &Path) -> Vec<Value> {
    let out = Command::new(validator_tool("python3"))
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The value after `flag` in a command line.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

/// The host path a container path lies in: the volume mounted over it, and the path within.
fn host_path(pod: &Value, container: &Value, path: &str) -> (String, String) {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("{path} is on no volume of {}", container["name"]));
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let rest = path[mount["mountPath"].as_str().unwrap().len()..].to_string();
    let base = vol["hostPath"]["path"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("<{}>", vol["name"].as_str().unwrap()));
    (base, rest)
}

#[test]
fn the_manifests_validate_against_kubernetes_schemas() {
    if !have_validator() {
        return;
    }
    let out = Command::new(validator_tool("kubernetes-validate"))
        .arg("--strict")
        .arg(deploy("ipipd.yaml"))
        .arg(deploy("teardown.yaml"))
        .arg(deploy("calico-etcd.yaml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 7, "{text}");
}

#[test]
fn the_manifest_is_true_to_the_binary() {
    if !require_root() || !have_validator() {
        return;
    }
    let docs = documents(&deploy("ipipd.yaml"));
    let ds = kind(&docs, "DaemonSet", "ipipd");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let agent = &pod["containers"][0];
    let init = &pod["initContainers"][0];
    for c in [agent, init] {
        assert_eq!(strings(&c["command"]), ["/usr/bin/ipipd"]);
        let env = &c["env"][0];
        assert_eq!(
            (
                env["name"].as_str(),
                env["valueFrom"]["fieldRef"]["fieldPath"].as_str()
            ),
            (Some("NODE_NAME"), Some("spec.nodeName"))
        );
    }
    let args = strings(&agent["args"]);
    assert_eq!(args[0], "run");

    // The config the agent reads is the ConfigMap's key, which parses (its etcd files on the
    // Secret's mount).
    let config = flag(&args, "--config");
    let (cm, key) = host_path(pod, agent, config);
    assert_eq!(cm, "<config>", "{config}");
    let text = kind(&docs, "ConfigMap", "ipipd-config")["data"][key.trim_start_matches('/')]
        .as_str()
        .unwrap()
        .to_string();
    let cfg =
        dataplane_user::config::Config::parse_on(&text, &Host).unwrap_or_else(|e| panic!("{e:?}"));
    let ds_cfg = cfg.datastore.clone().expect("[datastore]");
    for f in [&ds_cfg.ca, &ds_cfg.cert, &ds_cfg.key] {
        let p = f.as_ref().unwrap().display().to_string();
        assert_eq!(host_path(pod, agent, &p).0, "<etcd-tls>", "{p}");
    }
    // The paths the binary uses by default are the host's, mounted.
    let state = dataplane_user::daemon::default_state_dir("n");
    let state = state.parent().unwrap().display().to_string();
    assert_eq!(
        host_path(pod, agent, &state),
        (state.clone(), String::new())
    );
    let pins = cfg.node.pin_dir.display().to_string();
    let (bpffs, _) = host_path(pod, agent, &pins);
    assert_eq!(bpffs, "/sys/fs/bpf", "{pins}");
    let bpf_mount = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf")
        .unwrap();
    assert_eq!(bpf_mount["mountPropagation"], "Bidirectional");
    // install-cni's defaults are the directories the init container's volumes mount.
    let help = Command::new(ipipd_binary().unwrap())
        .args(["install-cni", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let iargs = strings(&init["args"]);
    assert_eq!(iargs[0], "install-cni");
    for (f, default) in [
        ("--bin-dir", "/opt/cni/bin"),
        ("--conf-dir", "/etc/cni/net.d"),
    ] {
        assert!(help.contains(&format!("[default: {default}]")), "{help}");
        assert_eq!(
            host_path(pod, init, flag(&iargs, f)),
            (default.to_string(), String::new())
        );
    }

    // The init container's command line, its directories the test's: the plugin in place.
    let c = Cluster::new("deploy", &seed_nodes(0)).unwrap();
    let (bin, netd) = (c.dir.join("opt-cni-bin"), c.dir.join("etc-cni-net.d"));
    let mut run_args = iargs.clone();
    run_args[iargs.iter().position(|a| a == "--bin-dir").unwrap() + 1] = bin.display().to_string();
    run_args[iargs.iter().position(|a| a == "--conf-dir").unwrap() + 1] =
        netd.display().to_string();
    let a: Vec<&str> = run_args.iter().map(String::as_str).collect();
    c.node("node").ipipd(&a).unwrap();
    assert!(bin.join("ipipd-cni").is_file() && netd.join("10-ipipd.conflist").is_file());

    // The agent's command line as written — the config the cluster's node's, the state
    // directory the test's — answers its probes on their host, port and paths.
    let node_cfg = c.dir.join("node.toml");
    std::fs::write(&node_cfg, c.config_for("node", "")).unwrap();
    let mut run_args = args.clone();
    run_args[args.iter().position(|a| a == "--config").unwrap() + 1] =
        node_cfg.display().to_string();
    run_args.extend([
        "--state-dir".into(),
        c.dir.join("state").display().to_string(),
    ]);
    let log = c.dir.join("agent.log");
    let mut agent_proc = Command::new("ip")
        .args(["netns", "exec", &c.node("node").ns.name])
        .arg(ipipd_binary().unwrap())
        .args(&run_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready; control socket")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            agent_proc.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = flag(&args, "--metrics-addr").to_string();
    let probed = |probe: &str| -> (String, String) {
        let g = &agent[probe]["httpGet"];
        (
            format!("{}:{}", g["host"].as_str().unwrap(), g["port"]),
            g["path"].as_str().unwrap().to_string(),
        )
    };
    let ns = c.node("node").ns.view();
    for probe in ["livenessProbe", "readinessProbe"] {
        let (at, path) = probed(probe);
        assert_eq!(at, served, "{probe}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = http_get(&ns, &at, &path);
            if got == Some(200) {
                break;
            }
            assert!(Instant::now() < deadline, "{probe} GET {at}{path}: {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent_proc.id() as i32, libc::SIGTERM) };
    let _ = agent_proc.wait();
}

/// deploy/calico-etcd.yaml, held to the binary and to Calico's calico-etcd.yaml: the agent's
/// config reads Calico's keys (kind calico-etcd, prefix /calico) with the files of Calico's own
/// etcd Secret, the init containers are calico-node's start and tunnel-address allocation run
/// once (nothing of Felix or BIRD), and no ipipd-cni is installed (calico-cni stays).
#[test]
fn the_calico_manifest_reads_calicos_store_with_calicos_secret() {
    if !have_validator() {
        return;
    }
    let docs = documents(&deploy("calico-etcd.yaml"));
    let ds = kind(&docs, "DaemonSet", "ipipd");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let agent = &pod["containers"][0];
    let args = strings(&agent["args"]);
    assert_eq!(args[0], "run");
    let (cm, key) = host_path(pod, agent, flag(&args, "--config"));
    assert_eq!(cm, "<config>");
    let cm_name = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap()["configMap"]["name"]
        .as_str()
        .unwrap();
    let text = kind(&docs, "ConfigMap", cm_name)["data"][key.trim_start_matches('/')]
        .as_str()
        .unwrap()
        .to_string();
    let cfg =
        dataplane_user::config::Config::parse_on(&text, &Host).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        cfg.datastore_kind,
        dataplane_user::config::DatastoreKind::CalicoEtcd
    );
    let ds_cfg = cfg.datastore.clone().expect("[datastore]");
    assert_eq!(ds_cfg.prefix, "/calico");
    // The node's address is left to Calico's record.
    assert!(!cfg.node.address_given, "{text}");
    let secret = |c: &Value, p: &str| {
        let (vol, rest) = host_path(pod, c, p);
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| format!("<{}>", v["name"].as_str().unwrap()) == vol)
            .unwrap_or_else(|| panic!("{p} on {vol}"));
        (
            v["secret"]["secretName"].as_str().unwrap().to_string(),
            rest.trim_start_matches('/').to_string(),
        )
    };
    for (f, k) in [
        (&ds_cfg.ca, "etcd-ca"),
        (&ds_cfg.cert, "etcd-cert"),
        (&ds_cfg.key, "etcd-key"),
    ] {
        let p = f.as_ref().unwrap().display().to_string();
        assert_eq!(
            secret(agent, &p),
            ("calico-etcd-secrets".to_string(), k.to_string())
        );
    }
    let inits = pod["initContainers"].as_array().unwrap();
    let commands: Vec<Vec<String>> = inits.iter().map(|c| strings(&c["command"])).collect();
    assert_eq!(
        commands,
        [
            vec!["calico-node", "-startup"],
            vec![
                "calico-node",
                "-allocate-tunnel-addrs",
                "-allocate-tunnel-addrs-run-once"
            ],
        ]
    );
    for c in inits {
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{name}"))
                .clone()
        };
        assert_eq!(env("DATASTORE_TYPE")["value"], "etcdv3");
        assert_eq!(
            env("NODENAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        for (var, k) in [
            ("ETCD_CA_CERT_FILE", "etcd-ca"),
            ("ETCD_CERT_FILE", "etcd-cert"),
            ("ETCD_KEY_FILE", "etcd-key"),
        ] {
            let p = env(var)["value"].as_str().unwrap().to_string();
            assert_eq!(
                secret(c, &p),
                ("calico-etcd-secrets".to_string(), k.to_string())
            );
        }
    }
    assert!(
        !serde_json::to_string(pod).unwrap().contains("install-cni"),
        "calico-cni stays: no ipipd-cni"
    );
}
