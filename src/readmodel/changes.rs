//! How the answers kept in memory follow changes. This process's batches are folded into them
//! as they commit (the batcher tells, [`BatchObserver`]); every other change (other replicas,
//! `backfill`, repairs of in-doubt batches) drops the answers of the customers it touches, by
//! polling `usage_change_batches`, which every insert with samples feeds through a view; rows
//! of the batches this process is inserting or has folded are skipped there. Other processes'
//! events therefore show within one poll interval.

use std::time::Duration;

use rust_decimal::Decimal;

use super::UsageReader;
use super::cache::Sample;
use crate::ingest::batcher::BatchObserver;
use crate::store::StoreError;
use crate::store::rows::{DECIMAL_SCALE, EventRow};

/// How far before the last poll's server time each poll looks again. A change row may be
/// visible before the samples of its insert (views run one after another), or a process may
/// learn of marked hours up to a second late (`Store::may_have_dirty_hours`); a read in such a
/// gap may keep an answer that misses the change, and seeing the row again drops it. Also
/// covers servers' clocks in a cluster.
const POLL_OVERLAP_S: u32 = 10;

/// The longest a poll may take; past it, it counts as failed.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the old days of `usage_change_batches` are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Drops the kept answers of customers whose usage changed, as `usage_change_batches` says,
/// every `every`; every [`PRUNE_EVERY`], drops days of that table before yesterday. `since` is
/// the mark of a poll made before (see [`poll`]); without one, the first poll is made at once.
pub(super) fn spawn_poll(
    reader: UsageReader,
    every: Duration,
    mut since: Option<Vec<u32>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pruned_at = tokio::time::Instant::now();
        let mut first = since.is_none();
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(every).await;
            }
            let polled = tokio::time::timeout(POLL_TIMEOUT, poll(&reader, since.as_deref())).await;
            match polled.unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into()))) {
                Ok(now) => since = Some(now),
                Err(e) => {
                    tracing::warn!(error = %e, "polling usage changes failed; cached usage dropped");
                    reader.cache().clear();
                }
            }
            if pruned_at.elapsed() >= PRUNE_EVERY {
                pruned_at = tokio::time::Instant::now();
                for shard in reader.store().shards() {
                    if let Err(e) = shard
                        .drop_days_before_yesterday("usage_change_batches")
                        .await
                    {
                        tracing::warn!(error = %e, "dropping old usage changes failed");
                    }
                }
            }
        }
    })
}

/// Drops the answers of the customers changed since `since` (server seconds, per shard; on
/// the first poll everything kept is dropped); returns each server's time, taken before
/// reading its changes.
pub async fn poll(reader: &UsageReader, since: Option<&[u32]>) -> Result<Vec<u32>, StoreError> {
    let began = std::time::Instant::now();
    let shards = reader.store().shards();
    let mut now = Vec::with_capacity(shards.len());
    for shard in &shards {
        now.push(shard.server_now().await?);
    }
    let Some(since) = since.filter(|s| s.len() == shards.len()) else {
        // Nothing is known of what happened before the first poll.
        reader.cache().clear();
        reader.cache().polled(began);
        return Ok(now);
    };
    let own = reader.cache().own_batches();
    for (shard, since) in shards.iter().zip(since) {
        let changed = shard
            .usage_changed_since(since.saturating_sub(POLL_OVERLAP_S), &own)
            .await?;
        if !changed.is_empty() {
            reader
                .cache()
                .invalidate(changed.iter().map(|(t, c)| (t.as_str(), c.as_str())));
        }
    }
    reader.cache().polled(began);
    Ok(now)
}

impl BatchObserver for UsageReader {
    fn inserting(&self, batch_id: u64, rows: &[EventRow]) {
        self.cache()
            .begin_write(batch_id, customers_with_samples(rows));
    }

    fn committed(&self, batch_id: u64, rows: &[EventRow]) {
        let late_before = late_before();
        if rows
            .iter()
            .any(|r| !r.sample_meter.is_empty() && i64::from(r.ts) < late_before)
        {
            // The view re-opened their days in the day grain (sql/0015): reads of this process
            // look the marks up from now on, so that they see these events.
            for shard in self.store().shards() {
                shard.reopened_days_marked();
            }
        }
        self.cache().fold(batch_id, samples(rows));
    }

    fn failed(&self, batch_id: u64, rows: &[EventRow]) {
        self.cache().abandon(batch_id, customers_with_samples(rows));
    }
}

/// Events before this moment (epoch seconds) may be of a day the day grain has sealed: a day
/// before today (UTC). A day is sealed an hour after it ends by the server's clock, which
/// leaves that hour for the server's clock running ahead of this one.
fn late_before() -> i64 {
    let now = chrono::Utc::now().timestamp();
    now - now.rem_euclid(86_400)
}

/// (tenant, customer) of each row that carries samples.
fn customers_with_samples(rows: &[EventRow]) -> impl Iterator<Item = (&str, &str)> {
    rows.iter()
        .filter(|r| !r.sample_meter.is_empty())
        .map(|r| (&*r.tenant, r.customer.as_str()))
}

/// Every meter sample of `rows`, as the cache folds them.
fn samples(rows: &[EventRow]) -> impl Iterator<Item = Sample<'_>> {
    rows.iter().flat_map(|r| {
        (0..r.sample_meter.len()).map(move |i| Sample {
            tenant: &r.tenant,
            customer: &r.customer,
            meter: &r.sample_meter[i],
            ts_ms: r.ts_ms,
            keys: &r.sample_group_keys[i],
            values: &r.sample_group_values[i],
            value: Decimal::from_i128_with_scale(r.sample_value[i], DECIMAL_SCALE),
        })
    })
}
