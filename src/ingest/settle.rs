//! Batches in doubt: an insert that failed with a passing error may or may not have landed.
//! Its ids are held, refused to anyone who sends them again, until the batch is settled
//! against ClickHouse by its batch id: landed ids become accepted ones, the others are released.

use std::collections::HashMap;

use super::dedup::{KeySet, key};
use crate::store::{Store, StoreError, queries};

/// One batch whose insert failed ambiguously, and, once settled, which of its ids landed.
pub struct InDoubtBatch {
    pub batch_id: u64,
    /// When it was stamped (its rows' `ingested_ms`), epoch ms.
    pub ingested_ms: i64,
    pub keys: Vec<u128>,
    /// The ids found stored: all of them, none, or (an insert that stopped between the parts
    /// of a batch spanning several months) some.
    pub landed: KeySet,
}

/// The batches in doubt, and all their keys.
#[derive(Default)]
pub struct InDoubt {
    batches: Vec<InDoubtBatch>,
    keys: KeySet,
}

impl InDoubt {
    /// Holds `keys` of `batch_id` until the batch is settled.
    pub(super) fn hold(&mut self, batch_id: u64, ingested_ms: i64, keys: KeySet) {
        self.keys.extend(keys.iter().copied());
        self.batches.push(InDoubtBatch {
            batch_id,
            ingested_ms,
            keys: keys.into_iter().collect(),
            landed: KeySet::default(),
        });
    }

    /// Whether any of `keys` is held.
    pub(super) fn holds_any(&self, keys: &[u128]) -> bool {
        keys.iter().any(|k| self.keys.contains(k))
    }

    /// Settles every batch (its inserts still running are stopped first), and hands them back
    /// with whether each landed; none is held any longer. On an error all stay held.
    pub(super) async fn settle(&mut self, store: &Store) -> Result<Vec<InDoubtBatch>, StoreError> {
        if self.batches.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<u64> = self.batches.iter().map(|b| b.batch_id).collect();
        let since = self
            .batches
            .iter()
            .map(|b| b.ingested_ms)
            .min()
            .unwrap_or(0);
        for &batch_id in &ids {
            store.kill_inserts_of(batch_id).await?;
        }
        let mut landed = landed_keys(store, &ids, since).await?;
        let mut settled = std::mem::take(&mut self.batches);
        for batch in &mut settled {
            batch.landed = landed.remove(&batch.batch_id).unwrap_or_default();
            tracing::info!(
                batch_id = batch.batch_id,
                landed = batch.landed.len(),
                batch_events = batch.keys.len(),
                "settled in-doubt batch"
            );
        }
        self.keys.clear();
        Ok(settled)
    }

    /// The stamp of the oldest batch held.
    pub(super) fn oldest_ms(&self) -> Option<i64> {
        self.batches.iter().map(|b| b.ingested_ms).min()
    }

    /// Whether nothing is in doubt.
    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// The ids of these batches that ClickHouse holds, per batch (none: no entry), after
/// [`landed`] completed what their inserts left undone. Per id, not per batch: an insert of a
/// batch spanning several months writes one part per month, and may stop between them.
pub async fn landed_keys(
    store: &Store,
    batch_ids: &[u64],
    since_ms: i64,
) -> Result<HashMap<u64, KeySet>, StoreError> {
    let mut by_batch: HashMap<u64, KeySet> = HashMap::new();
    // In cluster mode a batch's rows are spread over the shards: each is looked up in each.
    for shard in store.shards() {
        if landed_on(&shard, batch_ids, since_ms).await?.is_empty() {
            continue;
        }
        let rows: Vec<(u64, String, String)> = queries::landed_ids(since_ms, batch_ids)
            .query(shard.client())
            .fetch_all()
            .await?;
        for (batch_id, tenant, id) in rows {
            by_batch
                .entry(batch_id)
                .or_default()
                .insert(key(&tenant, &id));
        }
    }
    Ok(by_batch)
}

/// [`landed_on`] every shard (the one server, without a cluster): the batches found on any.
pub async fn landed(
    store: &Store,
    batch_ids: &[u64],
    since_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    let mut found = Vec::new();
    for shard in store.shards() {
        for batch_id in landed_on(&shard, batch_ids, since_ms).await? {
            if !found.contains(&batch_id) {
                found.push(batch_id);
            }
        }
    }
    Ok(found)
}

/// Which of these batches one shard (or the one server) holds. A batch found in `events` whose samples are
/// missing, for some of its events or all (an insert attempt stopped between the table and its
/// view), gets them re-derived, and the
/// hours of every batch found are marked for readers to take from samples (sql/0007).
async fn landed_on(
    store: &Store,
    batch_ids: &[u64],
    since_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    let client = store.client();
    let in_events: Vec<(u64, u64)> = queries::landed_batches(since_ms, batch_ids)
        .query(client)
        .fetch_all()
        .await?;
    if in_events.is_empty() {
        return Ok(vec![]);
    }
    let sampled: Vec<(u64, u64)> = queries::batch_samples(since_ms, batch_ids)
        .query(client)
        .fetch_all()
        .await?;
    for &(batch_id, expected) in &in_events {
        let have = sampled
            .iter()
            .find(|(id, _)| *id == batch_id)
            .map_or(0, |(_, n)| *n);
        if have >= expected {
            continue;
        }
        // The events of one insert attempt get their samples together or not at all (one
        // block each); a batch completed by a later attempt may have them for some events only.
        tracing::warn!(
            batch_id,
            samples = expected,
            have,
            "re-deriving the missing samples of a batch from events"
        );
        queries::repair_batch_samples(batch_id)
            .query(client)
            .execute()
            .await?;
    }
    // Whether the rollup's view ran for these batches is not knowable: their hours are read
    // from the (now complete) samples from here on.
    let landed: Vec<u64> = in_events.into_iter().map(|(id, _)| id).collect();
    queries::mark_dirty_hours(since_ms, &landed)
        .query(client)
        .execute()
        .await?;
    store.dirty_hours_marked();
    // Period-to-date states may cover these hours (past the day grain's horizon): those written
    // before are never read again.
    queries::mark_hours_late(since_ms, &landed)
        .query(client)
        .execute()
        .await?;
    // Every process drops what it holds of these customers (sql/0011), this one included.
    queries::mark_usage_changed(since_ms, &landed)
        .query(client)
        .execute()
        .await?;
    tracing::warn!(
        batches = landed.len(),
        "hours of in-doubt batches will be read from samples"
    );
    Ok(landed)
}
