//! A Calico cluster's datastore, written into a test's etcd as libcalico-go's etcdv3 backend
//! writes it (each value's format from the file named at its writer), and the seed's cluster
//! in it: what calico-node, calico-ipam and calico-cni leave in etcd, for ipipd's calico-etcd
//! mode to read.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use crate::etcd::Etcd;

/// The seed's worker and master, by the names Calico gave them.
pub const WORKER: &str = "izj6c3cqwumhn5jov661z7z";
pub const MASTER: &str = "izj6cg11g0cdegoowj058ez";

/// Calico's keys in one etcd.
pub struct CalicoStore<'a> {
    pub etcd: &'a Etcd,
    pub prefix: String,
}

/// `192.168.83.128/26` as libcalico-go puts a CIDR in a key: `192.168.83.128-26`.
fn key_cidr(cidr: &str) -> String {
    cidr.replacen('/', "-", 1)
}

impl<'a> CalicoStore<'a> {
    pub fn new(etcd: &'a Etcd) -> Self {
        CalicoStore {
            etcd,
            prefix: "/calico".into(),
        }
    }

    fn resource(&self, plural: &str, name: &str) -> String {
        format!(
            "{}/resources/v3/projectcalico.org/{plural}/{name}",
            self.prefix
        )
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.etcd
            .ctl(&["put", key, value])
            .with_context(|| format!("putting {key}"))?;
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.etcd
            .ctl(&["del", key])
            .with_context(|| format!("deleting {key}"))?;
        Ok(())
    }

    /// The store's revision: it moves with every write, so an unchanged one says nothing was
    /// written.
    pub fn revision(&self) -> Result<i64> {
        let out = self
            .etcd
            .ctl(&["get", "/", "--prefix", "--keys-only", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["header"]["revision"]
            .as_i64()
            .context("no header.revision in etcdctl's answer")
    }

    /// Every key under the prefix with its value.
    pub fn dump(&self) -> Result<String> {
        self.etcd.ctl(&["get", &self.prefix, "--prefix"])
    }

    /// A Node (libcalico-go `lib/apis/internalapi/node.go`; `spec.bgp` as calico-node's
    /// startup writes it: the address with its subnet's prefix length, and the tunnel address
    /// `allocate-tunnel-addrs` took from the node's block).
    pub fn node(&self, name: &str, address: &str, tunnel: Option<Ipv4Addr>) -> Result<()> {
        let tunnel = tunnel.map_or(String::new(), |t| format!(r#","ipv4IPIPTunnelAddr":"{t}""#));
        self.put(
            &self.resource("nodes", name),
            &format!(
                r#"{{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{{"name":"{name}","creationTimestamp":"2018-01-15T08:12:51Z"}},"spec":{{"bgp":{{"ipv4Address":"{address}"{tunnel}}},"orchRefs":[{{"nodeName":"{name}","orchestrator":"k8s"}}]}},"status":{{}}}}"#
            ),
        )
    }

    /// An IPPool (`api/pkg/apis/projectcalico/v3/ippool.go`).
    pub fn pool(&self, name: &str, cidr: &str, ipip_mode: &str, nat_outgoing: bool) -> Result<()> {
        self.put(
            &self.resource("ippools", name),
            &format!(
                r#"{{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{{"name":"{name}","creationTimestamp":"2018-01-15T08:12:51Z"}},"spec":{{"cidr":"{cidr}","vxlanMode":"Never","ipipMode":"{ipip_mode}","natOutgoing":{nat_outgoing},"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"]}}}}"#
            ),
        )
    }

    pub fn affinity_key(&self, node: &str, block: &str) -> String {
        format!(
            "{}/ipam/v2/host/{node}/ipv4/block/{}",
            self.prefix,
            key_cidr(block)
        )
    }

    /// A block affinity (`lib/backend/model/block_affinity.go`): `confirmed`, `pending` or
    /// `pendingDeletion`.
    pub fn affinity(&self, node: &str, block: &str, state: &str) -> Result<()> {
        self.put(
            &self.affinity_key(node, block),
            &format!(r#"{{"state":"{state}","deleted":false}}"#),
        )
    }

    /// An allocation block (`lib/backend/model/block.go`) affine to `node`, with `used` of its
    /// addresses allocated from the first (the tunnel address among them).
    pub fn allocation_block(&self, node: &str, block: &str, used: usize) -> Result<()> {
        let size = 1usize << (32 - block.split('/').nth(1).unwrap_or("26").parse::<u32>()?);
        let allocations: Vec<String> = (0..size)
            .map(|i| {
                if i < used {
                    i.to_string()
                } else {
                    "null".into()
                }
            })
            .collect();
        let unallocated: Vec<String> = (used..size).map(|i| i.to_string()).collect();
        let attributes: Vec<String> = (0..used)
            .map(|i| {
                format!(
                    r#"{{"handle_id":"k8s-pod-network.{i:064x}","secondary":{{"node":"{node}"}}}}"#
                )
            })
            .collect();
        self.put(
            &format!(
                "{}/ipam/v2/assignment/ipv4/block/{}",
                self.prefix,
                key_cidr(block)
            ),
            &format!(
                r#"{{"cidr":"{block}","affinity":"host:{node}","affinity_claim_time":"2018-01-15T08:12:53Z","allocations":[{}],"unallocated":[{}],"attributes":[{}],"sequenceNumber":{used},"sequenceNumberForAllocation":{{}},"deleted":false}}"#,
                allocations.join(","),
                unallocated.join(","),
                attributes.join(",")
            ),
        )
    }

    /// The key of a pod's WorkloadEndpoint (its name as calico-cni makes it).
    pub fn workload_key(&self, namespace: &str, node: &str, pod: &str) -> String {
        self.resource(
            "workloadendpoints",
            &format!("{namespace}/{node}-k8s-{}-eth0", pod.replace('-', "--")),
        )
    }

    /// A pod's WorkloadEndpoint as calico-cni writes it
    /// (`lib/apis/internalapi/workloadendpoint.go`); its key.
    pub fn workload(
        &self,
        namespace: &str,
        pod: &str,
        node: &str,
        interface: &str,
        address: Ipv4Addr,
    ) -> Result<String> {
        let key = self.workload_key(namespace, node, pod);
        self.put(
            &key,
            &format!(
                r#"{{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{{"name":"{name}","namespace":"{namespace}","labels":{{"projectcalico.org/namespace":"{namespace}","projectcalico.org/orchestrator":"k8s"}}}},"spec":{{"orchestrator":"k8s","node":"{node}","containerID":"{:064x}","pod":"{pod}","endpoint":"eth0","serviceAccountName":"default","ipNetworks":["{address}/32"],"profiles":["kns.{namespace}","ksa.{namespace}.default"],"interfaceName":"{interface}"}}}}"#,
                u32::from(address),
                name = key.rsplit('/').next().unwrap_or_default(),
            ),
        )?;
        Ok(key)
    }

    /// The seed's cluster as Calico keeps it: both nodes (172.31.242.156/20 and .157/20, each
    /// with the first address of its block as its tunnel address), the default pool
    /// `192.168.0.0/16` (ipipMode Always, natOutgoing), both blocks' confirmed affinities and
    /// allocation blocks, and the given pods (namespace, pod, node, interface, address).
    pub fn seed(&self, pods: &[(&str, &str, &str, &str, Ipv4Addr)]) -> Result<()> {
        self.node(
            WORKER,
            "172.31.242.156/20",
            Some(Ipv4Addr::new(192, 168, 83, 128)),
        )?;
        self.node(
            MASTER,
            "172.31.242.157/20",
            Some(Ipv4Addr::new(192, 168, 179, 0)),
        )?;
        self.pool("default-ipv4-ippool", "192.168.0.0/16", "Always", true)?;
        for (node, block) in [(WORKER, "192.168.83.128/26"), (MASTER, "192.168.179.0/26")] {
            self.affinity(node, block, "confirmed")?;
            let on_it = pods.iter().filter(|p| p.2 == node).count();
            self.allocation_block(node, block, 1 + on_it)?;
        }
        for (ns, pod, node, ifc, addr) in pods {
            self.workload(ns, pod, node, ifc, *addr)?;
        }
        Ok(())
    }
}
