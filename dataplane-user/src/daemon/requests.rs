//! What the owner serves on the control socket: runtime changes (`endpoint add`, `peer add`,
//! …), the CNI plugin's requests (an address from IPAM, attach, detach, lookup, GC) and `node`
//! (what `ipipd status` and the plugin ask of the node).

use std::collections::BTreeSet;

use anyhow::Result;

use super::{Command, Owner};
use crate::{
    config::DatastoreKind,
    control::{Answer, AttachmentInfo, EndpointState, NodeInfo, PoolInfo, Reason, Reply, Request},
    desired::Change,
    ipam,
    net::Ipv4Net,
};

impl Owner {
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Request(req, reply) => {
                let r = self.request(req).await;
                // (Allocations come and go with requests; endpoints with reconciles.)
                self.publish_in_use();
                let _ = reply.send(r);
            }
            Command::MonitorStart { drops_only, id } => {
                self.next_monitor += 1;
                self.monitors.insert(self.next_monitor, drops_only);
                let _ = id.send(self.next_monitor);
                self.update_monitor();
            }
            Command::MonitorEnd(id) => {
                if self.monitors.remove(&id).is_some() {
                    self.update_monitor();
                }
            }
        }
    }

    /// A control request (not a monitor's): its reply.
    pub(super) async fn request(&mut self, req: Request) -> Reply {
        let r = match req {
            Request::Change(change) => self.change_request(change).await,
            Request::Node => Ok(Reply::answer(Answer::Node(self.node_info()))),
            Request::Allocate { owner, pod } => return self.allocate(&owner, pod).await,
            Request::Detach { owner } => self.detach(&owner).await,
            Request::Lookup { owner } => Ok(Reply::answer(Answer::Attachment(self.lookup(&owner)))),
            Request::Gc { valid } => self.gc(valid).await,
            Request::Monitor { .. } => Ok(Reply::error("monitor is not a change")),
        };
        r.unwrap_or_else(|e| Reply::error(format!("{e:#}")))
    }

    /// A change; an added endpoint's reply says whether it is live.
    pub(super) async fn change_request(&mut self, change: Change) -> Result<Reply> {
        if let Change::EndpointAdd(ep) = &change
            && let Some(holder) = self.ipam.holder(ep.address)
            && Some(&holder.owner) != ep.attachment.as_ref()
        {
            anyhow::bail!(
                "{} is allocated to {}: delete that first",
                ep.address,
                holder.owner
            );
        }
        self.change(&change).await?;
        match change {
            Change::EndpointAdd(ep) => Ok(Reply::answer(Answer::Endpoint {
                live: !self.dp.plan.pending.contains_key(&ep.address),
            })),
            Change::EndpointDel { address } => {
                // An address `endpoint add` allocated goes with its endpoint.
                if let Some(owner) = self.ipam.release_address(address, ipam::Attachment::is_cli) {
                    self.ipam.save(&self.dp.state_dir)?;
                    log::info!("released {address} ({owner})");
                }
                Ok(Reply::ok())
            }
            _ => Ok(Reply::ok()),
        }
    }

    /// Addresses of the desired endpoints not allocated to `except`: not to be handed out.
    pub(super) fn in_use(&self, except: Option<&ipam::Attachment>) -> BTreeSet<std::net::Ipv4Addr> {
        self.desired
            .endpoints
            .iter()
            .filter(|e| except.is_none() || e.attachment.as_ref() != except)
            .map(|e| e.address)
            .collect()
    }

    /// The node as it is now (its readiness as of the last change, not of the last
    /// publication); asked before every CNI ADD, so nothing here walks a block's addresses.
    pub(super) fn node_info(&self) -> NodeInfo {
        let blocks = self.allocatable_blocks();
        let mut taken = self.in_use(None);
        taken.extend(self.ipam.allocations.iter().map(|a| a.address));
        let free = (blocks.iter().map(ipam::usable_count).sum::<u64>()
            - taken
                .iter()
                .filter(|a| blocks.iter().any(|b| ipam::usable_holds(b, **a)))
                .count() as u64) as usize;
        let waiting_for = self.waiting_for(&self.dp.wanted());
        NodeInfo {
            name: self.file.node.name.clone(),
            ready: waiting_for.is_empty(),
            waiting_for: waiting_for.join(", "),
            pod_mtu: dataplane_common::tunnel_mtu(self.dp.mtu),
            blocks: self.desired.blocks.clone(),
            free,
            datastore: self.ds_health.clone(),
            found: self.file.node.found.clone(),
            tunnel_address: self.desired.tunnel_address,
            pools: self
                .desired
                .pools
                .iter()
                .map(|p| PoolInfo {
                    cidr: p.cidr,
                    block_size: p.block_size,
                    nat_outgoing: p.nat_outgoing,
                    calico: self
                        .ds
                        .as_ref()
                        .and_then(|m| m.view.calico.pools.get(&p.cidr).cloned()),
                })
                .collect(),
            skipped: self.skipped.clone(),
        }
    }

    /// An address for `owner`; with a datastore, a full node claims another block first.
    pub(super) async fn allocate(
        &mut self,
        owner: &ipam::Attachment,
        pod: Option<String>,
    ) -> Reply {
        if self.file.datastore_kind == DatastoreKind::CalicoEtcd {
            return Reply::refused(
                Reason::NoAddress,
                "this node follows Calico's datastore: pod addresses are calico-ipam's (use calico-cni)",
            );
        }
        let r = self.allocate_here(owner, pod.clone());
        if r.reason != Some(Reason::NoAddress) || self.file.datastore.is_none() {
            return r;
        }
        match self.claim_block().await {
            Ok(b) => {
                log::info!("the node's blocks are full: claimed {b} from the datastore");
                self.allocate_here(owner, pod)
            }
            Err(e) => Reply::refused(
                Reason::NoAddress,
                format!("{}; claiming another block: {e:#}", r.error),
            ),
        }
    }

    pub(super) fn allocate_here(&mut self, owner: &ipam::Attachment, pod: Option<String>) -> Reply {
        let before = self.ipam.clone();
        let in_use = self.in_use(Some(owner));
        let blocks = self.allocatable_blocks();
        match self.ipam.allocate(owner, pod, &blocks, &in_use) {
            Ok(address) => {
                if self.ipam != before {
                    if let Err(e) = self.ipam.save(&self.dp.state_dir) {
                        // Not saved, not handed out.
                        self.ipam = before;
                        return Reply::error(format!("{e:#}"));
                    }
                    log::info!("allocated {address} to {owner}");
                }
                Reply::answer(Answer::Address(address))
            }
            Err(e) => Reply::refused(Reason::NoAddress, e),
        }
    }

    /// The runtime endpoints of these attachments removed in one change; their addresses.
    pub(super) async fn remove_endpoints(
        &mut self,
        of: impl Fn(&ipam::Attachment) -> bool,
    ) -> Result<Vec<(ipam::Attachment, std::net::Ipv4Addr)>> {
        let gone: Vec<(ipam::Attachment, std::net::Ipv4Addr)> = self
            .desired
            .endpoints
            .iter()
            .filter_map(|e| {
                e.attachment
                    .as_ref()
                    .filter(|a| of(a))
                    .map(|a| (a.clone(), e.address))
            })
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let changes: Vec<Change> = gone
            .iter()
            .map(|(_, address)| Change::EndpointDel { address: *address })
            .collect();
        let mut rt = self.runtime.clone();
        for c in &changes {
            rt = rt.with(&self.file, c)?;
        }
        self.apply_changes(rt, &changes).await?;
        self.runtime.save(&self.dp.state_dir)?;
        for (a, address) in &gone {
            log::info!("removed endpoint {address} of {a}");
        }
        Ok(gone)
    }

    /// CNI DEL: the attachment's endpoint removed, then its address released.
    pub(super) async fn detach(&mut self, owner: &ipam::Attachment) -> Result<Reply> {
        let gone = self.remove_endpoints(|a| a == owner).await?;
        let released = self.ipam.release(owner);
        if let Some(a) = released {
            self.ipam.save(&self.dp.state_dir)?;
            log::info!("released {a} ({owner})");
        }
        Ok(Reply::answer(Answer::Detached {
            released,
            endpoint: gone.first().map(|(_, a)| *a),
        }))
    }

    pub(super) fn lookup(&self, owner: &ipam::Attachment) -> AttachmentInfo {
        let endpoint = self
            .desired
            .endpoints
            .iter()
            .find(|e| e.attachment.as_ref() == Some(owner))
            .map(|e| EndpointState {
                address: e.address,
                interface: e.interface.clone(),
                live: !self.dp.plan.pending.contains_key(&e.address),
            });
        AttachmentInfo {
            allocated: self.ipam.of(owner).map(|a| a.address),
            endpoint,
        }
    }

    /// CNI GC: the runtime's attachments not in `valid` are forgotten (`endpoint add`'s are
    /// not the runtime's).
    pub(super) async fn gc(&mut self, valid: Vec<ipam::Attachment>) -> Result<Reply> {
        let valid: BTreeSet<ipam::Attachment> = valid.into_iter().collect();
        let gone = self
            .remove_endpoints(|a| !a.is_cli() && !valid.contains(a))
            .await?;
        let released = self.ipam.collect(&valid);
        if !released.is_empty() {
            self.ipam.save(&self.dp.state_dir)?;
        }
        for r in &released {
            log::info!("GC: released {} ({})", r.address, r.owner);
        }
        Ok(Reply::answer(Answer::Collected {
            released,
            endpoints: gone.into_iter().map(|(a, _)| a).collect(),
        }))
    }

    /// The node's blocks new pods get addresses from: all of them but those in dispute.
    pub(super) fn allocatable_blocks(&self) -> Vec<Ipv4Net> {
        let contested: BTreeSet<Ipv4Net> = self
            .ds_health
            .iter()
            .flat_map(|h| h.conflicts.iter().map(|c| c.block))
            .collect();
        self.desired
            .blocks
            .iter()
            .filter(|b| !contested.iter().any(|c| c.overlaps(b)))
            .copied()
            .collect()
    }
}
