//! ClickHouse, and nothing else: the client and its read budget, error classes, row structs,
//! statements and their values (`sql`, `queries`, `usage_sql`, `series_sql`), migrations,
//! the catalog's table, the dashboards' (`dashboard`), and a server this process owns (`local`).

pub mod as_of_sql;
pub mod catalog;
mod changes;
pub mod cluster;
pub use cluster::Cluster;
pub mod combined_sql;
pub mod dashboard;
mod days;
pub use days::{Compacted, DayParts};
mod error;
mod events;
pub mod keys;
pub use events::{MAX_ATTEMPT, SEND_TIMEOUT};
pub mod local;
pub mod migrate;
pub mod priced_sql;
pub mod queries;
mod repair;
mod replicas;
pub use repair::Repaired;
pub mod rows;
pub mod series_sql;
pub mod sql;
pub mod to_date_sql;
pub mod usage_sql;
pub mod webhooks;
pub mod weighted_grain;
pub mod weighted_sql;

pub use error::StoreError;

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;

use crate::config::StoreConfig;

/// `client` whose statements stop past `seconds` or `bytes` (0: no bound).
fn with_budget(client: Client, (seconds, bytes): (u64, u64)) -> Client {
    client
        .with_setting("max_execution_time", seconds.to_string())
        .with_setting("max_memory_usage", bytes.to_string())
}

/// A handle on meterhouse's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The one server's client (in cluster mode the first node's, used only to start): every
    /// statement goes through [`Store::client`] and [`Store::reader`], which route.
    first_client: Client,
    /// `first_client` with the read budget of a request's statements.
    first_reader: Client,
    database: String,
    dirty: Arc<changes::Marks>,
    days: Arc<days::DayGrain>,
    /// `--cluster` and `--insert-quorum`, until `connect` learns the cluster.
    wanted_cluster: Option<(String, u64)>,
    /// The nodes given, in cluster mode (`client` is the first's).
    urls: Vec<String>,
    cluster: Option<Arc<Cluster>>,
    /// The shard this handle reads and writes, in cluster mode (`None`: the tables every node
    /// holds).
    shard: Option<usize>,
}

impl Store {
    /// A client for `url`, without touching the network. With `--cluster`, `url` lists the
    /// cluster's nodes, comma-separated.
    pub fn new(url: &str, config: &StoreConfig) -> Self {
        let urls: Vec<String> = match config.cluster {
            Some(_) => url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            None => vec![url.to_owned()],
        };
        let (client, reader) = clients_of(urls.first().map_or(url, String::as_str), config);
        Self {
            first_client: client,
            first_reader: reader,
            database: config.database.clone(),
            dirty: Arc::default(),
            days: Arc::default(),
            wanted_cluster: config
                .cluster
                .clone()
                .map(|name| (name, config.insert_quorum.unwrap_or(2))),
            urls,
            cluster: None,
            shard: None,
        }
    }

    /// Checks the server, creates the database and enables schema validation where supported;
    /// in cluster mode, every node given, and learns which shard each is.
    pub async fn connect(mut self) -> Result<Self, StoreError> {
        if self.wanted_cluster.is_some() {
            return self.connect_cluster().await;
        }
        let bare = self.first_client.clone().with_database("default");
        let version: String = bare.query("SELECT version()").fetch_one().await?;
        self.validate_from(&version);
        tracing::info!(clickhouse_version = %version, database = %self.database, "connected to clickhouse");
        let create = format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_ident(&self.database)
        );
        bare.query(&create).execute().await?;
        Ok(self)
    }

    /// Schema validation on servers that support it (24 and later).
    fn validate_from(&mut self, version: &str) {
        if major_version(version) >= 24 {
            self.first_client = self.first_client.clone().with_validation(true);
            self.first_reader = self.first_reader.clone().with_validation(true);
        }
    }

    /// [`Store::connect`] in cluster mode: every node given that answers, which shard each is,
    /// and the database made `ON CLUSTER` unless it exists (`ON CLUSTER` waits for every node
    /// of the cluster: a start with one of them down would wait for it).
    async fn connect_cluster(mut self) -> Result<Self, StoreError> {
        let Some((name, quorum)) = self.wanted_cluster.clone() else {
            return Ok(self);
        };
        let mut nodes = Vec::new();
        let mut version = None;
        for url in &self.urls {
            let bare = self
                .first_client
                .clone()
                .with_url(url)
                .with_database("default");
            match bare.query("SELECT version()").fetch_one::<String>().await {
                Ok(v) => {
                    version.get_or_insert(v);
                    nodes.push((url.clone(), true));
                }
                // It joins once it answers; every shard must have a node that answers now.
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "clickhouse node not answering; used once it does");
                    nodes.push((url.clone(), false));
                }
            }
        }
        let Some(version) = version else {
            return Err(StoreError::Unavailable(format!(
                "no node of cluster '{name}' answers"
            )));
        };
        self.validate_from(&version);
        tracing::info!(clickhouse_version = %version, database = %self.database, "connected to clickhouse");
        let nodes = nodes
            .into_iter()
            .map(|(url, answered)| {
                // Only the events' own insert is deduplicated by block (a retried batch lands
                // once): the maintenance may write a block equal to an earlier one on purpose.
                let client = self.first_client.clone().with_url(&url);
                let client = client.with_setting("insert_deduplicate", "0");
                let reader = self.first_reader.clone().with_url(&url);
                cluster::Given {
                    url,
                    client,
                    reader,
                    answered,
                }
            })
            .collect();
        let cluster = Cluster::discover(&name, quorum, nodes).await?;
        let bare = cluster.node(None).client.clone().with_database("default");
        let exists: u64 = bare
            .query("SELECT count() FROM system.databases WHERE name = ?")
            .bind(&self.database)
            .fetch_one()
            .await?;
        if exists == 0 {
            let create = format!(
                "CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {}",
                quote_ident(&self.database),
                quote_ident(cluster.name())
            );
            bare.query(&create)
                .with_setting("distributed_ddl_task_timeout", "120")
                .execute()
                .await?;
        }
        self.cluster = Some(cluster);
        Ok(self)
    }

    /// The client of this handle's statements: in cluster mode, a node of its shard (or any
    /// node, for the tables every node holds) that answers.
    pub fn client(&self) -> &Client {
        match &self.cluster {
            Some(cluster) => &cluster.node(self.shard).client,
            None => &self.first_client,
        }
    }

    /// The client for the reads a request makes: each statement is bounded in time and memory
    /// (map its errors with [`StoreError::from_read`]).
    pub fn reader(&self) -> &Client {
        match &self.cluster {
            Some(cluster) => &cluster.node(self.shard).reader,
            None => &self.first_reader,
        }
    }

    /// The cluster, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// This handle bound to shard `shard` (cluster mode), with that shard's view of the
    /// rollups.
    fn on_shard(&self, shard: usize) -> Self {
        let mut store = self.clone();
        if let Some(cluster) = &self.cluster {
            store.shard = Some(shard);
            store.dirty = cluster.shards[shard].dirty.clone();
            store.days = cluster.shards[shard].days.clone();
        }
        store
    }

    /// The handle for the rows of `customer` of `tenant`: on one server, this one; in cluster
    /// mode, one bound to the customer's shard.
    pub fn for_customer(&self, tenant: &str, customer: &str) -> Self {
        match &self.cluster {
            Some(cluster) => self.on_shard(cluster.shard_of(tenant, customer)),
            None => self.clone(),
        }
    }

    /// One handle per shard, for what spans customers (one, this one, on one server). Rows of a
    /// customer are on one shard only, so what each returns per customer is whole.
    pub fn shards(&self) -> Vec<Self> {
        match &self.cluster {
            Some(cluster) => (0..cluster.shard_count())
                .map(|s| self.on_shard(s))
                .collect(),
            None => vec![self.clone()],
        }
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// `SELECT 1` with a short deadline: is the server answering right now?
    pub async fn ping(&self) -> Result<(), StoreError> {
        let query = self.client().query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(Duration::from_secs(2), query).await {
            Ok(result) => result.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("ping timed out".into())),
        }
    }
}

/// The client of statements and the one of a request's reads (bounded), for `url`.
fn clients_of(url: &str, config: &StoreConfig) -> (Client, Client) {
    // A server this process owns has a generated password, unless one is given.
    let password = match local::password_of(url) {
        Some(owned) if config.clickhouse_password.is_empty() => owned,
        _ => config.clickhouse_password.clone(),
    };
    let client = Client::default()
        .with_url(url)
        .with_user(&config.clickhouse_user)
        .with_password(password)
        .with_database(&config.database)
        // Old servers lack RowBinaryWithNamesAndTypes input; `connect` turns it back on.
        .with_validation(false);
    let reader = with_budget(
        client.clone(),
        (config.read_timeout_s, config.read_memory_bytes),
    );
    (client, reader)
}

fn major_version(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Quotes an identifier that comes from configuration (a database name), never from requests.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_to_their_major_number() {
        assert_eq!(major_version("18.16.1"), 18);
        assert_eq!(major_version("25.3.2.1"), 25);
        assert_eq!(major_version("garbage"), 0);
    }
}
