//! ipipd: an IP-in-IP (protocol 4) pod-network data plane in eBPF.

use clap::Parser as _;

mod cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .init();
    // Two workers: the data plane's owner and the HTTP and control connections never wait on
    // each other; the blocking map reads of a scrape go to the blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("ipipd")
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(cli::run(cli.command)),
        Err(e) => Err(anyhow::anyhow!("starting the runtime: {e}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipipd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
