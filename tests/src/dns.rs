//! DNS just large enough for kube-dns's part in the demo and the tests: a server in a pod that
//! answers A queries from a table (RFC 1035 over UDP), and a resolver that asks through a
//! connected UDP socket, as a pod's libc does (so it takes an answer only from the address it
//! asked: a Service's VIP).

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::NetNs;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;

/// A query for `name`'s A record, with `id`.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(id.to_be_bytes());
    m.extend(0x0100u16.to_be_bytes()); // RD
    m.extend([0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.push(0);
    m.extend(TYPE_A.to_be_bytes());
    m.extend(CLASS_IN.to_be_bytes());
    m
}

/// The question's name of a message, and where the question ends.
fn question(m: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *m.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(m.get(at..at + len)?).to_lowercase());
        at += len;
    }
    Some((labels.join("."), at + 4))
}

/// The answer to query `q` from `records`: the A record, or NXDOMAIN.
pub fn answer(q: &[u8], records: &[(String, Ipv4Addr)]) -> Option<Vec<u8>> {
    let (name, end) = question(q)?;
    let found = records.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let mut m = q.get(..end)?.to_vec();
    let rcode = if found.is_some() { 0 } else { RCODE_NXDOMAIN };
    m[2..4].copy_from_slice(&(0x8180u16 | rcode).to_be_bytes()); // QR, RD, RA
    m[6..8].copy_from_slice(&u16::from(found.is_some()).to_be_bytes());
    if let Some(a) = found {
        m.extend([0xc0, 12]); // the question's name
        m.extend(TYPE_A.to_be_bytes());
        m.extend(CLASS_IN.to_be_bytes());
        m.extend(30u32.to_be_bytes());
        m.extend(4u16.to_be_bytes());
        m.extend(a.octets());
    }
    Some(m)
}

/// The A record of a response to query `id`, or why there is none.
pub fn parse_answer(id: u16, m: &[u8]) -> Result<Ipv4Addr> {
    if m.len() < 12 || m[0..2] != id.to_be_bytes() {
        bail!("not the answer to query {id}");
    }
    let rcode = u16::from_be_bytes([m[2], m[3]]) & 0xf;
    if rcode != 0 {
        bail!("rcode {rcode}");
    }
    let (_, at) = question(m).context("a malformed question")?;
    // The answer: a name (a pointer here), type, class, TTL, length, data.
    let rr = m.get(at..at + 16).context("no answer record")?;
    if rr[2..4] != TYPE_A.to_be_bytes() || rr[10..12] != [0, 4] {
        bail!("not an A record");
    }
    Ok(Ipv4Addr::new(rr[12], rr[13], rr[14], rr[15]))
}

/// A DNS server in a namespace, until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &NetNs, bind: SocketAddrV4, records: Vec<(String, Ipv4Addr)>) -> Result<Self> {
        let sock = ns.enter(move || UdpSocket::bind(bind))??;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf)
                    && let Some(a) = answer(&buf[..n], &records)
                {
                    let _ = sock.send_to(&a, from);
                }
            }
        });
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `name`'s address, asked from `ns` of the server at `server` through a connected socket.
pub fn resolve(ns: &NetNs, server: SocketAddrV4, name: &str) -> Result<Ipv4Addr> {
    let name = name.to_string();
    ns.enter(move || -> Result<Ipv4Addr> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let id = (std::process::id() as u16) ^ 0x5a5a;
        s.send(&query(id, &name))?;
        let mut buf = [0u8; 512];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("no answer from {server}"))?;
        parse_answer(id, &buf[..n])
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_gets_its_record_or_nxdomain() {
        let records = vec![(
            "kube-dns.kube-system.svc.cluster.local".to_string(),
            Ipv4Addr::new(10, 96, 0, 10),
        )];
        let q = query(7, "kube-dns.kube-system.svc.cluster.local");
        let a = answer(&q, &records).unwrap();
        assert_eq!(parse_answer(7, &a).unwrap(), Ipv4Addr::new(10, 96, 0, 10));
        let q = query(8, "nothing.cluster.local");
        let e = parse_answer(8, &answer(&q, &records).unwrap()).unwrap_err();
        assert!(format!("{e}").contains("rcode 3"), "{e}");
        assert!(parse_answer(9, &a).is_err());
    }
}
