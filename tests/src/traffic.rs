//! Traffic between namespaces, made in-process: sockets created on a thread that entered a
//! namespace belong to it. Every wait is bounded.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::NetNs;

/// FNV-1a 64 over a stream: enough to tell a corrupted or reordered byte.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Deterministic pseudo-random bytes (so a dropped or duplicated segment changes the hash).
fn fill(buf: &mut [u8], state: &mut u64) {
    for b in buf.iter_mut() {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (*state >> 33) as u8;
    }
}

/// Result of a TCP transfer: bytes and hash on each side.
#[derive(Debug, PartialEq, Eq)]
pub struct Transfer {
    pub sent: (u64, u64),
    pub received: (u64, u64),
}

/// Sends `bytes` over TCP from `client` to `server_addr:port` in `server`; both hashes returned.
pub fn tcp_transfer(
    server: &NetNs,
    server_addr: Ipv4Addr,
    port: u16,
    client: &NetNs,
    bytes: u64,
) -> Result<Transfer> {
    tcp_stream(
        server,
        server_addr,
        port,
        client,
        bytes,
        Duration::ZERO,
        &|| true,
    )
}

/// A TCP stream from `client` to `server_addr:port` in `server`: 64 KiB writes, `pause` apart,
/// while `go()` holds and at most `bytes` in all; both sides' byte counts and hashes returned.
pub fn tcp_stream(
    server: &NetNs,
    server_addr: Ipv4Addr,
    port: u16,
    client: &NetNs,
    bytes: u64,
    pause: Duration,
    go: &(dyn Fn() -> bool + Sync),
) -> Result<Transfer> {
    let at = SocketAddrV4::new(server_addr, port);
    tcp_stream_via(server, at, client, at, bytes, pause, go)
}

/// [`tcp_stream`] from `client` to `connect` (a Service's VIP, say) while the server in
/// `server` listens on `bind` (the backend the kernel translates the VIP to).
pub fn tcp_stream_via(
    server: &NetNs,
    bind: SocketAddrV4,
    client: &NetNs,
    connect: SocketAddrV4,
    bytes: u64,
    pause: Duration,
    go: &(dyn Fn() -> bool + Sync),
) -> Result<Transfer> {
    let listener = server.enter(move || TcpListener::bind(bind))??;
    std::thread::scope(|s| {
        let rx = s.spawn(|| -> Result<(u64, u64)> {
            listener.set_nonblocking(false)?;
            let (mut conn, _) = accept_within(&listener, Duration::from_secs(30))?;
            conn.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut h = Fnv::default();
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = conn.read(&mut buf).context("receiving")?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
            Ok((n, h.value()))
        });
        let tx = client.enter(move || -> Result<(u64, u64)> {
            let mut conn = TcpStream::connect_timeout(&connect.into(), Duration::from_secs(10))
                .context("connecting")?;
            conn.set_write_timeout(Some(Duration::from_secs(30)))?;
            let mut h = Fnv::default();
            let mut state = 0x1234_5678u64;
            let mut buf = vec![0u8; 1 << 16];
            let mut left = bytes;
            while left > 0 && go() {
                let k = left.min(buf.len() as u64) as usize;
                fill(&mut buf[..k], &mut state);
                conn.write_all(&buf[..k]).context("sending")?;
                h.update(&buf[..k]);
                left -= k as u64;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            Ok((bytes - left, h.value()))
        })?;
        let received = rx
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        Ok(Transfer {
            sent: tx?,
            received,
        })
    })
}

pub fn accept_within(l: &TcpListener, t: Duration) -> Result<(TcpStream, std::net::SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + t;
    loop {
        match l.accept() {
            Ok(c) => {
                c.0.set_nonblocking(false)?;
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection within {t:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A UDP socket bound in a namespace.
pub fn udp_socket(ns: &NetNs, addr: Ipv4Addr, port: u16) -> Result<UdpSocket> {
    let s = ns.enter(move || UdpSocket::bind(SocketAddrV4::new(addr, port)))??;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(s)
}

/// Sets IP_MTU_DISCOVER (IP_PMTUDISC_DO = DF set, IP_PMTUDISC_DONT = DF clear).
pub fn set_pmtudisc(s: &UdpSocket, df: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = if df {
        libc::IP_PMTUDISC_DO
    } else {
        libc::IP_PMTUDISC_DONT
    };
    // SAFETY: valid fd and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            4,
        )
    };
    if rc != 0 {
        bail!("IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives datagrams until `n` arrived or nothing comes for a while.
pub fn udp_receive(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < n && Instant::now() < deadline {
        if let Ok((k, _)) = s.recv_from(&mut buf) {
            out.push(buf[..k].to_vec());
        }
    }
    out
}

/// tcpdump writing a pcap, in a namespace, on one device.
pub struct Capture {
    child: Child,
    pub path: PathBuf,
}

impl Capture {
    pub fn start(ns: &NetNs, dev: &str, dir: &Path, filter: &str) -> Result<Capture> {
        let n = crate::seq();
        let path = dir.join(format!("{dev}-{n}.pcap"));
        let err = dir.join(format!("{dev}-{n}.tcpdump.log"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "tcpdump",
                "--immediate-mode",
                "-i",
                dev,
                "-U",
                "-n",
                "-s",
                "256",
                "-w",
            ])
            .arg(&path)
            .args(filter.split_whitespace())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting tcpdump")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline {
                bail!(
                    "tcpdump did not start: {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { child, path })
    }

    /// Stops the capture and returns its frames.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        // Let in-flight frames land before stopping.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: plain kill(2) to our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        read_pcap(&self.path)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The frames of a classic pcap file (as tcpdump -w writes it).
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 24 {
        bail!("{}: not a pcap", path.display());
    }
    // Written on this host: little-endian magic means little-endian records.
    let le = matches!(
        u32::from_le_bytes(data[..4].try_into()?),
        0xa1b2c3d4 | 0xa1b23c4d
    );
    let u = |b: &[u8]| {
        if le {
            u32::from_le_bytes(b.try_into().unwrap())
        } else {
            u32::from_be_bytes(b.try_into().unwrap())
        }
    };
    let mut off = 24;
    let mut frames = Vec::new();
    while off + 16 <= data.len() {
        let incl = u(&data[off + 8..off + 12]) as usize;
        off += 16;
        if off + incl > data.len() {
            break;
        }
        frames.push(data[off..off + incl].to_vec());
        off += incl;
    }
    Ok(frames)
}

/// An IPv4 packet in an Ethernet frame, parsed enough for the wire checks.
#[derive(Debug, Clone)]
pub struct Ip4 {
    pub dst_mac: [u8; 6],
    /// Header length in bytes.
    pub ihl: u8,
    pub total_len: u16,
    pub id: u16,
    pub tos: u8,
    pub ttl: u8,
    pub df: bool,
    pub frag: bool,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub checksum_ok: bool,
    /// For ICMP, its type (8 echo request, 0 echo reply).
    pub icmp_type: Option<u8>,
    /// For IP-in-IP, the inner packet (which the capture may have cut short).
    pub inner: Option<Box<Ip4>>,
}

fn parse_ip(b: &[u8], dst_mac: [u8; 6]) -> Option<Ip4> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((b[0] & 15) as usize) * 4;
    if b.len() < ihl {
        return None;
    }
    let mut sum = 0u32;
    for w in b[..ihl].chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let frag = u16::from_be_bytes([b[6], b[7]]);
    let proto = b[9];
    Some(Ip4 {
        dst_mac,
        ihl: ihl as u8,
        total_len: u16::from_be_bytes([b[2], b[3]]),
        id: u16::from_be_bytes([b[4], b[5]]),
        tos: b[1],
        ttl: b[8],
        df: frag & 0x4000 != 0,
        frag: frag & 0x3fff != 0,
        proto,
        src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        checksum_ok: sum == 0xffff,
        icmp_type: if proto == 1 {
            b.get(ihl).copied()
        } else {
            None
        },
        inner: if proto == 4 {
            parse_ip(&b[ihl..], dst_mac).map(Box::new)
        } else {
            None
        },
    })
}

/// The IPv4 packets among captured Ethernet frames.
pub fn ipv4_frames(frames: &[Vec<u8>]) -> Vec<Ip4> {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12] == 0x08 && f[13] == 0x00)
        .filter_map(|f| parse_ip(&f[14..], f[..6].try_into().unwrap()))
        .collect()
}

/// An IPv4 packet: a header without options (ID 1, DF, TTL 64, its checksum computed) in
/// front of `inner`, for the frames tests build by hand.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, tos: u8, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, tos, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h.extend(src.octets());
    h.extend(dst.octets());
    h[2..4].copy_from_slice(&((20 + inner.len()).min(0xffff) as u16).to_be_bytes());
    let c = dataplane_common::csum::of_bytes(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(inner);
    h
}

/// What a ping run reported: packets sent and replies received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pings {
    pub sent: u64,
    pub received: u64,
}

impl Pings {
    /// From ping's summary line (iputils' or busybox's).
    pub fn parse(text: &str) -> Option<Pings> {
        let line = text.lines().find(|l| l.contains("packets transmitted"))?;
        let mut nums = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|w| w.parse::<u64>());
        Some(Pings {
            sent: nums.next()?.ok()?,
            received: nums.next()?.ok()?,
        })
    }

    pub fn lost(&self) -> u64 {
        self.sent - self.received
    }
}

/// Pings `to` from `ns` in rounds of `count` at `interval` (each round a bounded `ping -c`)
/// while `go()` holds, at most `max_rounds`; the sum of the rounds and each round's output.
/// A round waits for its replies until 2 s after its last request (`-w`): a reply late by
/// more than two round trips (a loaded VM's scheduling) counts as received, a lost one not.
pub fn ping_while(
    ns: &NetNs,
    to: Ipv4Addr,
    count: u32,
    interval: &str,
    max_rounds: u32,
    go: &(dyn Fn() -> bool + Sync),
) -> Result<(Pings, Vec<String>)> {
    let secs: f64 = interval.parse().context("interval: seconds")?;
    let deadline = (f64::from(count) * secs).ceil() as u64 + 2;
    let mut total = Pings::default();
    let mut outputs = Vec::new();
    for _ in 0..max_rounds {
        if !go() {
            break;
        }
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ping", "-n", "-q", "-c"])
            .arg(count.to_string())
            .args(["-i", interval, "-W", "1", "-w"])
            .arg(deadline.to_string())
            .arg(to.to_string())
            .output()
            .context("running ping")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let p = Pings::parse(&text).with_context(|| format!("no ping summary in {text}"))?;
        total.sent += p.sent;
        total.received += p.received;
        outputs.push(text);
    }
    Ok((total, outputs))
}

/// A TCP counter of the namespace's (`TcpExt` in /proc/net/netstat, e.g. "TCPTimeouts": the
/// retransmission timeouts that fired).
pub fn tcp_ext(ns: &NetNs, name: &str) -> Result<u64> {
    let text = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))??;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no TcpExt in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .with_context(|| format!("no TcpExt {name}"))?
        .1
        .parse()
        .context("a number")
}
