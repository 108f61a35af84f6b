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
    /// etcdctl's TLS flags, when the member serves TLS.
    ctl_tls: Vec<String>,
    ns: String,
    args: Vec<String>,
    log: PathBuf,
    /// The client URL.
    pub url: String,
}

impl Etcd {
    /// One member listening on `addr:port` in `ns` (peers on loopback), data under `dir`.
    pub fn start(ns: &NetNs, addr: Ipv4Addr, port: u16, dir: &Path) -> Result<Etcd> {
        Self::start_with(ns, addr, port, dir, None)
    }

    /// [`Etcd::start`] serving TLS with the certificates of `tls` and requiring client
    /// certificates signed by its CA.
    pub fn start_tls(ns: &NetNs, addr: Ipv4Addr, port: u16, dir: &Path, tls: &Pki) -> Result<Etcd> {
        Self::start_with(ns, addr, port, dir, Some(tls))
    }

    fn start_with(
        ns: &NetNs,
        addr: Ipv4Addr,
        port: u16,
        dir: &Path,
        tls: Option<&Pki>,
    ) -> Result<Etcd> {
        if !Path::new("/usr/bin/etcd").is_file() {
            bail!("etcd is missing: install etcd-server (cargo xtask setup)");
        }
        let data = dir.join("etcd-data");
        std::fs::create_dir_all(dir)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}:{port}");
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
        let mut args = args;
        let mut ctl_tls = Vec::new();
        if let Some(t) = tls {
            let p = |f: &PathBuf| f.to_string_lossy().into_owned();
            args.extend([
                "--cert-file".into(),
                p(&t.server_cert),
                "--key-file".into(),
                p(&t.server_key),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                p(&t.ca),
            ]);
            ctl_tls = vec![
                format!("--cacert={}", p(&t.ca)),
                format!("--cert={}", p(&t.client_cert)),
                format!("--key={}", p(&t.client_key)),
            ];
        }
        let mut e = Etcd {
            ctl_tls,
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
        self.spawn()?;
        self.wait_healthy()
    }

    /// Three members on `addr:port`, `port+1`, `port+2` (peers on loopback), one cluster.
    pub fn cluster3(ns: &NetNs, addr: Ipv4Addr, port: u16, dir: &Path) -> Result<Vec<Etcd>> {
        let peer = |i: u16| format!("http://127.0.0.1:{}", port + 20 + i);
        let initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", peer(i))).collect();
        let mut members = Vec::new();
        for i in 0..3u16 {
            let d = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&d)?;
            let url = format!("http://{addr}:{}", port + i);
            let args: Vec<String> = [
                "--name".to_string(),
                format!("m{i}"),
                "--data-dir".into(),
                d.join("data").to_string_lossy().into_owned(),
                "--listen-client-urls".into(),
                url.clone(),
                "--advertise-client-urls".into(),
                url.clone(),
                "--listen-peer-urls".into(),
                peer(i),
                "--initial-advertise-peer-urls".into(),
                peer(i),
                "--initial-cluster".into(),
                initial.join(","),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
            ]
            .to_vec();
            let mut m = Etcd {
                child: None,
                ctl_tls: Vec::new(),
                ns: ns.name.clone(),
                args,
                log: d.join("etcd.log"),
                url,
            };
            m.spawn()?;
            members.push(m);
        }
        for m in &members {
            m.wait_healthy()?;
        }
        Ok(members)
    }

    /// The member's data directory.
    fn data_dir(&self) -> PathBuf {
        let i = self.args.iter().position(|a| a == "--data-dir");
        PathBuf::from(&self.args[i.expect("--data-dir") + 1])
    }

    /// Stops the member, empties its data directory (a lost disk) and starts it again.
    pub fn wipe(&mut self) -> Result<()> {
        self.stop();
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.resume()
    }

    /// `etcdctl snapshot save` into `file`.
    pub fn snapshot_save(&self, file: &Path) -> Result<()> {
        self.ctl(&["snapshot", "save", &file.to_string_lossy()])
            .map(drop)
    }

    /// Stops the member, restores `file` (an older snapshot) into a fresh data directory with
    /// `etcdctl snapshot restore`, and starts it again on it. A single member only.
    pub fn restore(&mut self, file: &Path) -> Result<()> {
        self.stop();
        let data = self.data_dir();
        let _ = std::fs::remove_dir_all(&data);
        let arg = |k: &str| {
            let i = self.args.iter().position(|a| a == k).expect(k);
            self.args[i + 1].clone()
        };
        crate::check(
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(file)
                .arg("--data-dir")
                .arg(&data)
                .args(["--name", &arg("--name")])
                .args(["--initial-cluster", &arg("--initial-cluster")])
                .args([
                    "--initial-advertise-peer-urls",
                    &arg("--initial-advertise-peer-urls"),
                ]),
        )?;
        self.resume()
    }

    /// Whether this member is the leader (`etcdctl endpoint status`).
    pub fn is_leader(&self) -> bool {
        self.ctl(&["endpoint", "status", "-w", "json"])
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                let s = &v[0]["Status"];
                Some(s["leader"].as_u64()? == s["header"]["member_id"].as_u64()?)
            })
            .unwrap_or(false)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn(&mut self) -> Result<()> {
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
        Ok(())
    }

    fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .ctl_cmd()
                .args(["--command-timeout=1s", "endpoint", "health"])
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

    /// `etcdctl` against this member (with its TLS flags), in its namespace.
    fn ctl_cmd(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "etcdctl",
            "--endpoints",
            &self.url,
        ])
        .args(&self.ctl_tls)
        .env("ETCDCTL_API", "3");
        cmd
    }

    /// `etcdctl` against this member; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = crate::check(self.ctl_cmd().args(args))?;
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

/// A CA, a server certificate for an address, and client certificates: one signed by the CA,
/// one by a CA the server does not know (openssl, into `dir`).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, server: Ipv4Addr) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let sh = |script: &str| -> Result<()> {
            crate::check(Command::new("sh").arg("-ec").arg(script).current_dir(dir))?;
            Ok(())
        };
        let key = |name: &str| {
            format!(
                "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}.key 2>/dev/null"
            )
        };
        sh(&[
            key("ca"),
            "openssl req -x509 -new -key ca.key -subj /CN=ipipd-test-ca -days 2 -out ca.pem".into(),
            key("rogue-ca"),
            "openssl req -x509 -new -key rogue-ca.key -subj /CN=rogue-ca -days 2 -out rogue-ca.pem".into(),
            key("server"),
            "openssl req -new -key server.key -subj /CN=etcd -out server.csr".into(),
            format!("printf 'subjectAltName=IP:{server}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext"),
            "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem 2>/dev/null".into(),
            "printf 'extendedKeyUsage=clientAuth\\n' > client.ext".into(),
            key("client"),
            "openssl req -new -key client.key -subj /CN=ipipd-node -out client.csr".into(),
            "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem 2>/dev/null".into(),
            key("rogue"),
            "openssl req -new -key rogue.key -subj /CN=rogue -out rogue.csr".into(),
            "openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -days 2 -extfile client.ext -out rogue.pem 2>/dev/null".into(),
        ]
        .join("\n"))?;
        Ok(Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            rogue_cert: dir.join("rogue.pem"),
            rogue_key: dir.join("rogue.key"),
        })
    }
}
