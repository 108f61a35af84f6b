//! A cluster of network namespaces shaped like the user's seed: an underlay bridge, node
//! namespaces on it by their uplink `eth0`, pods as namespaces on `cali…` veths with a /32 and a
//! default route via 169.254.1.1 on-link (as Calico sets them up), and ipipd daemons on the nodes.
//! Everything is removed on drop, daemons first.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{NetNs, check};

/// A pod to create on a node.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub address: Ipv4Addr,
    /// The host-side veth (`cali…`, at most 15 characters).
    pub interface: String,
}

/// A node to create.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub block: String,
    pub pods: Vec<PodSpec>,
    /// The uplink's MTU (the underlay's).
    pub mtu: u32,
    /// Which underlay bridge (`br<N>` in the underlay namespace) the uplink joins.
    pub bridge: usize,
    /// Shell lines run in the node's namespace once its uplink is up (extra routes, say).
    pub setup: Vec<String>,
    /// Whether the other nodes list it as a peer (false for a plain host, such as an attacker).
    pub peer: bool,
}

impl NodeSpec {
    /// A plain host on the underlay: no pods, no ipipd, not a peer.
    pub fn host(name: &str, address: Ipv4Addr, prefix_len: u8) -> Self {
        NodeSpec {
            name: name.into(),
            address,
            prefix_len,
            block: String::new(),
            pods: Vec::new(),
            mtu: 1500,
            bridge: 0,
            setup: Vec::new(),
            peer: false,
        }
    }
}

pub struct Pod {
    pub ns: NetNs,
    pub spec: PodSpec,
}

pub struct Node {
    pub ns: NetNs,
    pub spec: NodeSpec,
    pub pods: Vec<Pod>,
    pub daemon: Option<Daemon>,
}

/// A running `ipipd run` inside a node's namespace.
pub struct Daemon {
    child: Child,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// The node's log: every run of the daemon appends to it.
    pub log: PathBuf,
    /// Where this run's part of the log starts.
    log_from: usize,
}

pub struct Cluster {
    /// Where configs, state and logs go; removed on drop.
    pub dir: PathBuf,
    /// A bpffs for the pins of every daemon, outside /sys (which `ip netns exec` remounts).
    pub bpffs: PathBuf,
    pub nodes: Vec<Node>,
    pub underlay: NetNs,
}

/// The seed's two nodes: master 172.31.242.157 owning 192.168.179.0/26 and node
/// 172.31.242.156 owning 192.168.83.128/26, each with pods.
pub fn seed_nodes(pods_per_node: usize) -> Vec<NodeSpec> {
    let pods = |base: [u8; 3], first: u8, tag: &str| {
        (0..pods_per_node)
            .map(|i| PodSpec {
                address: Ipv4Addr::new(base[0], base[1], base[2], first + i as u8),
                interface: format!("cali{tag}{:07x}", i),
            })
            .collect::<Vec<_>>()
    };
    vec![
        NodeSpec {
            name: "master".into(),
            address: Ipv4Addr::new(172, 31, 242, 157),
            prefix_len: 20,
            block: "192.168.179.0/26".into(),
            pods: pods([192, 168, 179], 2, "m"),
            mtu: 1500,
            bridge: 0,
            setup: Vec::new(),
            peer: true,
        },
        NodeSpec {
            name: "node".into(),
            address: Ipv4Addr::new(172, 31, 242, 156),
            prefix_len: 20,
            block: "192.168.83.128/26".into(),
            pods: pods([192, 168, 83], 129, "n"),
            mtu: 1500,
            bridge: 0,
            setup: Vec::new(),
            peer: true,
        },
    ]
}

/// The path of the ipipd binary built next to the running test or tool.
pub fn ipipd_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("IPIPD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join("ipipd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no ipipd binary next to {} (build it: cargo build --release -p dataplane-user)",
        exe.display()
    )
}

/// The `ipipd-cni` plugin: `IPIPD_CNI_BIN` when set (the bench runs the image's static build,
/// which is what a node's runtime starts), else the one built next to ipipd.
pub fn cni_binary() -> Result<PathBuf> {
    let (p, build) = match std::env::var_os("IPIPD_CNI_BIN") {
        Some(p) => (PathBuf::from(p), "IPIPD_CNI_BIN names it"),
        None => (
            ipipd_binary()?.with_file_name("ipipd-cni"),
            "build it: cargo build --release -p dataplane-user",
        ),
    };
    if !p.is_file() {
        bail!("no {} ({build})", p.display());
    }
    Ok(p)
}

impl Cluster {
    /// Builds the underlay and the nodes with their pods; no daemon yet.
    pub fn new(tag: &str, specs: &[NodeSpec]) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "ipipd-{tag}-{}-{}",
            std::process::id(),
            crate::seq()
        ));
        std::fs::create_dir_all(&dir)?;
        let bpffs = dir.join("bpffs");
        std::fs::create_dir_all(&bpffs)?;
        check(
            Command::new("mount")
                .args(["-t", "bpf", "bpffs"])
                .arg(&bpffs),
        )?;
        let underlay = NetNs::new(&format!("{tag}-u"))?;
        let mut cluster = Cluster {
            dir,
            bpffs,
            nodes: Vec::new(),
            underlay,
        };
        let bridges = specs.iter().map(|s| s.bridge).max().unwrap_or(0);
        for b in 0..=bridges {
            cluster.underlay.sh(&format!(
                "ip link add br{b} type bridge; ip link set br{b} up"
            ))?;
        }
        for (i, spec) in specs.iter().enumerate() {
            let ns = NetNs::new(&format!("{tag}-{}", spec.name))?;
            let up = format!("up{i}");
            cluster.underlay.sh(&format!(
                "ip link add {up} mtu {mtu} type veth peer name eth0 netns {ns}; \
                 ip link set {up} master br{b} up",
                mtu = spec.mtu,
                ns = ns.name,
                b = spec.bridge
            ))?;
            ns.sh(&format!(
                "ip link set eth0 mtu {mtu} up; ip addr add {a}/{l} dev eth0; \
                 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
                mtu = spec.mtu,
                a = spec.address,
                l = spec.prefix_len
            ))?;
            if !spec.setup.is_empty() {
                ns.sh(&spec.setup.join("\n"))?;
            }
            let mut node = Node {
                ns,
                spec: spec.clone(),
                pods: Vec::new(),
                daemon: None,
            };
            for p in &spec.pods {
                node.add_pod(&format!("{tag}-p"), p.clone())?;
            }
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.daemon
                    .as_ref()
                    .map(|d| format!("--- {} ---\n{}", n.spec.name, d.full_log()))
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The config of a node: its block, every other node as a peer, its pods as endpoints.
    pub fn config_for(&self, name: &str, extra_node_keys: &str) -> String {
        let me = self.node(name);
        let mut s = format!(
            "[node]\nname = \"{n}-{id}\"\nuplink = \"eth0\"\naddress = \"{a}\"\npin_dir = \"{pins}\"\n{extra_node_keys}\n\n[[block]]\ncidr = \"{b}\"\n",
            n = me.spec.name,
            id = self.dir.file_name().unwrap().to_string_lossy(),
            a = me.spec.address,
            pins = self.bpffs.join(&me.spec.name).display(),
            b = me.spec.block,
        );
        for other in self
            .nodes
            .iter()
            .filter(|n| n.spec.name != name && n.spec.peer)
        {
            s += &format!(
                "\n[[peer]]\naddress = \"{}\"\nblocks = [\"{}\"]\n",
                other.spec.address, other.spec.block
            );
        }
        for p in &me.spec.pods {
            s += &format!(
                "\n[[endpoint]]\naddress = \"{}\"\ninterface = \"{}\"\n",
                p.address, p.interface
            );
        }
        s
    }

    /// Writes the node's config (or `config`) and starts ipipd on it; returns when it is ready.
    pub fn start_daemon(&mut self, name: &str, config: Option<String>) -> Result<()> {
        self.start_daemon_within(name, config, Duration::from_secs(60))
    }

    /// [`Cluster::start_daemon`], failing when the daemon is not ready within `deadline` (a
    /// large node takes longer: the kernel spends ~10 ms on each TCX attach).
    pub fn start_daemon_within(
        &mut self,
        name: &str,
        config: Option<String>,
        deadline: Duration,
    ) -> Result<()> {
        self.start_daemon_binary(name, config, deadline, &ipipd_binary()?)
    }

    /// ipipd on node `name` from `config` shared by every node: `NODE_NAME` is the node's
    /// name, and its default pin directory (`/sys/fs/bpf/ipipd/<name>`) lands in the cluster's
    /// bpffs (`<bpffs>/ipipd/<name>`, which [`Cluster::ipipd_json`] reads).
    pub fn start_daemon_shared(&mut self, name: &str, config: &str) -> Result<()> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("ipipd.toml");
        std::fs::write(&cfg, config)?;
        let state_dir = dir.join("state");
        let bpffs = self.bpffs.clone();
        let pin_dir = bpffs.join("ipipd").join(name);
        let node = self.node_mut(name);
        let mut d = Daemon::spawn_as(
            &ipipd_binary()?,
            &node.ns,
            &cfg,
            &state_dir,
            &pin_dir,
            None,
            Some((name, &bpffs)),
        )?;
        d.wait_ready()?;
        node.daemon = Some(d);
        Ok(())
    }

    /// [`Cluster::start_daemon_within`] with another ipipd binary (an older release).
    pub fn start_daemon_binary(
        &mut self,
        name: &str,
        config: Option<String>,
        deadline: Duration,
        bin: &Path,
    ) -> Result<()> {
        let text = config.unwrap_or_else(|| self.config_for(name, ""));
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("ipipd.toml");
        std::fs::write(&cfg, text)?;
        let state_dir = dir.join("state");
        let pin_dir = self.bpffs.join(name);
        let node = self.node_mut(name);
        let mut d = Daemon::spawn_binary(bin, &node.ns, &cfg, &state_dir, &pin_dir, None)?;
        d.wait_ready_within(deadline)?;
        node.daemon = Some(d);
        Ok(())
    }
}

impl Cluster {
    /// `ipipd <args> -o json` on a node, with its pin and state directories: the output,
    /// parsed.
    pub fn ipipd_json(&self, node: &str, args: &[&str]) -> Result<serde_json::Value> {
        // The running daemon's pin directory, else the harness's default one.
        let pin = self
            .node(node)
            .daemon
            .as_ref()
            .map_or_else(|| self.bpffs.join(node), |d| d.pin_dir.clone())
            .to_string_lossy()
            .into_owned();
        let state = self.dir.join(node).join("state");
        let state = state.to_string_lossy();
        let mut all = args.to_vec();
        all.extend(["-o", "json", "--pin-dir", &pin, "--state-dir", &state]);
        let out = self.node(node).ipipd(&all)?;
        serde_json::from_str(&out).with_context(|| format!("ipipd {}: {out}", args.join(" ")))
    }

    /// SIGTERM to the node's daemon; its exit status.
    pub fn stop_daemon(&mut self, name: &str) -> Result<std::process::ExitStatus> {
        let d = self
            .node_mut(name)
            .daemon
            .take()
            .with_context(|| format!("no daemon on {name}"))?;
        d.stop()
    }

    /// SIGKILL to the node's daemon.
    pub fn kill_daemon(&mut self, name: &str) -> Result<()> {
        let d = self
            .node_mut(name)
            .daemon
            .take()
            .with_context(|| format!("no daemon on {name}"))?;
        d.kill9()
    }

    /// The config file the node's daemon runs with (what `--config` of the CLI names).
    pub fn config_path(&self, name: &str) -> String {
        self.dir
            .join(name)
            .join("ipipd.toml")
            .to_string_lossy()
            .into_owned()
    }

    /// Starts the node's daemon again on the config it last ran with.
    pub fn restart_daemon(&mut self, name: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.config_path(name))?;
        self.start_daemon(name, Some(text))
    }

    /// `ipipd teardown` for the node (its daemon stopped).
    pub fn teardown(&self, name: &str) -> Result<String> {
        let dir = self.dir.join(name);
        let (cfg, state) = (dir.join("ipipd.toml"), dir.join("state"));
        self.node(name).ipipd(&[
            "teardown",
            "--config",
            &cfg.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
        ])
    }
}

impl Node {
    /// Its daemon's log of this run (empty without a daemon).
    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// The kernel's route table for this node's pods without ipipd, as Calico sets it up: a /32
    /// per pod to its veth with proxy ARP on it (169.254.0.0/16 on eth0 is what lets proxy ARP
    /// answer the pods' 169.254.1.1 gateway), a blackhole for the node's block, forwarding on.
    /// `remote` says how the peer's block is reached.
    fn kernel_routes(&self, remote: &str) -> Result<()> {
        self.kernel_routes_by(remote, "")
    }

    /// [`Node::kernel_routes`], the blackhole with `proto` (`" proto bird"`, say).
    fn kernel_routes_by(&self, remote: &str, proto: &str) -> Result<()> {
        let mut script = vec![
            "sysctl -qw net.ipv4.ip_forward=1".to_string(),
            "ip route add 169.254.0.0/16 dev eth0 metric 1002".into(),
            remote.to_string(),
            format!("ip route add blackhole {}{proto}", self.spec.block),
        ];
        for p in &self.spec.pods {
            script.push(format!(
                "ip route add {}/32 dev {} scope link",
                p.address, p.interface
            ));
            script.push(format!(
                "sysctl -qw net.ipv4.conf.{i}.proxy_arp=1 net.ipv4.neigh.{i}.proxy_delay=0",
                i = p.interface
            ));
        }
        self.ns.sh(&script.join("\n"))?;
        Ok(())
    }

    /// Calico without a tunnel: the peer's block via the peer on the underlay.
    pub fn kernel_plain_routing(&self, peer: &Node) -> Result<()> {
        self.kernel_routes(&format!(
            "ip route add {} via {} dev eth0",
            peer.spec.block, peer.spec.address
        ))
    }

    /// Calico in classic IPIP mode, the kernel's own tunnel (needs ipip.ko, which puts a DOWN
    /// fallback tunl0 in every namespace): tunl0 up at MTU - 20 with the block's first address,
    /// and the peer's block via the peer dev tunl0 onlink, as in the seed.
    pub fn kernel_tunl0(&self, peer: &Node) -> Result<()> {
        let first = self.spec.block.split('/').next().unwrap_or_default();
        self.ns.sh(&format!(
            "ip link set tunl0 mtu {} up\nip addr add {first}/32 dev tunl0",
            self.spec.mtu - 20
        ))?;
        self.kernel_routes(&format!(
            "ip route add {} via {} dev tunl0 onlink",
            peer.spec.block, peer.spec.address
        ))
    }

    /// A node of a running Calico cluster in IPIP mode, as calico-node leaves it: tunl0 (the
    /// ipip module's) up at MTU - 20 with `tunnel` (its `ipv4IPIPTunnelAddr`), BIRD's routes
    /// (`proto bird`: the peer's block via the peer dev tunl0 onlink, the node's block a
    /// blackhole), Felix's and calico-cni's `/32` per pod with proxy ARP.
    pub fn calico_kernel_path(&self, peer: &Node, tunnel: Ipv4Addr) -> Result<()> {
        self.ns.sh(&format!(
            "ip link set tunl0 mtu {} up\nip addr add {tunnel}/32 dev tunl0",
            self.spec.mtu - 20
        ))?;
        self.kernel_routes_by(
            &format!(
                "ip route add {} via {} dev tunl0 proto bird onlink",
                peer.spec.block, peer.spec.address
            ),
            " proto bird",
        )
    }

    /// Creates a pod namespace joined to this node by a `cali…` veth, as Calico's CNI does.
    pub fn add_pod(&mut self, tag: &str, spec: PodSpec) -> Result<()> {
        let ns = NetNs::new(tag)?;
        self.ns.sh(&format!(
            "ip link add {ifc} type veth peer name eth0 netns {pod}; ip link set {ifc} up",
            ifc = spec.interface,
            pod = ns.name
        ))?;
        ns.sh(&format!(
            "ip link set eth0 mtu {mtu} up; ip addr add {a}/32 dev eth0; \
             ip route add 169.254.1.1 dev eth0 scope link; ip route add default via 169.254.1.1 dev eth0 onlink",
            mtu = self.spec.mtu,
            a = spec.address
        ))?;
        self.pods.push(Pod { ns, spec });
        Ok(())
    }

    pub fn pod(&self, address: Ipv4Addr) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.address == address)
            .unwrap_or_else(|| panic!("no pod {address}"))
    }

    /// `ipipd <args>` in this node's namespace, for the CLI.
    pub fn ipipd(&self, args: &[&str]) -> Result<String> {
        let bin = ipipd_binary()?;
        let out = check(
            Command::new("ip")
                .args(["netns", "exec", &self.ns.name])
                .arg(&bin)
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Daemon {
    pub fn start(ns: &NetNs, config: &Path, state_dir: &Path, pin_dir: &Path) -> Result<Daemon> {
        let mut d = Daemon::spawn(ns, config, state_dir, pin_dir)?;
        d.wait_ready()?;
        Ok(d)
    }

    /// Starts `ipipd run` without waiting for it to be ready.
    pub fn spawn(ns: &NetNs, config: &Path, state_dir: &Path, pin_dir: &Path) -> Result<Daemon> {
        Self::spawn_limited(ns, config, state_dir, pin_dir, None)
    }

    /// [`Daemon::spawn`], with the soft limit of open files set to `nofile` when given.
    pub fn spawn_limited(
        ns: &NetNs,
        config: &Path,
        state_dir: &Path,
        pin_dir: &Path,
        nofile: Option<u64>,
    ) -> Result<Daemon> {
        Self::spawn_binary(&ipipd_binary()?, ns, config, state_dir, pin_dir, nofile)
    }

    /// [`Daemon::spawn_limited`] with another ipipd binary (an older release).
    pub fn spawn_binary(
        bin: &Path,
        ns: &NetNs,
        config: &Path,
        state_dir: &Path,
        pin_dir: &Path,
        nofile: Option<u64>,
    ) -> Result<Daemon> {
        Self::spawn_as(bin, ns, config, state_dir, pin_dir, nofile, None)
    }

    /// [`Daemon::spawn_binary`] as a DaemonSet's pod runs it, when `as_node` names the node:
    /// `NODE_NAME` set to it, and the host's `/sys/fs/bpf` the cluster's bpffs `bpffs` (bound
    /// over it in the daemon's own mount namespace), so that a config without a name or a
    /// pin_dir serves every node.
    pub fn spawn_as(
        bin: &Path,
        ns: &NetNs,
        config: &Path,
        state_dir: &Path,
        pin_dir: &Path,
        nofile: Option<u64>,
        as_node: Option<(&str, &Path)>,
    ) -> Result<Daemon> {
        use std::os::unix::process::CommandExt as _;
        let log = state_dir.with_extension("log");
        let logf = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        let log_from = logf.metadata()?.len() as usize;
        let mut cmd = Command::new("ip");
        if let Some(n) = nofile {
            // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut r = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    r.rlim_cur = n.min(r.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["netns", "exec", &ns.name]);
        if let Some((node, bpffs)) = as_node {
            cmd.env("NODE_NAME", node).args([
                "sh",
                "-c",
                &format!(
                    "mount --bind {} /sys/fs/bpf && exec \"$0\" \"$@\"",
                    bpffs.display()
                ),
            ]);
        }
        let child = cmd
            .arg(bin)
            .args(["run", "--log-level", "debug", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "info,dataplane_user=debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("starting ipipd")?;
        let d = Daemon {
            child,
            config: config.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            log,
            log_from,
        };
        Ok(d)
    }

    /// Waits (bounded) until the daemon logs that it is ready, or fails with its log.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.wait_ready_within(Duration::from_secs(60))
    }

    /// Waits until the daemon logs that it is ready, failing after `within`.
    pub fn wait_ready_within(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log_text();
            if log.contains("ready; control socket") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("ipipd exited ({status}) before it was ready:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("ipipd was not ready within {within:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the daemon (the `ip netns exec` wrapper execs into ipipd, same pid).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// SIGKILL: what a crash leaves behind stays.
    pub fn kill9(mut self) -> Result<()> {
        self.signal(libc::SIGKILL);
        self.wait_exit().map(|_| ())
    }

    fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("ipipd did not exit within 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This run's log.
    pub fn log_text(&self) -> String {
        let all = self.full_log();
        all.get(self.log_from..).unwrap_or_default().to_string()
    }

    /// The log of every run of the node's daemon so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's open file descriptors.
    pub fn open_fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    /// The daemon's open file descriptors by kind (`socket`, `anon_inode:bpf-map`, a path…),
    /// for a failure message.
    pub fn fd_kinds(&self) -> Result<BTreeMap<String, usize>> {
        let mut kinds = BTreeMap::new();
        for e in std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            // socket:[123] → socket; anon_inode:[bpf-map] stays.
            let kind = match t.split_once(":[") {
                Some((k, rest)) if rest.trim_end_matches(']').parse::<u64>().is_ok() => {
                    k.to_string()
                }
                _ => t.into_owned(),
            };
            *kinds.entry(kind).or_insert(0) += 1;
        }
        Ok(kinds)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.daemon.take();
        }
        self.nodes.clear();
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
