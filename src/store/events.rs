//! Inserts of event batches, each attempt under its own query id, so that an attempt whose
//! outcome is unknown here can be stopped on the server before anyone looks for its rows.

use std::time::Duration;

use super::rows::EventRow;
use super::{Store, StoreError, queries};

/// How long sending a batch may take, and then waiting for the server's answer: an attempt
/// that has not reached the server within [`SEND_TIMEOUT`] never does, and none lasts longer
/// than [`MAX_ATTEMPT`] on this side.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const END_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_ATTEMPT: Duration = Duration::from_secs(15);

impl Store {
    /// The query id of attempt `attempt` to insert batch `batch_id`.
    fn insert_query_id(&self, batch_id: u64, attempt: u32) -> String {
        format!("mh:{}:{batch_id:016x}:{attempt}", self.database())
    }

    /// The `LIKE` pattern of this database's insert query ids, followed by `rest`.
    pub(super) fn insert_pattern(&self, rest: &str) -> String {
        let database = self
            .database()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("mh:{database}:{rest}")
    }

    /// Inserts `rows`, attempt `attempt` of batch `batch_id`, in one statement; in cluster
    /// mode one per shard, at once, each acknowledged by `--insert-quorum` replicas of its
    /// shard. Every attempt of a batch sends each shard the same block, so a block that landed
    /// before is dropped by the replicated table's deduplication: an attempt lands once.
    pub async fn insert_events(
        &self,
        rows: &[EventRow],
        batch_id: u64,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let query_id = self.insert_query_id(batch_id, attempt);
        let Some(cluster) = &self.cluster else {
            return insert_rows(self.client(), rows.iter(), &query_id).await;
        };
        let mut by_shard: Vec<Vec<&EventRow>> = vec![Vec::new(); cluster.shard_count()];
        for row in rows {
            by_shard[cluster.shard_of(&row.tenant, &row.customer)].push(row);
        }
        let inserts = by_shard
            .iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(shard, rows)| self.insert_on_shard(cluster, shard, rows, &query_id));
        let failed = futures_util::future::join_all(inserts)
            .await
            .into_iter()
            .find_map(Result::err);
        failed.map_or(Ok(()), Err)
    }

    /// Inserts one shard's rows of a batch into a replica of it that answers, with the quorum;
    /// another replica is tried when one cannot be reached.
    async fn insert_on_shard(
        &self,
        cluster: &super::Cluster,
        shard: usize,
        rows: &[&EventRow],
        query_id: &str,
    ) -> Result<(), StoreError> {
        let query_id = format!("{query_id}:{shard}");
        let mut unreachable = None;
        for node in cluster.replicas(shard) {
            let mut client = node.client.clone().with_setting("insert_deduplicate", "1");
            if cluster.quorum() > 1 {
                client = client
                    .with_setting("insert_quorum", cluster.quorum().to_string())
                    .with_setting("insert_quorum_timeout", QUORUM_TIMEOUT_MS.to_string());
            }
            match insert_rows(&client, rows.iter().copied(), &query_id).await {
                Err(StoreError::Unavailable(e)) if !e.contains("Code: ") => {
                    tracing::warn!(url = %node.url, shard, error = %e, "clickhouse node unreachable; trying another replica");
                    cluster.down(&node.url);
                    unreachable = Some(StoreError::Unavailable(e));
                }
                result => return result,
            }
        }
        Err(unreachable.unwrap_or_else(|| {
            StoreError::Unavailable(format!("no replica of shard {shard} answers"))
        }))
    }

    /// Stops every attempt to insert batch `batch_id` still running on the server, and waits
    /// for them to stop.
    pub async fn kill_inserts_of(&self, batch_id: u64) -> Result<(), StoreError> {
        let pattern = self.insert_pattern(&format!("{batch_id:016x}:%"));
        self.kill_queries(&pattern).await
    }

    /// Stops every insert of events into this database still running on the server.
    pub async fn kill_all_inserts(&self) -> Result<(), StoreError> {
        let pattern = self.insert_pattern("%");
        self.kill_queries(&pattern).await
    }

    /// Stops the statements whose query id matches `pattern`: on every node, in cluster mode
    /// (a node that cannot be reached runs none that could land).
    pub(super) async fn kill_queries(&self, pattern: &str) -> Result<(), StoreError> {
        let Some(cluster) = &self.cluster else {
            let kill = queries::kill_queries(pattern).query(self.client());
            return Ok(kill.execute().await?);
        };
        for client in cluster.clients() {
            match queries::kill_queries(pattern).query(client).execute().await {
                Ok(()) => {}
                Err(e) => match StoreError::from(e) {
                    StoreError::Unavailable(e) if !e.contains("Code: ") => {
                        tracing::warn!(error = %e, "cannot stop queries on an unreachable node");
                    }
                    e => return Err(e),
                },
            }
        }
        Ok(())
    }
}

/// How long an insert waits for its quorum of replicas; under `END_TIMEOUT`.
const QUORUM_TIMEOUT_MS: u64 = 5_000;

/// Inserts `rows` through `client` in one statement with id `query_id`.
async fn insert_rows<'a>(
    client: &clickhouse::Client,
    rows: impl Iterator<Item = &'a EventRow>,
    query_id: &str,
) -> Result<(), StoreError> {
    let mut insert = client
        .insert::<EventRow>("events")
        .await?
        .with_setting("query_id", query_id)
        .with_timeouts(Some(SEND_TIMEOUT), Some(END_TIMEOUT));
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}
