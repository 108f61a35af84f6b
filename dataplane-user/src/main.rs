//! ipipd: an IP-in-IP (protocol 4) pod-network data plane in eBPF.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use dataplane_user::loader;

#[derive(Parser)]
#[command(
    name = "ipipd",
    version,
    about = "IP-in-IP pod networking in eBPF: the Calico IPIP route table, without tunl0"
)]
struct Cli {
    /// Log level (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every program of the embedded object into the running kernel (the verifier runs),
    /// report what it accepted, and unload. Attaches nothing; changes nothing.
    Probe {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Copy, Clone, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipipd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Probe { output } => probe(output),
    }
}

fn probe(output: Output) -> Result<()> {
    let mut ebpf = loader::open_object()?;
    let progs = loader::load_all(&mut ebpf)?;
    match output {
        Output::Table => {
            println!(
                "{:<12} {:>6} {:>14} {:>12}",
                "PROGRAM", "ID", "VERIFIED_INSNS", "XLATED_BYTES"
            );
            for p in &progs {
                println!(
                    "{:<12} {:>6} {:>14} {:>12}",
                    p.name,
                    p.id,
                    p.verified_insns.map_or("-".into(), |v| v.to_string()),
                    p.xlated_bytes.map_or("-".into(), |v| v.to_string()),
                );
            }
        }
        Output::Json => {
            let items: Vec<String> = progs
                .iter()
                .map(|p| {
                    format!(
                        "{{\"name\":\"{}\",\"id\":{},\"verified_insns\":{},\"xlated_bytes\":{}}}",
                        p.name,
                        p.id,
                        p.verified_insns.map_or("null".into(), |v| v.to_string()),
                        p.xlated_bytes.map_or("null".into(), |v| v.to_string()),
                    )
                })
                .collect();
            println!("[{}]", items.join(","));
        }
    }
    Ok(())
}
