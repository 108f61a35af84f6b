//! Driving `ipipd-cni` as runtimes do: directly (the spec's environment and stdin, as a
//! runtime's libcni execs it) and through a real runtime, Debian's podman with its CNI backend,
//! run inside a node's namespace so that the host ends of the veths land in the node.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    NetNs, check,
    cluster::{Cluster, cni_binary},
};

/// Where Debian's containernetworking-plugins are.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The plugin of one node, invoked directly.
pub struct Plugin {
    pub bin: PathBuf,
    /// The node's namespace: the plugin runs there, as a runtime on the node would.
    pub node_ns: String,
    /// The node daemon's control socket.
    pub socket: PathBuf,
    /// CNI_PATH: ipipd-cni and the reference plugins.
    pub cni_path: PathBuf,
}

/// What one invocation gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: i32,
    /// stdout as JSON (Null when empty).
    pub out: Value,
    pub stderr: String,
}

impl Outcome {
    /// The spec error's code, when the plugin failed.
    pub fn error_code(&self) -> Option<u64> {
        (self.code != 0).then(|| self.out["code"].as_u64().unwrap_or(0))
    }
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// The first IP of an ADD result.
    pub fn address(&self) -> Option<Ipv4Addr> {
        let a = self.out["ips"][0]["address"].as_str()?;
        a.split('/').next()?.parse().ok()
    }
    /// The host side's name in an ADD result.
    pub fn host_veth(&self) -> Option<String> {
        self.out["interfaces"][0]["name"].as_str().map(String::from)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} stdout {} stderr {}",
            self.code, self.out, self.stderr
        )
    }
}

/// A directory of plugins as a runtime's CNI_PATH: ipipd-cni and the reference ones.
pub fn plugin_dir(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("cni-bin");
    if bin.is_dir() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&bin)?;
    std::os::unix::fs::symlink(cni_binary()?, bin.join("ipipd-cni"))?;
    for p in ["host-local", "loopback"] {
        let src = Path::new(REFERENCE_PLUGINS).join(p);
        if !src.is_file() {
            bail!(
                "{} is missing: install containernetworking-plugins (cargo xtask setup)",
                src.display()
            );
        }
        std::os::unix::fs::symlink(&src, bin.join(p))?;
    }
    Ok(bin)
}

impl Plugin {
    pub fn new(c: &Cluster, node: &str) -> Result<Plugin> {
        Ok(Plugin {
            bin: cni_binary()?,
            node_ns: c.node(node).ns.name.clone(),
            socket: c.dir.join(node).join("state").join("ipipd.sock"),
            cni_path: plugin_dir(&c.dir)?,
        })
    }

    /// The network configuration a runtime would pass: ipipd-cni with the node's IPAM.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "pods",
            "type": "ipipd-cni",
            "socket": self.socket,
        })
    }

    /// One invocation: `command` with the attachment's environment (no CNI_NETNS when
    /// `netns` is None), `conf` on stdin, `extra` added to the environment.
    pub fn call(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> Outcome {
        let mut env: Vec<(String, String)> = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), container_id.into()),
            ("CNI_IFNAME".into(), ifname.into()),
            ("CNI_PATH".into(), self.cni_path.display().to_string()),
        ];
        if let Some(ns) = netns {
            env.push(("CNI_NETNS".into(), format!("/run/netns/{ns}")));
        }
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        self.raw(&env, conf.to_string().as_bytes())
    }

    /// An invocation with exactly this environment and stdin.
    pub fn raw(&self, env: &[(String, String)], stdin: &[u8]) -> Outcome {
        // Spawned from a thread inside the node's namespace: the plugin starts there, as it
        // would from a runtime on the node.
        let node = NetNs::existing(&self.node_ns);
        let out = node
            .enter(|| -> std::io::Result<std::process::Output> {
                let mut child = Command::new(&self.bin)
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                child.stdin.take().expect("piped").write_all(stdin)?;
                child.wait_with_output()
            })
            .expect("entering the node's namespace")
            .expect("running ipipd-cni");
        let text = String::from_utf8_lossy(&out.stdout);
        Outcome {
            code: out.status.code().unwrap_or(-1),
            out: if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| json!({"unparsable": e.to_string(), "text": text}))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Podman 4.3 with its CNI backend in one node's namespace: its own root, runroot, config,
/// network (`ipipd`, the plugin with the node's socket) and a busybox root filesystem per
/// container. Every container is removed on drop.
pub struct Podman {
    pub dir: PathBuf,
    pub node_ns: String,
    conf: PathBuf,
    rootfs: PathBuf,
}

/// The network's name in the conflist.
pub const NETWORK: &str = "ipipd";

impl Podman {
    /// Podman with its own conflist: ipipd-cni with the node's socket, in `cni_version`.
    pub fn new(c: &Cluster, node: &str, cni_version: &str) -> Result<Podman> {
        let dir = c.dir.join(format!("podman-{node}"));
        let netd = dir.join("net.d");
        std::fs::create_dir_all(&netd)?;
        let socket = c.dir.join(node).join("state").join("ipipd.sock");
        std::fs::write(
            netd.join("ipipd.conflist"),
            serde_json::to_vec_pretty(&json!({
                "cniVersion": cni_version,
                "name": NETWORK,
                "plugins": [{
                    "type": "ipipd-cni",
                    "socket": socket,
                    "log_file": dir.join("ipipd-cni.log"),
                }],
            }))?,
        )?;
        Self::with_cni_dirs(c, node, &plugin_dir(&c.dir)?, &netd)
    }

    /// Podman reading its plugins and network configurations where `ipipd install-cni` put
    /// them (as a kubelet's runtime reads /opt/cni/bin and /etc/cni/net.d).
    pub fn with_cni_dirs(c: &Cluster, node: &str, plugins: &Path, netd: &Path) -> Result<Podman> {
        if which("podman").is_none() {
            bail!(
                "podman is missing: install podman, runc, containernetworking-plugins (cargo xtask setup)"
            );
        }
        let dir = c.dir.join(format!("podman-{node}"));
        for d in ["tmp", "root", "runroot"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{plugins}\"]\n\
                 network_config_dir = \"{netd}\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{dir}/events.log\"\n\
                 tmp_dir = \"{dir}/tmp\"\n",
                plugins = plugins.display(),
                netd = netd.display(),
                dir = dir.display(),
            ),
        )?;
        // The root filesystem: busybox and its applets.
        let rootfs = dir.join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("busybox is missing: install busybox-static")?;
        std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
        for app in [
            "sh", "ip", "ping", "sleep", "true", "nc", "cat", "ls", "echo",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app))?;
        }
        for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
            std::fs::write(rootfs.join(f), "")?;
        }
        Ok(Podman {
            dir,
            node_ns: c.node(node).ns.name.clone(),
            conf,
            rootfs,
        })
    }

    /// `podman <args>` in the node's namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .env("CONTAINERS_CONF", &self.conf);
        cmd
    }

    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let out = check(&mut self.cmd(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `podman run -d` of a container that sleeps, on the ipipd network; its ID.
    pub fn run(&self, name: &str) -> Result<String> {
        self.run_with(name, &["-d"], &["/bin/sh", "-c", "sleep 3600"])
    }

    /// `podman run --rm` of a container that exits at once (ADD, then DEL).
    pub fn run_once(&self, name: &str) -> Result<()> {
        self.run_with(name, &["--rm"], &["/bin/true"])?;
        std::fs::remove_dir_all(self.dir.join(format!("rootfs-{name}")))?;
        Ok(())
    }

    /// `podman run -d` of `script` in a container that publishes `ports`
    /// (`HOST:CONTAINER`, a pod's hostPort: the chained portmap plugin's).
    pub fn run_publishing(&self, name: &str, ports: &str, script: &str) -> Result<String> {
        self.run_with(name, &["-d", "-p", ports], &["/bin/sh", "-c", script])
    }

    /// `podman run <flags>` of `cmd` in a container named `name` on the ipipd network, on a
    /// copy of the root filesystem (podman writes into it).
    fn run_with(&self, name: &str, flags: &[&str], cmd: &[&str]) -> Result<String> {
        let rootfs = self.dir.join(format!("rootfs-{name}"));
        check(Command::new("cp").arg("-a").arg(&self.rootfs).arg(&rootfs))?;
        let rootfs = rootfs.to_string_lossy();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend(["--name", name, "--network", NETWORK, "--rootfs", &rootfs]);
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// The container's address on the ipipd network.
    pub fn address(&self, name: &str) -> Result<Ipv4Addr> {
        let a = self.podman(&[
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
            name,
        ])?;
        a.parse().with_context(|| format!("{name}'s address {a:?}"))
    }

    /// The container's network namespace (podman's `/run/netns/netns-…`), not ours to remove.
    pub fn netns(&self, name: &str) -> Result<NetNs> {
        let key = self.podman(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            name,
        ])?;
        let n = Path::new(&key)
            .file_name()
            .with_context(|| format!("{name}'s sandbox key {key:?}"))?;
        Ok(NetNs::existing(&n.to_string_lossy()))
    }

    pub fn exec(&self, name: &str, script: &str) -> Result<String> {
        self.podman(&["exec", name, "/bin/sh", "-c", script])
    }

    /// `podman rm -f -t0` (CNI DEL).
    pub fn rm(&self, name: &str) -> Result<()> {
        self.podman(&["rm", "-f", "-t", "0", name])?;
        let _ = std::fs::remove_dir_all(self.dir.join(format!("rootfs-{name}")));
        Ok(())
    }

    /// The plugin's log (its `log_file`).
    pub fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ipipd-cni.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Every container goes (DEL for each), within a bound.
        let deadline = Instant::now() + Duration::from_secs(60);
        let _ = self.cmd(&["rm", "-a", "-f", "-t", "0"]).output();
        while Instant::now() < deadline {
            match self.cmd(&["ps", "-aq"]).output() {
                Ok(o) if o.stdout.is_empty() => break,
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// What a pod churn measured (see [`churn`]).
#[derive(Debug, Clone, Default)]
pub struct Churn {
    /// Milliseconds of each ADD and each DEL, plugin process start to result.
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    /// Pods whose ADD started more than one period after its slot (the workers were busy).
    pub late: usize,
    /// How long the whole churn took.
    pub took: Duration,
}

/// Pod churn through the plugin, as a busy node's runtime makes it: `rate` pods per second
/// for `seconds`, each at its slot (on one of `workers` threads) created — its namespace, then
/// ADD — and deleted — DEL, then its namespace. Stops at the first failure, naming it.
pub fn churn(plugin: &Plugin, rate: u32, seconds: u32, workers: usize) -> Result<Churn> {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    let total = (rate * seconds) as usize;
    let period = Duration::from_secs(1) / rate;
    let conf = plugin.conf("1.0.0");
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Churn::default());
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok(());
                        }
                        let slot = start + period * i as u32;
                        let now = Instant::now();
                        if now < slot {
                            std::thread::sleep(slot - now);
                        }
                        let late = Instant::now() > slot + period;
                        let ns = NetNs::sandbox("churn")?;
                        let id = format!("churn{i}");
                        let t = Instant::now();
                        let r = plugin.call("ADD", &id, Some(&ns.name), "eth0", &conf, &[]);
                        let add = t.elapsed();
                        if !r.ok() {
                            bail!("ADD {id}: {r}");
                        }
                        let t = Instant::now();
                        let r = plugin.call("DEL", &id, Some(&ns.name), "eth0", &conf, &[]);
                        let del = t.elapsed();
                        if !r.ok() {
                            bail!("DEL {id}: {r}");
                        }
                        drop(ns);
                        let mut o = out.lock().unwrap();
                        o.add_ms.push(add.as_secs_f64() * 1e3);
                        o.del_ms.push(del.as_secs_f64() * 1e3);
                        o.late += usize::from(late);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a churn worker panicked"))??;
        }
        Ok(())
    })?;
    let mut c = out.into_inner().unwrap();
    c.took = start.elapsed();
    Ok(c)
}
