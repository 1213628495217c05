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
//!   and horizon (a new horizon, each day, writes them again), asked for at most once a minute
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

/// The states a read of `meters` over `bounds` would take, given the day grain's view of the
/// window: from its start to the horizon, if that is far enough and no day of it is re-opened.
pub fn applies<'a>(
    (tenant, customer): (&'a str, &'a str),
    (from, to): (i64, i64),
    grain: &DayParts,
) -> Option<ToDate<'a>> {
    let until = grain.sealed_until_ms;
    if until > to || until - from < MIN_SPAN_MS {
        return None;
    }
    let first_day = from.div_euclid(DAY_MS) * DAY_MS;
    if grain
        .reopened
        .iter()
        .any(|&day| day >= first_day && day < until)
    {
        return None;
    }
    Some(ToDate {
        tenant,
        customer,
        start_ms: from,
        until_ms: until,
    })
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
        }
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
        let store = store.clone();
        let (tenant, customer) = (to_date.tenant.to_owned(), to_date.customer.to_owned());
        let bounds = (to_date.start_ms, to_date.until_ms);
        let meters: Vec<(String, Aggregation)> =
            meters.iter().map(|(s, a)| ((*s).to_owned(), *a)).collect();
        tokio::spawn(async move {
            let meters: Vec<(&str, Aggregation)> =
                meters.iter().map(|(s, a)| (s.as_str(), *a)).collect();
            match build(&store, (&tenant, &customer), bounds, &meters).await {
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
/// takes now; `false`, writing nothing, if the window no longer qualifies (an hour marked for
/// repair, a day re-opened, the horizon moved back).
async fn build(
    store: &Store,
    (tenant, customer): (&str, &str),
    (from, until): (i64, i64),
    meters: &Meters<'_>,
) -> Result<bool, StoreError> {
    if store.may_have_dirty_hours().await? {
        return Ok(false);
    }
    let grain = store
        .day_parts(tenant, Some(customer), (from, until))
        .await?;
    let Some(to_date) = applies((tenant, customer), (from, until), &grain) else {
        return Ok(false);
    };
    if to_date.until_ms != until {
        return Ok(false);
    }
    let parts = window::with_days(window::split(from, until, true), &grain);
    store
        .build_to_date(&build_statement(&to_date, &parts, meters))
        .await?;
    Ok(true)
}

/// The read of `meters` of one customer over `bounds` from the states of its start, with the
/// rest of the window after them; `None` where they do not apply or are not (yet, or no
/// longer) complete, having asked for them in the latter case.
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
    let Some(to_date) = applies((tenant, customer), bounds, &grain) else {
        return Ok(None);
    };
    if builds.pending(&key_of(&to_date, meters)) {
        return Ok(None);
    }
    let mut rest: Vec<Part> = window::split(to_date.until_ms, bounds.1, true);
    // A trailing edge wholly ahead of now (a period's end) holds samples only if its hour has a
    // rollup row: events are taken up to a day ahead, each into both, and no hour is marked
    // for repair. Asking costs less than reading a granule of every part of the samples.
    let now = chrono::Utc::now().timestamp_millis();
    if let Some(&Part::Samples(from, _)) = rest.last()
        && from > now
        && from % window::HOUR_MS == 0
        && !store
            .hour_has_rows(&hour_rows_statement(
                to_date.tenant,
                to_date.customer,
                meters,
                from,
            ))
            .await?
    {
        rest.pop();
    }
    let statement = to_date_statement(&to_date, &rest, meters);
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
    builds.request(store, &to_date, meters);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grain(sealed_until_ms: i64, reopened: Vec<i64>) -> DayParts {
        DayParts {
            sealed_until_ms,
            reopened,
        }
    }

    #[test]
    fn states_are_kept_from_the_start_to_the_horizon_of_a_window_past_it() {
        let from = 3 * DAY_MS + 5_000;
        let at = applies(("t", "c"), (from, 40 * DAY_MS), &grain(30 * DAY_MS, vec![]));
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
            applies(("t", "c"), (from, 9 * DAY_MS), &grain(5 * DAY_MS, vec![])),
            None
        );
        // The window ends before the horizon.
        assert_eq!(
            applies(("t", "c"), (from, 9 * DAY_MS), &grain(10 * DAY_MS, vec![])),
            None
        );
        // Its first, partial day re-opened; then a day in the middle.
        for day in [3 * DAY_MS, 6 * DAY_MS] {
            assert_eq!(
                applies(
                    ("t", "c"),
                    (from, 40 * DAY_MS),
                    &grain(30 * DAY_MS, vec![day])
                ),
                None
            );
        }
        // A re-opened day before the window's first day does not matter.
        assert!(
            applies(
                ("t", "c"),
                (from, 40 * DAY_MS),
                &grain(30 * DAY_MS, vec![DAY_MS])
            )
            .is_some()
        );
    }
}
