//! The cluster datastore on etcd: nodes register themselves, claim blocks from pools, and
//! learn every other node as a peer ([`model`] is what is stored and what it means;
//! [`memory`] what a node remembers and makes of a store that forgot; [`Store`] the etcd I/O;
//! [`sync`] the node's side: its start and the daemon's task that keeps its view current).

pub mod calico;
pub mod calico_sync;
pub mod memory;
pub mod model;
pub mod peers;
pub mod sync;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};

use crate::net::Ipv4Net;
use model::{Block, ClusterId, Keys, NodeRecord, Pool, View};

pub use crate::config::{DEFAULT_PREFIX, DatastoreCfg};

/// How long a connection, and each request, may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the datastore.
#[derive(Clone)]
pub struct Store {
    client: Client,
    pub keys: Keys,
}

fn read(p: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("datastore.{what}: reading {}", p.display()))
}

/// Retries a request while etcd says it may work a moment later (`Unavailable`, a leader
/// change), within [`REQUEST_TIMEOUT`] each and a few attempts in all: the client does not.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut last = None;
    for _ in 0..5 {
        match tokio::time::timeout(REQUEST_TIMEOUT, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = Some(anyhow!("{e}")),
            Err(_) => last = Some(anyhow!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    Err(last
        .unwrap_or_else(|| anyhow!("failed"))
        .context(what.to_string()))
}

impl Store {
    /// Connects to the members that answer now (each probed within [`REQUEST_TIMEOUT`]): a
    /// dead member in the list would otherwise fail a share of the requests, since the
    /// client spreads them over every endpoint it was given. None answering is an error
    /// naming the first one's.
    pub async fn connect(cfg: &DatastoreCfg) -> Result<Store> {
        if cfg.endpoints.len() == 1 {
            return Self::connect_to(cfg, &cfg.endpoints).await;
        }
        let probes = cfg.endpoints.iter().map(|e| async move {
            (
                e.clone(),
                Self::connect_to(cfg, std::slice::from_ref(e)).await,
            )
        });
        let mut live = Vec::new();
        let mut first_err = None;
        for (e, r) in futures::future::join_all(probes).await {
            match r {
                Ok(_) => live.push(e),
                Err(err) => {
                    log::debug!("datastore: {err:#}");
                    first_err.get_or_insert(err);
                }
            }
        }
        if live.is_empty() {
            return Err(first_err.unwrap_or_else(|| anyhow!("no etcd member")));
        }
        Self::connect_to(cfg, &live).await
    }

    async fn connect_to(cfg: &DatastoreCfg, endpoints: &[String]) -> Result<Store> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "ca")?));
            }
            if let (Some(c), Some(k)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(Identity::from_pem(read(c, "cert")?, read(k, "key")?));
            }
            opts = opts.with_tls(tls);
        }
        let members = endpoints.join(", ");
        let mut client =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(opts)))
                .await
                .map_err(|_| {
                    anyhow!(
                        "etcd at {members}: no connection within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| anyhow!("etcd at {members}: {e}"))?;
        // A request, so that a refused certificate or a dead member shows here.
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.get("/", Some(GetOptions::new().with_count_only())),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "etcd at {members}: no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| anyhow!("etcd at {members}: {e}"))?;
        Ok(Store {
            client,
            keys: Keys::new(&cfg.prefix),
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A watch of every key under `prefix` from the revision after `rev` (what a list at
    /// `rev` saw is not sent again).
    pub async fn watch_after(&self, prefix: String, rev: i64) -> Result<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        Ok(
            tokio::time::timeout(REQUEST_TIMEOUT, self.client().watch(prefix, Some(options)))
                .await
                .map_err(|_| anyhow!("watch: no answer"))??,
        )
    }

    /// Everything under the prefix, and the revision it was read at.
    pub async fn list(&self) -> Result<(View, i64)> {
        let c = self.client.clone();
        let prefix = self.keys.all();
        let resp = retry("listing the datastore", || {
            let mut c = c.clone();
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut view = View::default();
        for kv in resp.kvs() {
            view.apply(
                &self.keys,
                &String::from_utf8_lossy(kv.key()),
                Some(kv.value()),
            );
        }
        Ok((view, rev))
    }

    /// Every key under `prefix` with its value, at `revision` (None: the newest), and the
    /// revision read at.
    pub async fn get_prefix(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64)> {
        let c = self.client.clone();
        let resp = retry(&format!("listing {prefix}"), || {
            let mut c = c.clone();
            let mut opts = GetOptions::new().with_prefix();
            if let Some(r) = revision {
                opts = opts.with_revision(r);
            }
            async move { c.get(prefix, Some(opts)).await }
        })
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        Ok((kvs, revision.unwrap_or(rev)))
    }

    /// One transaction: `then` when every comparison of `when` holds; whether they did.
    async fn txn(&self, what: &str, when: Vec<Compare>, then: Vec<TxnOp>) -> Result<bool> {
        let c = self.client.clone();
        let r = retry(what, || {
            let mut c = c.clone();
            let (when, then) = (when.clone(), then.clone());
            async move { c.txn(Txn::new().when(when).and_then(then)).await }
        })
        .await?;
        Ok(r.succeeded())
    }

    /// Creates `key` with `value` unless it exists; whether it did.
    async fn create(&self, key: String, value: Vec<u8>) -> Result<bool> {
        self.txn(
            &format!("creating {key}"),
            vec![Compare::version(key.clone(), CompareOp::Equal, 0)],
            vec![TxnOp::put(key, value, None)],
        )
        .await
    }

    /// One key's value, if it exists.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>> {
        let c = self.client.clone();
        let r = retry(&format!("reading {key}"), || {
            let mut c = c.clone();
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&self, key: String, value: Vec<u8>, lease: Option<i64>) -> Result<()> {
        let c = self.client.clone();
        retry(&format!("writing {key}"), || {
            let mut c = c.clone();
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, lease.map(|l| PutOptions::new().with_lease(l)))
                    .await
            }
        })
        .await
        .map(drop)
    }

    async fn delete(&self, key: String) -> Result<()> {
        let c = self.client.clone();
        retry(&format!("deleting {key}"), || {
            let mut c = c.clone();
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await
        .map(drop)
    }

    /// Creates a pool unless one with that CIDR exists (a different block size there is an
    /// error; its nat_outgoing is the store's to say); whether it was created.
    pub async fn ensure_pool(&self, pool: &Pool) -> Result<bool> {
        let (view, _) = self.list().await?;
        self.ensure_pool_in(&view, pool).await
    }

    /// [`Store::ensure_pool`] against a view just listed.
    pub async fn ensure_pool_in(&self, view: &View, pool: &Pool) -> Result<bool> {
        pool.check()
            .map_err(|e| anyhow!("pool {}: {e}", pool.cidr))?;
        if let Some(other) = view.pools.values().find(|p| p.cidr.overlaps(&pool.cidr)) {
            if (other.cidr, other.block_size) == (pool.cidr, pool.block_size) {
                return Ok(false);
            }
            bail!(
                "pool {} /{} overlaps pool {} /{} in the datastore",
                pool.cidr,
                pool.block_size,
                other.cidr,
                other.block_size
            );
        }
        self.create(self.keys.pool(&pool.cidr), serde_json::to_vec(pool)?)
            .await
    }

    /// Deletes a pool; refused while a node owns one of its blocks.
    pub async fn delete_pool(&self, cidr: &Ipv4Net) -> Result<()> {
        let (view, _) = self.list().await?;
        if !view.pools.contains_key(cidr) {
            bail!("no pool {cidr}");
        }
        if let Some((b, n)) = view.blocks.iter().find(|(b, _)| cidr.overlaps(b)) {
            bail!("pool {cidr} is in use: node {n} owns its block {b}");
        }
        self.delete(self.keys.pool(cidr)).await
    }

    /// Claims `block` for `node`: created if nobody owns it (a transaction: of two nodes
    /// claiming it at once, one wins); fine if `node` owns it already; an error naming the
    /// owner otherwise.
    pub async fn claim(&self, block: &Ipv4Net, node: &str) -> Result<()> {
        let key = self.keys.block(block);
        loop {
            if self.create(key.clone(), block_value(block, node)?).await? {
                return Ok(());
            }
            // Released in between (no value): try again.
            if let Some(v) = self.get(key.clone()).await? {
                let owner = serde_json::from_slice::<Block>(&v)
                    .map_or_else(|e| format!("? ({e})"), |b| b.node);
                if owner == node {
                    return Ok(());
                }
                bail!("block {block} is owned by node {owner} in the datastore");
            }
        }
    }

    /// Claims `block` for `node` if it is free; whether it was.
    pub async fn claim_free_block(&self, block: &Ipv4Net, node: &str) -> Result<bool> {
        self.create(self.keys.block(block), block_value(block, node)?)
            .await
    }

    /// Claims the first free block of the pools for `node`: each candidate by a transaction
    /// that fails when another node won it, then the next. While nodes re-assert their blocks
    /// after a reset of the store, it waits up to `wait` (a block that looks free may be a
    /// live node's), then refuses.
    pub async fn claim_any(&self, node: &str, wait: Duration) -> Result<Ipv4Net> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let (view, _) = self.list().await?;
            if view.reasserting.is_none() {
                return self.claim_free(&view, node).await;
            }
            if tokio::time::Instant::now() >= until {
                bail!(
                    "the nodes are putting their blocks back after a reset of the datastore; no block is claimed until they have (up to {} s)",
                    memory::GRACE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn claim_free(&self, view: &View, node: &str) -> Result<Ipv4Net> {
        if view.pools.is_empty() {
            bail!("the datastore has no pool to claim a block from (ipipd pool add, or [[pool]])");
        }
        for b in view.free_blocks() {
            if self.claim_free_block(&b, node).await? {
                return Ok(b);
            }
        }
        let pools: Vec<String> = view.pools.keys().map(|p| p.to_string()).collect();
        bail!("no free block left in the pools {}", pools.join(", "))
    }

    /// Writes the store's identity unless it has one; whether it did.
    pub async fn create_identity(&self) -> Result<bool> {
        let id = ClusterId::new().context("reading /dev/urandom")?;
        self.create(self.keys.cluster(), serde_json::to_vec(&id)?)
            .await
    }

    /// Says, for `ttl`, that nodes are putting their blocks back after a reset: no free block
    /// is claimed meanwhile ([`Store::claim_any`]).
    pub async fn mark_reasserting(&self, node: &str, ttl: Duration) -> Result<()> {
        let lease = self.lease(ttl.as_secs() as i64).await?;
        let v = serde_json::to_vec(&serde_json::json!({ "node": node }))?;
        self.put(self.keys.reasserting(), v, Some(lease)).await
    }

    /// `node` holds `block`, which the store gives to another: said under its lease.
    pub async fn put_dispute(&self, node: &str, block: &Ipv4Net, lease: i64) -> Result<()> {
        self.put(
            self.keys.dispute(node, block),
            block_value(block, node)?,
            Some(lease),
        )
        .await
    }

    pub async fn delete_dispute(&self, node: &str, block: &Ipv4Net) -> Result<()> {
        self.delete(self.keys.dispute(node, block)).await
    }

    /// Registers a node with its blocks in one transaction that fails when any of the blocks
    /// is owned (a node provisioned from outside, as the bench writes its 1,000 nodes).
    pub async fn add_node(&self, node: &NodeRecord, blocks: &[Ipv4Net]) -> Result<()> {
        let mut when = Vec::new();
        let mut then = vec![TxnOp::put(
            self.keys.node(&node.name),
            serde_json::to_vec(node)?,
            None,
        )];
        for b in blocks {
            when.push(Compare::version(self.keys.block(b), CompareOp::Equal, 0));
            then.push(TxnOp::put(
                self.keys.block(b),
                block_value(b, &node.name)?,
                None,
            ));
        }
        if !self
            .txn(&format!("adding node {}", node.name), when, then)
            .await?
        {
            bail!("node {}: one of its blocks is owned already", node.name);
        }
        Ok(())
    }

    /// Writes the node's registration (and deletes its tombstone, should `ipipd node remove`
    /// have left one); the revision of the write.
    pub async fn register(&self, node: &NodeRecord) -> Result<i64> {
        let c = self.client.clone();
        let ops = vec![
            TxnOp::put(self.keys.node(&node.name), serde_json::to_vec(node)?, None),
            TxnOp::delete(self.keys.removed(&node.name), None),
        ];
        let r = retry(&format!("registering node {}", node.name), || {
            let mut c = c.clone();
            let ops = ops.clone();
            async move { c.txn(Txn::new().and_then(ops)).await }
        })
        .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// The revision a key was last written at, if it exists.
    pub async fn mod_revision(&self, key: String) -> Result<Option<i64>> {
        let c = self.client.clone();
        let r = retry(&format!("reading {key}"), || {
            let mut c = c.clone();
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await?;
        Ok(r.kvs().first().map(|kv| kv.mod_revision()))
    }

    /// A lease of `ttl` seconds.
    async fn lease(&self, ttl: i64) -> Result<i64> {
        let c = self.client.clone();
        Ok(retry("granting a lease", || {
            let mut c = c.clone();
            async move { c.lease_grant(ttl, None).await }
        })
        .await?
        .id())
    }

    /// A lease of `ttl` seconds and the liveness key under it.
    pub async fn alive(&self, name: &str, ttl: i64) -> Result<i64> {
        let lease = self.lease(ttl).await?;
        let v = serde_json::to_vec(&serde_json::json!({"pid": std::process::id()}))?;
        self.put(self.keys.alive(name), v, Some(lease)).await?;
        Ok(lease)
    }

    /// `ipipd node remove`: the registration, the liveness key, the disputes and every block
    /// of the node deleted, and its tombstone written, in one transaction.
    pub async fn remove_node(&self, name: &str) -> Result<Vec<Ipv4Net>> {
        let (view, _) = self.list().await?;
        let blocks = view.blocks_of(name);
        if !view.nodes.contains_key(name) && blocks.is_empty() {
            bail!("no node {name} in the datastore");
        }
        let mut ops: Vec<TxnOp> = [self.keys.node(name), self.keys.alive(name)]
            .into_iter()
            .chain(blocks.iter().map(|b| self.keys.block(b)))
            .map(|k| TxnOp::delete(k, None))
            .collect();
        ops.push(TxnOp::delete(
            self.keys.disputes_of(name),
            Some(DeleteOptions::new().with_prefix()),
        ));
        let tombstone = serde_json::to_vec(&serde_json::json!({ "at": unix_now() }))?;
        ops.push(TxnOp::put(self.keys.removed(name), tombstone, None));
        self.txn(&format!("removing node {name}"), Vec::new(), ops)
            .await?;
        Ok(blocks)
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A block record's value.
fn block_value(cidr: &Ipv4Net, node: &str) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&Block {
        cidr: *cidr,
        node: node.to_string(),
    })?)
}

/// A prefix written out, for the datastore's tests.
#[cfg(test)]
pub(crate) fn net(s: &str) -> crate::net::Ipv4Net {
    s.parse().unwrap()
}

/// A small deterministic generator for the datastore's randomized tests (no dependency).
#[cfg(test)]
pub(crate) struct Lcg(pub u64);

#[cfg(test)]
impl Lcg {
    /// The next number below `n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}
