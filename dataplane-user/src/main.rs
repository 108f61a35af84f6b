//! ipipd: an IP-in-IP (protocol 4) pod-network data plane in eBPF.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dataplane_user::{
    config::{Config, EndpointCfg, Ipv4Net, Peer, fmt_mac, mode_name, parse_mac},
    daemon, inspect, loader,
    netlink::Netlink,
    state::Change,
};

#[derive(Parser)]
#[command(
    name = "ipipd",
    version,
    about = "IP-in-IP pod networking in eBPF: the Calico IPIP route table, without tunl0"
)]
struct Cli {
    /// Log level (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon: load, attach, program the maps, and keep them matching the config
    /// and the runtime changes until SIGTERM/SIGINT (SIGHUP re-reads the config).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Where runtime changes, the control socket and netlink filter records live
        /// (default /var/lib/ipipd/<node.name>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Where /metrics (OpenMetrics text), /healthz and /readyz are served; `off` for none.
        #[arg(long, default_value = "127.0.0.1:9097")]
        metrics_addr: String,
    },
    /// Validate a config and print what `run` would do. Needs no privileges.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Add or delete a local pod on the running node.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Add or delete a peer node on the running node.
    #[command(subcommand)]
    Peer(PeerCmd),
    /// The running node's settings and attachments.
    Status(Read),
    /// The running node's routes map (what replaces the route table).
    Routes(Read),
    /// The running node's endpoints map.
    Endpoints(Read),
    /// The running node's counters, per interface, hook and reason.
    Stats(Read),
    /// Stream the running node's packet decisions, one line each (the programs emit them only
    /// while a monitor is connected).
    Monitor {
        #[command(flatten)]
        node: Node,
        /// Drops only.
        #[arg(long)]
        drops_only: bool,
        /// Only packets from or to this address (outer or inner header).
        #[arg(long)]
        endpoint: Option<Ipv4Addr>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Stop after this many lines.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Load every program into the running kernel (the verifier runs), report, unload.
    Probe {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Which node, for the commands that talk to a running daemon.
#[derive(Args, Clone)]
struct Node {
    /// The node's config (its name and pin_dir select the node).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The node's state directory (holds the control socket).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// The node's pin directory (holds the maps).
    #[arg(long, global = true)]
    pin_dir: Option<PathBuf>,
}

#[derive(Args)]
struct Read {
    #[command(flatten)]
    node: Node,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Add (or replace) a local pod: its address and its host-side veth.
    Add {
        #[arg(long)]
        address: Ipv4Addr,
        #[arg(long)]
        interface: String,
        /// The pod side's MAC (found through the veth when absent).
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        node: Node,
    },
    /// Delete a local pod by its address.
    Del {
        #[arg(long)]
        address: Ipv4Addr,
        #[command(flatten)]
        node: Node,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Add (or replace) a peer node and the blocks it owns.
    Add {
        #[arg(long)]
        address: Ipv4Addr,
        /// A block the peer owns (repeatable).
        #[arg(long = "block")]
        blocks: Vec<Ipv4Net>,
        #[command(flatten)]
        node: Node,
    },
    /// Delete a peer node by its address.
    Del {
        #[arg(long)]
        address: Ipv4Addr,
        #[command(flatten)]
        node: Node,
    },
}

#[derive(Copy, Clone, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

impl Node {
    fn config(&self) -> Result<Option<Config>> {
        self.config.as_ref().map(|p| Config::load(p)).transpose()
    }
    fn state_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        match self.config()? {
            Some(c) => Ok(daemon::default_state_dir(&c.node.name)),
            None => Err(anyhow!("name the node: --config FILE or --state-dir DIR")),
        }
    }
    fn pin_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.pin_dir {
            return Ok(d.clone());
        }
        match self.config()? {
            Some(c) => Ok(c.node.pin_dir),
            None => Err(anyhow!("name the node: --config FILE or --pin-dir DIR")),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .init();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipipd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print<T: serde::Serialize>(output: Output, value: &T, table: impl FnOnce(&T)) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => table(value),
    }
    Ok(())
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run {
            config,
            state_dir,
            metrics_addr,
        } => {
            let metrics =
                match metrics_addr.as_str() {
                    "off" => None,
                    a => Some(a.parse::<std::net::SocketAddr>().map_err(|e| {
                        anyhow!("--metrics-addr {a:?}: {e} (an address:port, or off)")
                    })?),
                };
            let cfg = Config::load(&config)?;
            let state_dir = state_dir.unwrap_or_else(|| daemon::default_state_dir(&cfg.node.name));
            daemon::Daemon::start(&config, &state_dir, metrics)?.run()
        }
        Command::Monitor {
            node,
            drops_only,
            endpoint,
            output,
            count,
            seconds,
        } => dataplane_user::monitor::run(
            &node.state_dir()?,
            &node.pin_dir()?,
            &dataplane_user::monitor::Options {
                drops_only,
                endpoint,
                json: matches!(output, Output::Json),
                count,
                duration: seconds.map(std::time::Duration::from_secs),
            },
        ),
        Command::Check { config } => check(&config),
        Command::Endpoint(EndpointCmd::Add {
            address,
            interface,
            mac,
            node,
        }) => {
            let mac = mac
                .map(|m| parse_mac(&m).map_err(|e| anyhow!("--mac: {e}")))
                .transpose()?;
            daemon::request(
                &node.state_dir()?,
                &Change::EndpointAdd(EndpointCfg {
                    address,
                    interface,
                    mac,
                }),
            )
        }
        Command::Endpoint(EndpointCmd::Del { address, node }) => {
            daemon::request(&node.state_dir()?, &Change::EndpointDel { address })
        }
        Command::Peer(PeerCmd::Add {
            address,
            blocks,
            node,
        }) => daemon::request(
            &node.state_dir()?,
            &Change::PeerAdd(Peer { address, blocks }),
        ),
        Command::Peer(PeerCmd::Del { address, node }) => {
            daemon::request(&node.state_dir()?, &Change::PeerDel { address })
        }
        Command::Status(r) => {
            let s = inspect::status(&r.node.pin_dir()?)?;
            print(r.output, &s, |s| {
                println!("node        {}", s.node_ip);
                println!(
                    "uplink      {} #{} (mtu {})",
                    s.uplink, s.uplink_ifindex, s.mtu
                );
                println!(
                    "tunnel      {} #{} (mtu {})",
                    s.tunnel, s.tunnel_ifindex, s.tunnel_mtu
                );
                println!("mode        {}", s.mode);
                println!("routes      {}", s.routes);
                println!("endpoints   {}", s.endpoints);
                println!("attached    {}", s.attachments.join(" "));
            })
        }
        Command::Routes(r) => {
            let rows = inspect::routes(&r.node.pin_dir()?)?;
            print(r.output, &rows, |rows| {
                println!("{:<20} {:<22} {:<12} TARGET", "PREFIX", "KIND", "FLAGS");
                for row in rows {
                    let target = match (row.ifindex, row.node) {
                        (Some(i), _) => format!("ifindex {i}"),
                        (_, Some(n)) => format!("via {n}"),
                        _ => String::new(),
                    };
                    println!(
                        "{:<20} {:<22} {:<12} {target}",
                        row.prefix,
                        row.kind,
                        row.flags.join(",")
                    );
                }
            })
        }
        Command::Endpoints(r) => {
            let rows = inspect::endpoints(&r.node.pin_dir()?)?;
            print(r.output, &rows, |rows| {
                println!(
                    "{:<8} {:<16} {:<18} HOST_MAC",
                    "IFINDEX", "ADDRESS", "POD_MAC"
                );
                for e in rows {
                    println!(
                        "{:<8} {:<16} {:<18} {}",
                        e.ifindex, e.address, e.pod_mac, e.host_mac
                    );
                }
            })
        }
        Command::Stats(r) => {
            let rows = inspect::stats(&r.node.pin_dir()?)?;
            print(r.output, &rows, |rows| {
                println!(
                    "{:<16} {:<12} {:<26} {:>12} {:>14}",
                    "INTERFACE", "HOOK", "REASON", "PACKETS", "BYTES"
                );
                for s in rows {
                    println!(
                        "{:<16} {:<12} {:<26} {:>12} {:>14}",
                        s.interface, s.hook, s.reason, s.packets, s.bytes
                    );
                }
            })
        }
        Command::Probe { output } => probe(output),
    }
}

fn check(path: &std::path::Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let mut nl = Netlink::new()?;
    let mtu = cfg.check_kernel(&mut nl)?;
    let n = &cfg.node;
    println!("config {} is valid.", path.display());
    println!(
        "node {} ({}) on uplink {}: mtu {mtu}, tunnel mtu {}, mode {}, xdp {:?}",
        n.name,
        n.address,
        n.uplink,
        mtu - 20,
        mode_name(n.mode),
        n.xdp
    );
    println!(
        "pins in {}, state in {}",
        n.pin_dir.display(),
        daemon::default_state_dir(&n.name).display()
    );
    println!(
        "run would attach from_uplink (tc ingress) to {}, create the tunnel device {} (mtu {}) \
         with to_tunnel on its egress, and program:",
        n.uplink,
        n.tunnel,
        mtu - 20
    );
    for b in &cfg.blocks {
        println!("  {b:<20} own block: unused addresses dropped      (kernel: blackhole {b})");
    }
    for p in &cfg.peers {
        println!(
            "  {:<20} peer node {} (kernel slow path: {}/32 dev {} src {})",
            format!("{}/32", p.address),
            p.address,
            p.address,
            n.tunnel,
            n.address
        );
        for b in &p.blocks {
            println!(
                "  {b:<20} remote block via {} (kernel slow path: {b} dev {} src {})",
                p.address, n.tunnel, n.address
            );
        }
    }
    for e in &cfg.endpoints {
        let present = nl.link_by_name(&e.interface)?.is_some();
        println!(
            "  {:<20} pod on {}{}{}",
            format!("{}/32", e.address),
            e.interface,
            e.mac
                .map(|m| format!(" mac {}", fmt_mac(&m)))
                .unwrap_or_default(),
            if present {
                ""
            } else {
                " (interface not there yet: attached when it appears)"
            }
        );
    }
    Ok(())
}

fn probe(output: Output) -> Result<()> {
    let mut ebpf = loader::open_object()?;
    let progs = loader::load_all(&mut ebpf)?;
    #[derive(serde::Serialize)]
    struct Row {
        name: &'static str,
        id: u32,
        verified_insns: Option<u32>,
        xlated_bytes: Option<u32>,
    }
    let rows: Vec<Row> = progs
        .iter()
        .map(|p| Row {
            name: p.name,
            id: p.id,
            verified_insns: p.verified_insns,
            xlated_bytes: p.xlated_bytes,
        })
        .collect();
    print(output, &rows, |rows| {
        println!(
            "{:<12} {:>6} {:>14} {:>12}",
            "PROGRAM", "ID", "VERIFIED_INSNS", "XLATED_BYTES"
        );
        for p in rows {
            let o = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
            println!(
                "{:<12} {:>6} {:>14} {:>12}",
                p.name,
                p.id,
                o(p.verified_insns),
                o(p.xlated_bytes)
            );
        }
    })
}
