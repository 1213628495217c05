//! The day grain (sql/0015): the hour rollup compacted into UTC days, off the ingest path.
//!
//! Sealing: once a UTC day is over by an hour (events of it are caught as late by the view
//! `events_to_rollup_days_late` from the moment it ended, and the hour lets inserts under way
//! then end), its rows are written from the hour rollup and the day is recorded sealed. Days
//! are sealed in order: every day before the horizon (`rollup_days_sealed`) is in the grain.
//!
//! Re-opening: an event of a sealed day re-opens its customer's day (the view), and so do the
//! hours the repair rebuilt (`store::repair`) and the hours marked in `rollup_dirty` when their
//! day is sealed. Readers take a re-opened day from the hour rollup. A maintenance round writes
//! the day again from the hour rollup (a greater version replaces the old rows) once its marks
//! are older than [`RACE_WINDOW_S`] and none of its hours is marked (its old rows deleted first,
//! so that a day read from the grain has one set of rows), then clears the marks made before
//! that: a mark made since stays, and the day with it. The weighted hours of those days are
//! written again with them (`store::weighted_grain`).
//!
//! Replicas: a day is sealed, and a re-opened day's marks cleared, only once every replica of
//! the shard holds the rows the round wrote and has done its deletions, and a round starts only
//! on a node not behind its shard (`store::replicas`).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use super::changes::Marks;
use super::queries::{self, CustomerDay};
use super::repair::RACE_WINDOW_S;
use super::to_date_sql;
use super::{Store, StoreError};

pub(super) const DAY_S: u32 = 86_400;
/// A day is sealed this long after events of it start to be caught as late.
const SEAL_MARGIN_S: u32 = 3_600;
/// How long this process trusts the horizon it last read.
const HORIZON_FOR_MS: i64 = 5_000;

/// This process's view of the day grain.
#[derive(Default)]
pub(super) struct DayGrain {
    sealed_until_s: AtomicU32,
    sealed_checked_ms: AtomicI64,
    reopened: Marks,
    /// The weighted grain's records (`store::weighted_grain`), as last read.
    pub(super) weighted: super::weighted_grain::KnownRecords,
}

/// What a read may take from the day grain: the UTC days before `sealed_until_ms`, except the
/// `reopened` ones (epoch ms, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayParts {
    pub sealed_until_ms: i64,
    pub reopened: Vec<i64>,
}

/// What one maintenance round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Days sealed.
    pub sealed: u32,
    /// Customers' days written again and closed.
    pub resealed: usize,
    /// Re-opened days left for a later round (hours of them still marked for repair).
    pub deferred: usize,
}

impl Store {
    /// What a read of `[from_ms, to_ms)` of one customer (or any of the tenant's) may take from
    /// the day grain.
    pub async fn day_parts(
        &self,
        tenant: &str,
        customer: Option<&str>,
        (from_ms, to_ms): (i64, i64),
    ) -> Result<DayParts, StoreError> {
        let sealed_until_ms = i64::from(self.days_sealed_until().await?) * 1000;
        let mut parts = DayParts {
            sealed_until_ms,
            reopened: Vec::new(),
        };
        let to_ms = to_ms.min(sealed_until_ms);
        if to_ms <= from_ms
            || !self
                .days
                .reopened
                .may_have(self.client(), queries::ANY_REOPENED_DAYS)
                .await?
        {
            return Ok(parts);
        }
        let day_ms = i64::from(DAY_S) * 1000;
        let from_s = from_ms.div_euclid(day_ms) * i64::from(DAY_S);
        let query = queries::reopened_days(tenant, customer, (from_s, to_ms.div_euclid(1000) + 1));
        parts.reopened = query.query(self.client()).fetch_all().await?;
        parts.reopened.sort_unstable();
        Ok(parts)
    }

    /// Records that days were just re-opened by this process: by events of a day before today
    /// it wrote (the view marked their days), or by its repair of hours. Its next
    /// reads look the marks up.
    pub fn reopened_days_marked(&self) {
        self.days.reopened.marked();
    }

    /// The horizon of the sealed days (epoch seconds), read again at most every few seconds:
    /// one a little behind only sends reads to the hour rollup.
    async fn days_sealed_until(&self) -> Result<u32, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        if now - self.days.sealed_checked_ms.load(Ordering::Relaxed) < HORIZON_FOR_MS {
            return Ok(self.days.sealed_until_s.load(Ordering::Relaxed));
        }
        let until: u32 = self
            .client()
            .query(queries::DAYS_SEALED_UNTIL)
            .fetch_one()
            .await?;
        self.days.sealed_until_s.fetch_max(until, Ordering::Relaxed);
        self.days.sealed_checked_ms.store(now, Ordering::Relaxed);
        Ok(self.days.sealed_until_s.load(Ordering::Relaxed))
    }

    /// One round of the day grain's maintenance (see the module's notes): seals up to
    /// `max_days` days, then writes again up to `limit` re-opened customers' days.
    pub async fn compact_days(
        &self,
        max_days: u32,
        limit: u64,
        patience: Duration,
    ) -> Result<Compacted, StoreError> {
        let client = self.maintenance_client().await?;
        let t0 = self.server_now().await?;
        let version = u64::from(t0) * 1000;
        let mut done = Compacted::default();
        if self.behind(&client).await? {
            return Ok(done);
        }
        let mut until: u32 = self
            .client()
            .query(queries::DAYS_SEALED_UNTIL)
            .fetch_one()
            .await?;
        // The last day that may be sealed ended an hour ago or more: every event of it inserted
        // since it ended was caught as late.
        let closed = t0.saturating_sub(SEAL_MARGIN_S);
        let last_end = closed - closed % DAY_S;
        if until == 0 {
            // The grain starts at the first day of the hour rollup (or the last that may be
            // sealed, if later), recorded at once: nothing before it is in the rollup, and
            // events of those days arriving later re-open theirs.
            let first: u32 = self
                .client()
                .query(queries::FIRST_ROLLUP_HOUR)
                .fetch_one()
                .await?;
            until = (first - first % DAY_S).min(last_end);
            if until > 0 {
                queries::days_sealed(until).query(&client).execute().await?;
            }
        }
        let before_s = t0.saturating_sub(RACE_WINDOW_S);
        let sealed_from = until;
        while until > 0 && until + DAY_S <= last_end && done.sealed < max_days {
            // Rows of an interrupted seal of this day go first: a day is read without FINAL.
            let left: u64 = queries::rows_of_day(until)
                .query(&client)
                .fetch_one()
                .await?;
            if left > 0 {
                let deleted = self
                    .mutate(&client, "usage_rollup_day", queries::delete_day(until))
                    .await?;
                if !self.mutations_done(&deleted, patience).await?
                    || !self
                        .replicas_lack(&queries::rows_of_day(until), patience)
                        .await?
                {
                    break;
                }
            }
            queries::seal_day(until, version)
                .query(&client)
                .execute()
                .await?;
            queries::reopen_dirty_days(until)
                .query(&client)
                .execute()
                .await?;
            let written = queries::rows_of_version(version);
            if !self.replicas_hold(&client, &written, patience).await? {
                break;
            }
            until += DAY_S;
            queries::days_sealed(until).query(&client).execute().await?;
            self.days.sealed_until_s.fetch_max(until, Ordering::Relaxed);
            done.sealed += 1;
        }
        if done.sealed > 0 {
            // The seal took every event whose mark is that old; hours of those days marked for
            // repair re-opened them anew.
            let unmarked = queries::unmark_sealed_days(sealed_from, until, before_s);
            let unmarked = self
                .mutate(&client, "rollup_days_reopened", unmarked)
                .await?;
            self.mutations_done(&unmarked, patience).await?;
        }
        // Period-to-date states are read at the day grain's horizon (at the one before it by a
        // process that has not looked again yet) and at the last hours: others go. Marks of late
        // hours matter for today and the three days before.
        let today = t0 / DAY_S;
        self.drop_partitions(&client, "usage_rollup_to_date", |p| {
            to_date_sql::keeps_to_date(p, until, t0)
        })
        .await;
        self.drop_partitions(&client, "rollup_hours_late", |p| p + 3 >= today)
            .await;
        let reopened: Vec<CustomerDay> = queries::reopened_days_before(before_s, until, limit)
            .query(&client)
            .fetch_all()
            .await?;
        if reopened.is_empty() {
            self.days.reopened.look_again();
            return Ok(done);
        }
        let dirty: Vec<CustomerDay> = queries::dirty_days_of(&reopened)
            .query(&client)
            .fetch_all()
            .await?;
        let (ready, waiting): (Vec<CustomerDay>, Vec<CustomerDay>) =
            reopened.into_iter().partition(|day| !dirty.contains(day));
        done.deferred = waiting.len();
        if !ready.is_empty() {
            // Old rows first (the mutation touches the parts that exist now, not those written
            // next); the marks go only once it is done.
            let deleted = queries::delete_customer_days(&ready);
            let deleted = self.mutate(&client, "usage_rollup_day", deleted).await?;
            queries::reseal_days(&ready, version)
                .query(&client)
                .execute()
                .await?;
            self.reseal_weighted(&client, &ready, version).await?;
            let written = queries::rows_of_version(version);
            let left = queries::older_rows_of_days(&ready, version);
            let weighted = queries::weighted_rows_of_days(&ready, version);
            if !self.mutations_done(&deleted, patience).await?
                || !self.replicas_lack(&left, patience).await?
                || !self.replicas_hold(&client, &written, patience).await?
                || !self.replicas_hold(&client, &weighted, patience).await?
            {
                done.deferred += ready.len();
                return Ok(done);
            }
            let unmarked = queries::unmark_reopened_days(&ready, before_s);
            let unmarked = self
                .mutate(&client, "rollup_days_reopened", unmarked)
                .await?;
            self.mutations_done(&unmarked, patience).await?;
            done.resealed = ready.len();
        }
        self.days.reopened.look_again();
        tracing::info!(
            sealed = done.sealed,
            resealed = done.resealed,
            deferred = done.deferred,
            "day grain maintained"
        );
        Ok(done)
    }
}
