//! The rollups' maintenance in the background: hours marked in `rollup_dirty` are rebuilt from
//! samples and unmarked (`Store::repair_dirty_hours`), closed days compacted into the day grain
//! and re-opened days written again (`Store::compact_days`). With replicas, the one that takes a
//! lock in Redis does it; a process that keeps ids in its own memory is the only writer of its
//! database and needs none.

use std::time::Duration;

use super::shared::Lock;
use crate::store::Store;

/// At most this many hours per round.
const HOURS_PER_ROUND: u64 = 1_000;
/// At most this many days sealed per round (a store that already holds months seals them over
/// several rounds), and customers' days written again.
const DAYS_PER_ROUND: u32 = 3;
const REOPENED_PER_ROUND: u64 = 1_000;
/// How long a round waits for each of ClickHouse's mutations before it leaves the marks in
/// place (a round waits for at most a handful).
const MUTATION_PATIENCE: Duration = Duration::from_secs(120);
/// The lock outlives a round that waits its longest (and should it not, the next holder stops
/// this round's statements first: `Store::maintenance_client`).
const LOCK_MS: u64 = 30 * 60 * 1_000;

/// Maintains the rollups every `every`, holding `lock` (replicas) while it does.
pub fn spawn(store: Store, mut lock: Option<Lock>, every: Duration) -> tokio::task::JoinHandle<()> {
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
            round(&store).await;
            if let Some(lock) = &mut lock {
                lock.give_back().await;
            }
        }
    })
}

/// One round on each shard (the one server, without a cluster): each keeps its own rollups.
async fn round(store: &Store) {
    for shard in store.shards() {
        round_on(&shard).await;
    }
}

async fn round_on(store: &Store) {
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
}
