//! `ipipd-cni`: the CNI plugin (`"type": "ipipd-cni"`) a container runtime runs for every pod
//! sandbox. Parameters in the environment, the network configuration on stdin, the result or
//! a spec error object on stdout, logs on stderr or in `log_file`.

use std::io::{Read as _, Write as _};

use dataplane_user::cni::{
    plugin,
    spec::{self, CniError, Env, NetConf, code},
};

fn main() {
    let mut raw = Vec::new();
    let version = match std::io::stdin().read_to_end(&mut raw) {
        Ok(_) => spec::version_of(&raw),
        Err(e) => {
            let e = CniError::new(code::IO, format!("reading stdin: {e}"));
            finish(Err(e), spec::SUPPORTED[spec::SUPPORTED.len() - 1]);
        }
    };
    let env = match Env::parse(|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => finish(Err(e), &version),
    };
    let conf = match NetConf::parse(&raw) {
        Ok(c) => c,
        // VERSION answers whatever the config, as long as it names a version.
        Err(e) if env.command == spec::Command::Version && e.code == code::INCOMPATIBLE_VERSION => {
            finish(Ok(Some(spec::version_result(&version))), &version)
        }
        Err(e) => finish(Err(e), &version),
    };
    init_log(&conf);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => finish(
            Err(CniError::new(
                code::IO,
                format!("starting the runtime: {e}"),
            )),
            &version,
        ),
    };
    let started = std::time::Instant::now();
    let r = rt.block_on(plugin::run(&env, &conf));
    match &r {
        Ok(_) => log::info!(
            "{:?} {} {}: ok in {:?}",
            env.command,
            env.container_id,
            env.ifname,
            started.elapsed()
        ),
        Err(e) => log::error!("{:?} {} {}: {e}", env.command, env.container_id, env.ifname),
    }
    finish(r, &version)
}

/// Prints the result or the error object and exits (1 on error).
fn finish(r: Result<Option<serde_json::Value>, CniError>, version: &str) -> ! {
    let mut out = std::io::stdout().lock();
    let code = match r {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(version));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code)
}

/// Logs go to `log_file` when the config names one, else to stderr (which runtimes keep).
fn init_log(conf: &NetConf) {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info)
        .parse_env(env_logger::Env::new().filter("IPIPD_CNI_LOG"));
    if let Some(p) = &conf.log_file
        && let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    {
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    let _ = b.try_init();
}
