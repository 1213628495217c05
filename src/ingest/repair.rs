//! The rollups' maintenance in the background: hours marked in `rollup_dirty` are rebuilt from
//! samples and unmarked (`Store::repair_dirty_hours`), closed days compacted into the day grain
//! and re-opened days written again (`Store::compact_days`), and the sealed days of the
//! catalog's `weighted_sum` meters written into their grain (`Store::compact_weighted`). With
//! replicas, the one that takes a lock in Redis does it; a process that keeps ids in its own
//! memory is the only writer of its database and needs none.

use std::time::Duration;

use super::shared::Lock;
use crate::catalog::Catalog;
use crate::domain::Aggregation;
use crate::store::Store;
use crate::store::weighted_grain::WeightedMeter;

/// At most this many hours per round.
const HOURS_PER_ROUND: u64 = 1_000;
/// At most this many days sealed per round (a store that already holds months seals them over
/// several rounds), and customers' days written again.
const DAYS_PER_ROUND: u32 = 3;
const REOPENED_PER_ROUND: u64 = 1_000;
/// At most this many days of weighted meters written per round (all meters together).
const WEIGHTED_DAYS_PER_ROUND: u32 = 30;
/// How long a round waits for each of ClickHouse's mutations before it leaves the marks in
/// place (a round waits for at most a handful).
const MUTATION_PATIENCE: Duration = Duration::from_secs(120);
/// The lock outlives a round that waits its longest (and should it not, the next holder stops
/// this round's statements first: `Store::maintenance_client`).
const LOCK_MS: u64 = 30 * 60 * 1_000;

/// Maintains the rollups every `every`, holding `lock` (replicas) while it does.
pub fn spawn(
    (store, catalog): (Store, Catalog),
    mut lock: Option<Lock>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Some(lock) = &mut lock {
                match lock.try_take(LOCK_MS).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the maintenance lock");
                        continue;
                    }
                }
            }
            round(&store, &weighted_meters(&catalog)).await;
            if let Some(lock) = &mut lock {
                lock.give_back().await;
            }
        }
    })
}

/// One round on each shard (the one server, without a cluster): each keeps its own rollups.
async fn round(store: &Store, weighted: &[WeightedMeter]) {
    for shard in store.shards() {
        round_on(&shard, weighted).await;
    }
}

/// Every tenant's `weighted_sum` meters, with the series keys their samples are grouped by.
fn weighted_meters(catalog: &Catalog) -> Vec<WeightedMeter> {
    let mut meters = Vec::new();
    for (tenant, snapshot) in catalog.tenants() {
        let weighted = snapshot
            .meters
            .values()
            .filter(|m| m.aggregation == Aggregation::WeightedSum);
        meters.extend(weighted.map(|m| WeightedMeter {
            tenant: tenant.clone(),
            meter: m.slug.clone(),
            series_keys: m.group_by.clone(),
        }));
    }
    meters
}

async fn round_on(store: &Store, weighted: &[WeightedMeter]) {
    match store.may_have_dirty_hours().await {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = store
                .repair_dirty_hours(HOURS_PER_ROUND, MUTATION_PATIENCE)
                .await
            {
                tracing::warn!(error = %e, "rollup repair failed; the hours stay marked");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for hours to repair"),
    }
    let compacted = store
        .compact_days(DAYS_PER_ROUND, REOPENED_PER_ROUND, MUTATION_PATIENCE)
        .await;
    if let Err(e) = compacted {
        tracing::warn!(error = %e, "day grain maintenance failed; reads use the hour rollup");
    }
    if let Err(e) = store
        .compact_weighted(weighted, WEIGHTED_DAYS_PER_ROUND)
        .await
    {
        tracing::warn!(error = %e, "weighted grain maintenance failed; reads use the samples");
    }
}
