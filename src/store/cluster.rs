//! ClickHouse as a cluster (`--cluster NAME`): replicated tables in shards, coordinated by
//! ZooKeeper (or ClickHouse Keeper).
//!
//! - **Which node is which.** Every node given in `--clickhouse-url` tells its `shard` macro;
//!   the shards are the macro's values in order (numerically when they are numbers), and there
//!   must be as many as the cluster's `remote_servers` holds. Every process that lists the same
//!   shards places every customer alike.
//! - **Placement.** A customer's events, samples and rollups live on one shard: the jump
//!   consistent hash of the xxh3 of its tenant and id ([`shard_of`]). Its reads go to that shard
//!   only; reads over a whole tenant go to every shard and are merged ([`Store::shards`]).
//! - **Tables.** The per-customer tables ([`SHARDED`]) are replicated within their shard; the
//!   others (catalog, keys, writers, outbox) on every node, so any node answers for them.
//!   Migrations create them `ON CLUSTER` (`migrate`).
//! - **Failover.** Each node is pinged every half second; statements go to the first node that
//!   answered, in the order given, among those that hold what they read or write. A node that
//!   does not answer at start (every shard needs one that does) joins when it first answers a
//!   ping, once its shard is learnt and checked; it comes after those that answered at start.
//!
//! [`Store::shards`]: super::Store::shards

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clickhouse::Client;

use super::StoreError;
use super::changes::Marks;
use super::days::DayGrain;

/// Tables holding one customer's rows, kept on the customer's shard (replicated within it).
/// Every other table of the migrations is replicated on every node.
pub const SHARDED: &[&str] = &[
    "events",
    "events_replay",
    "meter_samples",
    "meter_rollup_hour",
    "rollup_dirty",
    "usage_samples",
    "usage_rollup_hour",
    "usage_rollup_hour_g256",
    "usage_rollup_hour_g1024",
    "usage_rollup_hour_g32",
    "usage_changes",
    "usage_change_batches",
    "usage_rollup_day",
    "rollup_days_sealed",
    "rollup_days_reopened",
    "usage_weighted_hour",
    "weighted_grain",
    "usage_rollup_to_date",
    "rollup_hours_late",
];

/// Tables replicated on every node: small, and read by every process whatever the customer.
pub const EVERYWHERE: &[&str] = &[
    "schema_migrations",
    "api_keys",
    "catalog",
    "api_key_revocations",
    "ingest_writers",
    "ingest_writer_beats",
    "alert_firings",
    "webhook_deliveries",
    "webhook_attempts",
    "dashboard_secrets",
];

/// How often each node is pinged, and how long a ping may take.
const PING_EVERY: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// One node: its clients, its shard once known, and whether it answered its last ping.
pub(super) struct Node {
    pub(super) url: String,
    pub(super) client: Client,
    pub(super) reader: Client,
    /// Its shard's index, or [`UNKNOWN`] until it first answers.
    shard: AtomicUsize,
    alive: AtomicBool,
    /// Whether a refusal to let it join was logged (once).
    refused: AtomicBool,
}

/// The shard of a node that has not answered yet.
const UNKNOWN: usize = usize::MAX;

impl Node {
    /// Its shard's index, once it answered.
    fn shard(&self) -> Option<usize> {
        Some(self.shard.load(Ordering::Relaxed)).filter(|&s| s != UNKNOWN)
    }
}

/// A node given in `--clickhouse-url`: its URL, clients, and whether it answered at start.
pub(super) struct Given {
    pub(super) url: String,
    pub(super) client: Client,
    pub(super) reader: Client,
    pub(super) answered: bool,
}

/// What a process knows of one shard's rollups (per shard: each has its own marks and horizon).
#[derive(Default)]
pub(super) struct ShardState {
    pub(super) dirty: Arc<Marks>,
    pub(super) days: Arc<DayGrain>,
}

/// The cluster as this process sees it.
pub struct Cluster {
    name: String,
    quorum: u64,
    nodes: Vec<Node>,
    /// The shards' macro values, in shard order.
    shard_names: Vec<String>,
    pub(super) shards: Vec<ShardState>,
}

impl Cluster {
    /// Learns the shard of each node of `given` that answered, checks them against the
    /// cluster `name`, and starts pinging every node (those that did not answer join later).
    pub(super) async fn discover(
        name: &str,
        quorum: u64,
        given: Vec<Given>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut found = Vec::new();
        let mut late = Vec::new();
        let mut shard_count = 0;
        for node in given {
            if !node.answered {
                late.push(node);
                continue;
            }
            let Given {
                url,
                client,
                reader,
                ..
            } = node;
            let macro_value = shard_macro(&client).await?.ok_or_else(|| {
                StoreError::Rejected(format!(
                    "the ClickHouse at {url} defines no `shard` macro: cluster mode needs \
                     <macros><shard>…</shard><replica>…</replica></macros> in every node's config"
                ))
            })?;
            let shards = shards_of_cluster(&client, name).await?;
            if shards == 0 {
                return Err(StoreError::Rejected(format!(
                    "the ClickHouse at {url} has no cluster '{name}' in its remote_servers"
                )));
            }
            if shard_count != 0 && shards != shard_count {
                return Err(StoreError::Rejected(format!(
                    "the nodes disagree on cluster '{name}': {shard_count} shards, then {shards} at {url}"
                )));
            }
            shard_count = shards;
            found.push((url, client, reader, macro_value));
        }
        if found.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "no node of cluster '{name}' answers"
            )));
        }
        let order = shard_order(found.iter().map(|(.., m)| m.as_str()));
        if order.len() as u64 != shard_count {
            return Err(StoreError::Rejected(format!(
                "cluster '{name}' has {shard_count} shards, but the nodes given in \
                 --clickhouse-url cover {} ({}): give at least one node of every shard",
                order.len(),
                order.join(", ")
            )));
        }
        let mut nodes: Vec<Node> = found
            .into_iter()
            .map(|(url, client, reader, m)| Node {
                shard: AtomicUsize::new(order.iter().position(|o| *o == m).unwrap_or_default()),
                url,
                client,
                reader,
                alive: AtomicBool::new(true),
                refused: AtomicBool::new(false),
            })
            .collect();
        nodes.extend(late.into_iter().map(|g| Node {
            url: g.url,
            client: g.client,
            reader: g.reader,
            shard: AtomicUsize::new(UNKNOWN),
            alive: AtomicBool::new(false),
            refused: AtomicBool::new(false),
        }));
        let cluster = Arc::new(Self {
            name: name.to_owned(),
            quorum,
            shards: order.iter().map(|_| ShardState::default()).collect(),
            shard_names: order,
            nodes,
        });
        tracing::info!(
            cluster = name,
            shards = cluster.shards.len(),
            nodes = cluster.nodes.len(),
            waiting_for = cluster.nodes.iter().filter(|n| n.shard().is_none()).count(),
            insert_quorum = quorum,
            "clickhouse cluster"
        );
        tokio::spawn(ping_forever(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replicas of a shard that must hold an insert before it is acknowledged.
    pub fn quorum(&self) -> u64 {
        self.quorum
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard that holds `customer` of `tenant`.
    pub fn shard_of(&self, tenant: &str, customer: &str) -> usize {
        shard_of(tenant, customer, self.shards.len())
    }

    /// The node statements about `shard` go to (any node for `None`): the first that
    /// answered its last ping, in the order given; the first of them if none did.
    pub(super) fn node(&self, shard: Option<usize>) -> &Node {
        let mut holding = self
            .nodes
            .iter()
            .filter(|n| shard.is_none_or(|s| n.shard() == Some(s)));
        let first = holding.clone().next().unwrap_or(&self.nodes[0]);
        holding
            .find(|n| n.alive.load(Ordering::Relaxed))
            .unwrap_or(first)
    }

    /// The nodes of `shard`, those that answered their last ping first.
    pub(super) fn replicas(&self, shard: usize) -> Vec<&Node> {
        let mut replicas: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.shard() == Some(shard))
            .collect();
        replicas.sort_by_key(|n| !n.alive.load(Ordering::Relaxed));
        replicas
    }

    /// Every node's client.
    pub(super) fn clients(&self) -> impl Iterator<Item = &Client> {
        self.nodes().map(|n| &n.client)
    }

    /// Every node.
    pub(super) fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// Learns the shard of `node`, which did not answer at start and does now; whether it
    /// joined (a node whose macro names no shard of the cluster is left out).
    async fn join(&self, node: &Node) -> bool {
        let shard = match tokio::time::timeout(PING_TIMEOUT, self.shard_of_node(node)).await {
            Ok(Ok(shard)) => shard,
            Ok(Err(refusal)) => {
                if !node.refused.swap(true, Ordering::Relaxed) {
                    tracing::error!(url = %node.url, refusal = %refusal, "clickhouse node left out");
                }
                return false;
            }
            Err(_) => return false,
        };
        node.shard.store(shard, Ordering::Relaxed);
        tracing::info!(url = %node.url, shard, "clickhouse node joined");
        true
    }

    /// The shard of `node`, checked as at start: a `shard` macro naming one of this cluster's
    /// shards, and the same cluster in its `remote_servers`.
    async fn shard_of_node(&self, node: &Node) -> Result<usize, StoreError> {
        let value = shard_macro(&node.client)
            .await?
            .ok_or_else(|| StoreError::Rejected("it defines no `shard` macro".into()))?;
        let shards = shards_of_cluster(&node.client, &self.name).await?;
        if shards != self.shards.len() as u64 {
            return Err(StoreError::Rejected(format!(
                "its cluster '{}' has {shards} shards, not {}",
                self.name,
                self.shards.len()
            )));
        }
        self.shard_names
            .iter()
            .position(|s| *s == value)
            .ok_or_else(|| {
                StoreError::Rejected(format!("its shard '{value}' is not the cluster's"))
            })
    }

    /// Marks a node as not answering until its next ping says otherwise.
    pub(super) fn down(&self, url: &str) {
        if let Some(node) = self.nodes.iter().find(|n| n.url == url) {
            node.alive.store(false, Ordering::Relaxed);
        }
    }
}

/// Pings every node until the cluster is dropped.
async fn ping_forever(cluster: std::sync::Weak<Cluster>) {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        for node in &cluster.nodes {
            let bare = node.client.clone().with_database("default");
            let ping = bare.query("SELECT 1").fetch_one::<u8>();
            let mut alive = matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)));
            if alive && node.shard().is_none() {
                alive = cluster.join(node).await;
            }
            if node.alive.swap(alive, Ordering::Relaxed) != alive {
                tracing::warn!(url = %node.url, shard = node.shard(), alive, "clickhouse node changed state");
            }
        }
    }
}

/// How many shards cluster `name` has in the `remote_servers` of the node `client` reaches (0:
/// no such cluster). Read from its `default` database: the service's may not exist yet.
async fn shards_of_cluster(client: &Client, name: &str) -> Result<u64, StoreError> {
    Ok(client
        .clone()
        .with_database("default")
        .query("SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = ?")
        .bind(name)
        .fetch_one()
        .await?)
}

/// The `shard` macro of the node `client` reaches, if it defines one.
async fn shard_macro(client: &Client) -> Result<Option<String>, StoreError> {
    let values: Vec<String> = client
        .clone()
        .with_database("default")
        .query("SELECT substitution FROM system.macros WHERE macro = 'shard'")
        .fetch_all()
        .await?;
    Ok(values.into_iter().next())
}

/// The distinct shard macro values, in order: numerically when they all are numbers, else as
/// text.
fn shard_order<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut order: Vec<String> = values.map(str::to_owned).collect();
    order.sort();
    order.dedup();
    if order.iter().all(|v| v.parse::<u64>().is_ok()) {
        order.sort_by_key(|v| v.parse::<u64>().unwrap_or_default());
    }
    order
}

/// The shard of `customer` of `tenant` among `shards`: Lamping and Veach's jump consistent hash
/// of the xxh3 of both, so that adding a shard moves about one customer in `shards + 1`, and
/// only to the new shard.
pub fn shard_of(tenant: &str, customer: &str, shards: usize) -> usize {
    let mut bytes = Vec::with_capacity(tenant.len() + customer.len() + 1);
    bytes.extend_from_slice(tenant.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(customer.as_bytes());
    jump(xxhash_rust::xxh3::xxh3_64(&bytes), shards)
}

fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_ordered_by_their_macro_numerically_when_they_are_numbers() {
        assert_eq!(
            shard_order(["10", "2", "1", "2"].into_iter()),
            ["1", "2", "10"]
        );
        assert_eq!(shard_order(["b", "a"].into_iter()), ["a", "b"]);
        assert_eq!(
            shard_order(["2", "10", "1a"].into_iter()),
            ["10", "1a", "2"]
        );
    }

    #[test]
    fn a_customer_stays_on_its_shard_and_a_new_shard_takes_only_its_share() {
        let customers: Vec<String> = (0..10_000).map(|i| format!("cust_{i}")).collect();
        let on = |n| -> Vec<usize> { customers.iter().map(|c| shard_of("t", c, n)).collect() };
        let (two, three) = (on(2), on(3));
        assert_eq!(two, on(2), "placement is stable");
        let per_shard = |p: &[usize], s| p.iter().filter(|&&x| x == s).count();
        assert!((4_500..5_500).contains(&per_shard(&two, 0)), "balanced");
        let moved: Vec<usize> = (0..customers.len())
            .filter(|&i| two[i] != three[i])
            .collect();
        assert!(
            moved.iter().all(|&i| three[i] == 2),
            "moves go to the new shard only"
        );
        assert!(
            (2_900..3_800).contains(&moved.len()),
            "about a third moves: {}",
            moved.len()
        );
        assert_eq!(shard_of("t", "c", 1), 0);
        assert_ne!(
            (0..64)
                .map(|i| shard_of("a", &i.to_string(), 4))
                .collect::<Vec<_>>(),
            (0..64)
                .map(|i| shard_of("b", &i.to_string(), 4))
                .collect::<Vec<_>>(),
            "the tenant is part of the key"
        );
    }
}
