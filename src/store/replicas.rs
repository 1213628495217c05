//! What a maintenance round waits for with replicas (cluster mode), before it clears the marks
//! that send reads elsewhere or moves the day grain's horizon: reads go to any replica of the
//! shard, and each replica applies the round's deletions and fetches the rows it wrote on its
//! own.
//!
//! - A deletion (a mutation) is done once the node that made it knows it and every replica of
//!   the shard knows it and has done all of the table's mutations: until then a replica holds
//!   the rows it deletes beside those written since, and would count them twice.
//! - Rows the round wrote (the day grain's, and the weighted grain's of the days it writes
//!   again) are held once every replica counts at least as many of them as that node: until
//!   then a replica would answer without them. The day grain's deletions are also
//!   checked by their effect: no replica holds the rows they delete.
//! - A round starts only if that node is not behind its shard: it reads the hour rollup, the
//!   samples and the marks as that node holds them.
//!
//! A replica that does not answer within [`REPLICA_TIMEOUT`] has not done, or does not hold,
//! anything: the round waits, then leaves its marks, and reads stay exact (and slower) until
//! every replica answers. Every replica of each shard must be given in `--clickhouse-url`.

use std::future::Future;
use std::time::Duration;

use clickhouse::Client;

use super::queries;
use super::sql::Sql;
use super::{Store, StoreError};

/// How long one question to a replica may take.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);
/// How far behind its shard the node of a round may be (seconds of unfetched inserts).
const MAX_LAG_S: u64 = 30;

/// A mutation a round made, to wait for with [`Store::mutations_done`].
pub(super) struct Mutation<'a> {
    /// The round's node.
    client: &'a Client,
    table: &'static str,
    /// With replicas, the table's newest mutation on that node before this one was made: its
    /// own is newer (ids are the same zero-padded numbers on every replica).
    before: Option<String>,
}

/// One replica of the shard: its URL (for the logs) and client.
type Replica = (String, Client);

impl Store {
    /// The replicas holding this handle's tables, in cluster mode (every node for the tables
    /// every node holds); none for one server.
    fn replicas(&self) -> Vec<Replica> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let nodes = match self.shard {
            Some(shard) => cluster.replicas(shard),
            None => cluster.nodes().collect(),
        };
        nodes
            .into_iter()
            .map(|node| (node.url.clone(), node.client.clone()))
            .collect()
    }

    /// Makes the mutation `statement` of `table` through the round's `client`.
    pub(super) async fn mutate<'a>(
        &self,
        client: &'a Client,
        table: &'static str,
        statement: Sql,
    ) -> Result<Mutation<'a>, StoreError> {
        let before = match self.cluster {
            Some(_) => Some(
                queries::newest_mutation(table)
                    .query(client)
                    .fetch_one()
                    .await?,
            ),
            None => None,
        };
        statement.query(client).execute().await?;
        Ok(Mutation {
            client,
            table,
            before,
        })
    }

    /// Whether `mutation` is done (see the module's notes), waiting at most `patience`.
    pub(super) async fn mutations_done(
        &self,
        mutation: &Mutation<'_>,
        patience: Duration,
    ) -> Result<bool, StoreError> {
        let done = waited(patience, || self.mutation_done_now(mutation)).await?;
        if !done {
            tracing::warn!(
                table = mutation.table,
                "a deletion is not done on every replica yet"
            );
        }
        Ok(done)
    }

    async fn mutation_done_now(&self, mutation: &Mutation<'_>) -> Result<bool, StoreError> {
        let table = mutation.table;
        let Some(before) = &mutation.before else {
            let pending: u64 = queries::pending_mutations(table)
                .query(mutation.client)
                .fetch_one()
                .await?;
            return Ok(pending == 0);
        };
        let newest: String = queries::newest_mutation(table)
            .query(mutation.client)
            .fetch_one()
            .await?;
        if newest <= *before {
            // Not loaded from ZooKeeper yet, even on the node that made it.
            return Ok(false);
        }
        let status = queries::mutations_known_and_pending(table, &newest);
        for (url, client) in self.replicas() {
            match ask(&client, &status).await {
                Ok((1, 0)) => {}
                Ok(_) => return Ok(false),
                Err(error) => {
                    tracing::debug!(%error, replica = %url, table, "a replica does not answer");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Whether every replica holds at least the rows `count` (a `SELECT count()`) finds through
    /// the round's `client`, waiting at most `patience`.
    pub(super) async fn replicas_hold(
        &self,
        client: &Client,
        count: &Sql,
        patience: Duration,
    ) -> Result<bool, StoreError> {
        let replicas = self.replicas();
        if replicas.len() < 2 {
            return Ok(true);
        }
        let written: u64 = count.query(client).fetch_one().await?;
        replicas_count(&replicas, count, |rows| rows >= written, patience).await
    }

    /// Whether no replica holds any of the rows `count` (a `SELECT count()`) finds, waiting at
    /// most `patience`: what a deletion leaves, looked at where `system.mutations` may call a
    /// replicated deletion done a moment before its parts are rewritten (18.16).
    pub(super) async fn replicas_lack(
        &self,
        count: &Sql,
        patience: Duration,
    ) -> Result<bool, StoreError> {
        if self.cluster.is_none() {
            return Ok(true);
        }
        replicas_count(&self.replicas(), count, |rows| rows == 0, patience).await
    }

    /// Whether the round's node (`client`) is behind its shard: inserts it has not fetched are
    /// older than [`MAX_LAG_S`] (never for one server).
    pub(super) async fn behind(&self, client: &Client) -> Result<bool, StoreError> {
        if self.cluster.is_none() {
            return Ok(false);
        }
        let lag: u64 = client.query(queries::REPLICATION_LAG).fetch_one().await?;
        if lag > MAX_LAG_S {
            tracing::warn!(
                lag_s = lag,
                "the maintenance's node is behind its shard; the round waits"
            );
        }
        Ok(lag > MAX_LAG_S)
    }
}

/// Whether `count` on every replica satisfies `enough`, waiting at most `patience`.
async fn replicas_count(
    replicas: &[Replica],
    count: &Sql,
    enough: impl Fn(u64) -> bool,
    patience: Duration,
) -> Result<bool, StoreError> {
    let agreed = waited(patience, || async {
        for (url, replica) in replicas {
            match ask::<u64>(replica, count).await {
                Ok(rows) if enough(rows) => {}
                Ok(_) => return Ok(false),
                Err(error) => {
                    tracing::debug!(%error, replica = %url, "a replica does not answer");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })
    .await?;
    if !agreed {
        tracing::warn!("a maintenance round's rows are not as written on every replica yet");
    }
    Ok(agreed)
}

/// `statement`'s one row from `client`, within [`REPLICA_TIMEOUT`].
async fn ask<T>(client: &Client, statement: &Sql) -> Result<T, StoreError>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    tokio::time::timeout(REPLICA_TIMEOUT, statement.query(client).fetch_one::<T>())
        .await
        .map_err(|_| StoreError::Rejected("the replica did not answer in time".into()))?
        .map_err(StoreError::from)
}

/// Calls `check` every 100 ms until it holds or `patience` is out; whether it held.
async fn waited<F, Fut>(patience: Duration, mut check: F) -> Result<bool, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
