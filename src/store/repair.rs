//! The repair of hours marked in `rollup_dirty` (sql/0007): hours that an interrupted insert may
//! have left incomplete in the hour rollup, read from samples until they are repaired here.
//!
//! A round, by the server's clock (`t0` its start):
//! 1. takes the hours marked before `t0`;
//! 2. deletes their rollup rows (a mutation: it touches the parts that exist when it is made),
//!    then writes them again from `usage_samples`, exactly as the rollup's view would;
//! 3. waits for the deletion to be done, and with replicas for every replica of the shard to
//!    have done it and to hold the rows written again (reads go to any of them; a round starts
//!    only on a node not behind its shard: `store::replicas`);
//! 4. unmarks the hours no batch recorded since `t0 - RACE_WINDOW_S` may have written to, of the
//!    marks made before `t0`. A batch that wrote into an hour meanwhile may have put its rows in
//!    the rollup before the deletion while its samples missed the rewrite (or the other way
//!    round): such an hour stays marked, still read from samples, and is rebuilt in a later round.
//!    Every batch's change is recorded (sql/0011) before its rollup or samples rows are written,
//!    so none escapes the look-up; a batch settled later marks its hours again, after `t0`.
//!
//! Readers take a marked hour from samples throughout, so they never see a half-repaired one. Two
//! rounds must not run at once on one database: with replicas, one holds a lock while it repairs.

use std::collections::HashSet;
use std::time::Duration;

use super::queries::{self, MeterHour};
use super::{Store, StoreError};

/// How far back a round looks for batches that may have written into the hours it rebuilds: far
/// longer than any insert attempt runs before it is stopped (`MAX_ATTEMPT`).
pub(super) const RACE_WINDOW_S: u32 = 300;

#[derive(clickhouse::Row, serde::Deserialize)]
struct Change {
    tenant: String,
    customer: String,
    batches: Vec<u64>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// Hours rebuilt and unmarked.
    pub repaired: usize,
    /// Hours rebuilt but left marked: a batch may have written into them meanwhile.
    pub deferred: usize,
}

impl Store {
    /// A client for one maintenance round. Its statements carry a query id of their own; a
    /// statement of an earlier round still running on the server (its process died, or its lock
    /// ran out) is stopped first: an `INSERT ... SELECT` landing after this round's deletions
    /// would count its rows twice.
    pub(super) async fn maintenance_client(&self) -> Result<clickhouse::Client, StoreError> {
        self.kill_queries(&self.insert_pattern("maint:%")).await?;
        let id = format!(
            "mh:{}:maint:{:016x}",
            self.database(),
            rand::random::<u64>()
        );
        Ok(self.client().clone().with_setting("query_id", id))
    }

    /// Repairs up to `limit` marked hours (see the module's notes), waiting at most `patience`
    /// for each mutation. A mutation still running then is left to finish; the hours stay marked.
    pub async fn repair_dirty_hours(
        &self,
        limit: u64,
        patience: Duration,
    ) -> Result<Repaired, StoreError> {
        let client = self.maintenance_client().await?;
        let t0 = self.server_now().await?;
        let before_ms = i64::from(t0) * 1000;
        let hours: Vec<MeterHour> = queries::dirty_hours_marked_before(before_ms, limit)
            .query(&client)
            .fetch_all()
            .await?;
        if hours.is_empty() {
            self.dirty_hours_looked_at();
            return Ok(Repaired::default());
        }
        if self.behind(&client).await? {
            return Ok(Repaired {
                repaired: 0,
                deferred: hours.len(),
            });
        }
        let deleted = self
            .mutate(
                &client,
                "usage_rollup_hour",
                queries::delete_rollup_hours(&hours),
            )
            .await?;
        queries::rebuild_rollup_hours(&hours)
            .query(&client)
            .execute()
            .await?;
        let written = queries::rollup_rows_of_hours(&hours);
        if !self.mutations_done(&deleted, patience).await?
            || !self.replicas_hold(&client, &written, patience).await?
        {
            tracing::warn!(
                hours = hours.len(),
                "rollup repair still running; hours stay marked"
            );
            return Ok(Repaired {
                repaired: 0,
                deferred: hours.len(),
            });
        }
        let touched = self.touched_since(t0 - RACE_WINDOW_S, &hours).await?;
        let clean: Vec<MeterHour> = hours
            .iter()
            .filter(|hour| !touched.contains(*hour))
            .cloned()
            .collect();
        if !clean.is_empty() {
            // Their days in the day grain were written from the hours as they were.
            queries::reopen_days_of(&clean)
                .query(&client)
                .execute()
                .await?;
            self.reopened_days_marked();
            // Other processes learn of marks up to a second late (`Marks`): the day stays
            // re-opened for them before the hour stops being read from samples.
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            let unmarked = queries::unmark_dirty_hours(&clean, before_ms);
            let unmarked = self.mutate(&client, "rollup_dirty", unmarked).await?;
            self.mutations_done(&unmarked, patience).await?;
        }
        self.dirty_hours_looked_at();
        let repaired = Repaired {
            repaired: clean.len(),
            deferred: hours.len() - clean.len(),
        };
        tracing::info!(
            repaired = repaired.repaired,
            deferred = repaired.deferred,
            "rollup hours rebuilt from samples"
        );
        Ok(repaired)
    }

    /// Of `hours`, those a batch recorded since `since_s` may have written into: every hour of a
    /// customer with a change that names no batch, the hours the named batches wrote otherwise.
    async fn touched_since(
        &self,
        since_s: u32,
        hours: &[MeterHour],
    ) -> Result<HashSet<MeterHour>, StoreError> {
        let changes: Vec<Change> = queries::recent_changes_of(since_s, hours)
            .query(self.client())
            .fetch_all()
            .await?;
        let mut anyones = HashSet::new();
        let mut batches = HashSet::new();
        for change in changes {
            if change.batches.is_empty() || change.batches.contains(&0) {
                anyones.insert((change.tenant, change.customer));
            } else {
                batches.extend(change.batches);
            }
        }
        let mut touched: HashSet<MeterHour> = hours
            .iter()
            .filter(|(tenant, _, customer, _)| {
                anyones.contains(&(tenant.clone(), customer.clone()))
            })
            .cloned()
            .collect();
        if !batches.is_empty() {
            let batches: Vec<u64> = batches.into_iter().collect();
            let written: Vec<MeterHour> = queries::hours_of_batches(hours, &batches)
                .query(self.client())
                .fetch_all()
                .await?;
            touched.extend(written);
        }
        Ok(touched)
    }
}
