//! Reads of a window from its start's period-to-date states (`store::to_date_sql`, sql/0022):
//! a current period's closed days (and its first, partial day) as one state per meter and
//! group, the rest of the window (today's hours and the edge) from the rollup and samples, in
//! one statement.
//!
//! - **When.** A read from a billing period's start, at least [`MIN_SPAN_MS`] before the day
//!   grain's horizon, no day of it re-opened and no hour marked for repair: otherwise the read
//!   goes on as before.
//! - **Written off the request.** A read that finds no complete states asks for them
//!   ([`Builds::request`]) and reads the window as before; the states are written in the
//!   background from the same parts a read would take, once per customer, set of meters, start
//!   and horizon (a new horizon, each hour, writes them again), asked for at most once a minute
//!   by a process. While they are being written, reads do not look for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::domain::Aggregation;
use crate::store::combined_sql::Meters;
use crate::store::to_date_sql::{
    COMPLETE, ToDate, build_statement, hour_rows_statement, meters_key, to_date_statement,
};
use crate::store::usage_sql::{MeterGroupUsage, Part};
use crate::store::{DayParts, Store, StoreError};

use super::window::{self, DAY_MS};

/// The least a window's start lies before the day grain's horizon for its states to be kept:
/// shorter, and its days and hours are few enough to read as they are.
pub const MIN_SPAN_MS: i64 = 2 * DAY_MS;

/// How long a request for states is not made again, by default (while they are written, or
/// after a write, whatever came of it).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Requests remembered at most (the oldest go first).
const REMEMBERED: u64 = 4_096;

/// States written at once, at most, by a process.
const AT_ONCE: usize = 2;

/// How long after its end an hour may be covered by states: an event of it arriving later
/// leaves a mark (sql/0023), one arriving sooner none. Events sent up to an hour late (clients
/// that batch, the ingest benchmark's) cost ingest no mark: marking every event of an hour
/// already ended cost that benchmark about a tenth of its rate.
const LATE_AFTER_MS: i64 = window::HOUR_MS;

/// The most the service's clock and ClickHouse's may differ by for states past the day grain's
/// horizon: they stop this much short of the hours ClickHouse marks late events of.
const CLOCK_SKEW_MS: i64 = 10 * 60_000;

/// The horizon of states of a window ending at `to` at `now_ms`, the day grain's being
/// `day_until`: the last hour that ended an hour ago or more (with the clocks' skew), if it lies
/// past the day grain's and within the window, and every hour between them is one whose late
/// events ClickHouse marks (today's and the three days' before); the day grain's otherwise.
fn horizon(day_until: i64, to: i64, now_ms: i64) -> i64 {
    let hour =
        (now_ms - CLOCK_SKEW_MS).div_euclid(window::HOUR_MS) * window::HOUR_MS - LATE_AFTER_MS;
    let marked_from = (now_ms + CLOCK_SKEW_MS).div_euclid(DAY_MS) * DAY_MS - 3 * DAY_MS;
    match hour > day_until && hour <= to && day_until >= marked_from {
        true => hour,
        false => day_until,
    }
}

/// The states a read of `meters` over `bounds` at `now_ms` may take, given the day grain's view
/// of the window, the latest first: from its start to an hour past the day grain's horizon
/// ([`horizon`]), then to that horizon; none unless the horizon is far enough past the start and
/// no day before it is re-opened.
pub fn applies<'a>(
    (tenant, customer): (&'a str, &'a str),
    (from, to): (i64, i64),
    grain: &DayParts,
    now_ms: i64,
) -> Vec<ToDate<'a>> {
    let day_until = grain.sealed_until_ms;
    if day_until > to || day_until - from < MIN_SPAN_MS {
        return Vec::new();
    }
    let first_day = from.div_euclid(DAY_MS) * DAY_MS;
    if grain
        .reopened
        .iter()
        .any(|&day| day >= first_day && day < day_until)
    {
        return Vec::new();
    }
    let at = |until_ms| ToDate {
        tenant,
        customer,
        start_ms: from,
        until_ms,
    };
    match horizon(day_until, to, now_ms) {
        hour if hour > day_until => vec![at(hour), at(day_until)],
        _ => vec![at(day_until)],
    }
}

/// The states asked for by this process's reads, and whether they were written since. States
/// are asked for at most once every retry (a minute by default), written or not: states written
/// but not found (a replica that has not fetched them yet, a clock behind the day grain's
/// version) are not written again at every read. At most [`AT_ONCE`] are written at a time; a
/// request past that is dropped, and the next read asks again.
#[derive(Clone)]
pub struct Builds {
    /// Each request's key and whether its states were written, forgotten after the retry.
    asked: moka::sync::Cache<String, bool>,
    writing: Arc<Semaphore>,
    /// The clock's time if stopped (tests: a horizon that does not move while they run).
    stopped_at: Option<i64>,
}

impl Default for Builds {
    fn default() -> Self {
        Self::new(RETRY_AFTER)
    }
}

fn key_of(to_date: &ToDate<'_>, meters: &Meters<'_>) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        to_date.tenant,
        to_date.customer,
        meters_key(meters),
        to_date.start_ms,
        to_date.until_ms
    )
}

impl Builds {
    /// States asked for at most once every `retry_after`.
    pub fn new(retry_after: Duration) -> Self {
        Self {
            asked: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(retry_after)
                .build(),
            writing: Arc::new(Semaphore::new(AT_ONCE)),
            stopped_at: None,
        }
    }

    /// These builds with the clock stopped at `now_ms` (which must not be ahead of ClickHouse's:
    /// states are then kept to an earlier horizon than they could be, never a later one).
    pub fn stopped_at(mut self, now_ms: i64) -> Self {
        self.stopped_at = Some(now_ms);
        self
    }

    fn now(&self) -> i64 {
        self.stopped_at
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }

    /// Whether these states were asked for less than a retry ago and not written yet.
    fn pending(&self, key: &str) -> bool {
        self.asked.get(key) == Some(false)
    }

    /// Writes the states of `meters` over `to_date` in the background through `store` (the
    /// customer's), unless they were asked for less than a retry ago or [`AT_ONCE`] are being
    /// written.
    pub fn request(&self, store: &Store, to_date: &ToDate<'_>, meters: &Meters<'_>) {
        let Ok(permit) = self.writing.clone().try_acquire_owned() else {
            return;
        };
        let key = key_of(to_date, meters);
        if !self.asked.entry(key.clone()).or_insert(false).is_fresh() {
            return;
        }
        let asked = self.asked.clone();
        let now = self.now();
        let store = store.clone();
        let (tenant, customer) = (to_date.tenant.to_owned(), to_date.customer.to_owned());
        let bounds = (to_date.start_ms, to_date.until_ms);
        let meters: Vec<(String, Aggregation)> =
            meters.iter().map(|(s, a)| ((*s).to_owned(), *a)).collect();
        tokio::spawn(async move {
            let meters: Vec<(&str, Aggregation)> =
                meters.iter().map(|(s, a)| (s.as_str(), *a)).collect();
            match build(&store, (&tenant, &customer), bounds, &meters, now).await {
                Ok(true) => {
                    asked.insert(key, true);
                    tracing::debug!(tenant, customer, "period-to-date states written");
                }
                Ok(false) => {
                    tracing::debug!(
                        tenant,
                        customer,
                        "period-to-date states not written: the window is changing"
                    );
                }
                Err(e) => {
                    tracing::warn!(tenant, customer, error = %e, "period-to-date states not written");
                }
            }
            drop(permit);
        });
    }
}

/// Writes the states of `meters` of one customer over `[from, until)`, from the parts a read
/// takes now (`now_ms`); `false`, writing nothing, if the window no longer qualifies (an hour
/// marked for repair, a day re-opened, the horizon moved, a late event of its hours just
/// marked).
async fn build(
    store: &Store,
    (tenant, customer): (&str, &str),
    (from, until): (i64, i64),
    meters: &Meters<'_>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    if store.may_have_dirty_hours().await? {
        return Ok(false);
    }
    let grain = store
        .day_parts(tenant, Some(customer), (from, until))
        .await?;
    let horizons = applies((tenant, customer), (from, until), &grain, now_ms);
    let Some(to_date) = horizons.into_iter().find(|d| d.until_ms == until) else {
        return Ok(false);
    };
    // Not yet (their last hour too recent, a late event of their hours just marked) or not
    // from here (a replica behind): states written now could miss an event or not be read.
    if !store.may_write_to_date(&to_date).await? {
        return Ok(false);
    }
    let parts = window::with_days(window::split(from, until, true), &grain);
    store
        .build_to_date(&build_statement(&to_date, &parts, meters))
        .await?;
    Ok(true)
}

/// The read of `meters` of one customer over `bounds` from the states of its start, with the
/// rest of the window after them: the states of the latest horizon found complete; `None`
/// where none apply or none is (yet, or any longer) complete, having asked for those missing.
pub async fn read(
    builds: &Builds,
    store: &Store,
    (tenant, customer): (&str, &str),
    bounds: (i64, i64),
    meters: &Meters<'_>,
) -> Result<Option<Vec<MeterGroupUsage>>, StoreError> {
    if meters.is_empty() || store.may_have_dirty_hours().await? {
        return Ok(None);
    }
    let grain = store.day_parts(tenant, Some(customer), bounds).await?;
    let now = builds.now();
    let horizons: Vec<ToDate<'_>> = applies((tenant, customer), bounds, &grain, now)
        .into_iter()
        .filter(|to_date| !builds.pending(&key_of(to_date, meters)))
        .collect();
    let Some(first) = horizons.first() else {
        return Ok(None);
    };
    // A trailing edge wholly ahead of now (a period's end) holds samples only if its hour has a
    // rollup row: events are taken up to a day ahead, each into both, and no hour is marked
    // for repair. Asking costs less than reading a granule of every part of the samples.
    let mut edge_ahead_empty = false;
    if let Some(&Part::Samples(from, _)) = window::split(first.until_ms, bounds.1, true).last()
        && from > now
        && from % window::HOUR_MS == 0
    {
        let statement = hour_rows_statement(tenant, customer, meters, from);
        edge_ahead_empty = !store.hour_has_rows(&statement).await?;
    }
    for to_date in &horizons {
        let mut rest: Vec<Part> = window::split(to_date.until_ms, bounds.1, true);
        if edge_ahead_empty {
            rest.pop();
        }
        let statement = to_date_statement(to_date, &rest, meters);
        let mut rows = store
            .usage_of_meters(&statement, true)
            .await?
            .remove(customer)
            .unwrap_or_default();
        let read = rows.len();
        rows.retain(|row| row.meter != COMPLETE);
        if rows.len() < read {
            return Ok(Some(rows));
        }
        builds.request(store, to_date, meters);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Early on the day after the day grain's horizon (30 days): no hour past it has ended an
    /// hour ago yet.
    const EARLY: i64 = 30 * DAY_MS + 75 * 60_000;

    fn grain(sealed_until_ms: i64, reopened: Vec<i64>) -> DayParts {
        DayParts {
            sealed_until_ms,
            reopened,
        }
    }

    /// The latest horizon [`applies`] gives.
    fn latest<'a>(bounds: (i64, i64), grain: &DayParts, now_ms: i64) -> Option<ToDate<'a>> {
        applies(("t", "c"), bounds, grain, now_ms).first().copied()
    }

    #[test]
    fn states_are_kept_from_the_start_to_the_horizon_of_a_window_past_it() {
        let from = 3 * DAY_MS + 5_000;
        let at = latest((from, 40 * DAY_MS), &grain(30 * DAY_MS, vec![]), EARLY);
        assert_eq!(
            at,
            Some(ToDate {
                tenant: "t",
                customer: "c",
                start_ms: from,
                until_ms: 30 * DAY_MS
            })
        );
    }

    #[test]
    fn no_states_for_a_short_span_a_window_before_the_horizon_or_a_reopened_day() {
        let from = 3 * DAY_MS + 5_000;
        // Less than two days before the horizon.
        assert_eq!(
            latest((from, 9 * DAY_MS), &grain(5 * DAY_MS, vec![]), EARLY),
            None
        );
        // The window ends before the horizon.
        assert_eq!(
            latest((from, 9 * DAY_MS), &grain(10 * DAY_MS, vec![]), EARLY),
            None
        );
        // Its first, partial day re-opened; then a day in the middle.
        for day in [3 * DAY_MS, 6 * DAY_MS] {
            assert_eq!(
                latest((from, 40 * DAY_MS), &grain(30 * DAY_MS, vec![day]), EARLY,),
                None
            );
        }
        // A re-opened day before the window's first day does not matter.
        assert!(
            latest(
                (from, 40 * DAY_MS),
                &grain(30 * DAY_MS, vec![DAY_MS]),
                EARLY,
            )
            .is_some()
        );
    }

    #[test]
    fn states_reach_the_last_hour_that_ended_an_hour_ago_when_its_late_events_are_marked() {
        let from = 3 * DAY_MS + 5_000;
        let until = |to, day_until, now| {
            latest((from, to), &grain(day_until, vec![]), now).map(|d| d.until_ms)
        };
        let hour = window::HOUR_MS;
        // At 05:00 (10 minutes of skew allowed for): through 03:00.
        let now = 30 * DAY_MS + 5 * hour;
        assert_eq!(
            until(40 * DAY_MS, 30 * DAY_MS, now),
            Some(30 * DAY_MS + 3 * hour)
        );
        // Then the day grain's, for a read that finds the former incomplete.
        let horizons = applies(
            ("t", "c"),
            (from, 40 * DAY_MS),
            &grain(30 * DAY_MS, vec![]),
            now,
        );
        let untils: Vec<i64> = horizons.iter().map(|d| d.until_ms).collect();
        assert_eq!(untils, [30 * DAY_MS + 3 * hour, 30 * DAY_MS]);
        // At 05:09, still 03:00; at 05:10, 04:00.
        assert_eq!(
            until(40 * DAY_MS, 30 * DAY_MS, now + 9 * 60_000),
            Some(30 * DAY_MS + 3 * hour)
        );
        assert_eq!(
            until(40 * DAY_MS, 30 * DAY_MS, now + 10 * 60_000),
            Some(30 * DAY_MS + 4 * hour)
        );
        // Early in the day: the day grain's horizon.
        assert_eq!(until(40 * DAY_MS, 30 * DAY_MS, EARLY), Some(30 * DAY_MS));
        // The day grain three days behind: its hours' late events are marked; four: not. Ten
        // minutes before midnight, three days behind tomorrow (the skew allowed for).
        assert_eq!(
            until(40 * DAY_MS, 27 * DAY_MS, now),
            Some(30 * DAY_MS + 3 * hour)
        );
        assert_eq!(until(40 * DAY_MS, 26 * DAY_MS, now), Some(26 * DAY_MS));
        let late = 31 * DAY_MS - 10 * 60_000;
        assert_eq!(
            until(40 * DAY_MS, 28 * DAY_MS, late),
            Some(30 * DAY_MS + 22 * hour)
        );
        assert_eq!(until(40 * DAY_MS, 27 * DAY_MS, late), Some(27 * DAY_MS));
        // A window ending before that hour: the day grain's horizon.
        assert_eq!(
            until(30 * DAY_MS + 2 * hour, 30 * DAY_MS, now),
            Some(30 * DAY_MS)
        );
    }
}
