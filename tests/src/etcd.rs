//! An etcd member (Debian's etcd-server) for the datastore tests: listening only on an address
//! inside a namespace the test made, its data in the test's directory, stopped on drop.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::NetNs;

pub struct Etcd {
    child: Option<Child>,
    ns: String,
    args: Vec<String>,
    log: PathBuf,
    /// The client URL.
    pub url: String,
}

impl Etcd {
    /// One member listening on `addr:port` in `ns` (peers on loopback), data under `dir`.
    pub fn start(ns: &NetNs, addr: Ipv4Addr, port: u16, dir: &Path) -> Result<Etcd> {
        if !Path::new("/usr/bin/etcd").is_file() {
            bail!("etcd is missing: install etcd-server (cargo xtask setup)");
        }
        let data = dir.join("etcd-data");
        std::fs::create_dir_all(dir)?;
        let url = format!("http://{addr}:{port}");
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let args: Vec<String> = [
            "--name",
            "m0",
            "--data-dir",
            &data.to_string_lossy(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("m0={peer}"),
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut e = Etcd {
            child: None,
            ns: ns.name.clone(),
            args,
            log: dir.join("etcd.log"),
            url,
        };
        e.resume()?;
        Ok(e)
    }

    /// Starts the member (again, on its data), and waits until it answers.
    pub fn resume(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "/usr/bin/etcd"])
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting etcd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns,
                    "etcdctl",
                    "--endpoints",
                    &self.url,
                ])
                .args(["--command-timeout=1s", "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd at {} not healthy within 30 s:\n{}",
                    self.url,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl` against this member; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = crate::check(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns,
                    "etcdctl",
                    "--endpoints",
                    &self.url,
                ])
                .args(args)
                .env("ETCDCTL_API", "3"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
