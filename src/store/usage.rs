//! Usage of one meter over any window `[from, to)`, exact: whole hours come from
//! `meter_rollup_hour`, whole minutes at the edges from `meter_rollup_minute`, and what is left
//! (sub-minute edges) from `meter_samples`. The parts are merged as aggregate states in one
//! statement, so distinct counts and latest values stay exact across the seams.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::rows::from_scaled;
use super::{Store, StoreError};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// One contiguous piece of a window and where it is read from. Bounds in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Hours(i64, i64),
    Minutes(i64, i64),
    Samples(i64, i64),
}

fn ceil_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit + if ms.rem_euclid(unit) == 0 { 0 } else { unit }
}

fn floor_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit
}

/// Splits `[from, to)` into the fewest reads: one run of hours, at most two of minutes, at
/// most four of raw samples. The parts tile the window exactly.
pub fn split(from: i64, to: i64) -> Vec<Part> {
    split_with(from, to, true)
}

/// [`split`], with whole hours read from the minute rollup unless `hours`.
pub fn split_with(from: i64, to: i64, hours: bool) -> Vec<Part> {
    let mut parts = Vec::new();
    if from >= to {
        return parts;
    }
    let (h0, h1) = (ceil_to(from, HOUR_MS), floor_to(to, HOUR_MS));
    if hours && h0 < h1 {
        split_minutes(from, h0, &mut parts);
        parts.push(Part::Hours(h0, h1));
        split_minutes(h1, to, &mut parts);
    } else {
        split_minutes(from, to, &mut parts);
    }
    parts
}

fn split_minutes(from: i64, to: i64, parts: &mut Vec<Part>) {
    if from >= to {
        return;
    }
    let (m0, m1) = (ceil_to(from, MINUTE_MS), floor_to(to, MINUTE_MS));
    if m0 < m1 {
        if from < m0 {
            parts.push(Part::Samples(from, m0));
        }
        parts.push(Part::Minutes(m0, m1));
        if m1 < to {
            parts.push(Part::Samples(m1, to));
        }
    } else {
        parts.push(Part::Samples(from, to));
    }
}

/// Every aggregate of one group of a meter over a window; the meter's aggregation picks one.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupUsage {
    /// Values of the requested group keys, in order ("" where an event lacked the key).
    pub group: Vec<String>,
    pub sum: Decimal,
    pub count: u64,
    pub min: Decimal,
    pub max: Decimal,
    pub distinct: u64,
    pub latest: Decimal,
}

/// Merged states of one group, as the statement returns them (columns in [`MERGE`]'s order).
#[derive(clickhouse::Row, Deserialize)]
struct UsageRow {
    grp: Vec<String>,
    sum_value: i128,
    samples: u64,
    min_value: i128,
    max_value: i128,
    distinct_values: u64,
    latest_value: i128,
}

impl UsageRow {
    fn into_usage(self) -> Result<GroupUsage, StoreError> {
        let decimal = |scaled: i128| {
            from_scaled(scaled)
                .ok_or_else(|| StoreError::Rejected("usage exceeds 28 digits".into()))
        };
        Ok(GroupUsage {
            group: self.grp,
            sum: decimal(self.sum_value)?,
            count: self.samples,
            min: decimal(self.min_value)?,
            max: decimal(self.max_value)?,
            distinct: self.distinct_values,
            latest: decimal(self.latest_value)?,
        })
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct UsageQuery<'a> {
    pub tenant: &'a str,
    pub meter: &'a str,
    pub customer: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Group keys to split by (a price's `group_by`); empty for one total.
    pub group_by: &'a [String],
}

/// The group of a row for `keys` group keys: one `?` (the key) per element.
fn group_expr(keys: usize) -> String {
    if keys == 0 {
        return "emptyArrayString() AS grp".into();
    }
    let elements = vec!["group_values[indexOf(group_keys, ?)]"; keys].join(", ");
    format!("[{elements}] AS grp")
}
const WHERE_KEY: &str = "tenant = ? AND meter = ? AND customer = ?";
const ROLLUP_COLUMNS: &str =
    "sum_value, samples, min_value, max_value, distinct_values, latest_value";
const SAMPLE_STATES: &str = "sumState(value) AS sum_value, countState() AS samples, minState(value) AS min_value, \
     maxState(value) AS max_value, uniqExactState(value_str) AS distinct_values, argMaxState(value, ts_ms) AS latest_value";
const MERGE: &str = "grp, sumMerge(sum_value) AS sum_value, countMerge(samples) AS samples, \
     minMerge(min_value) AS min_value, maxMerge(max_value) AS max_value, \
     uniqExactMerge(distinct_values) AS distinct_values, argMaxMerge(latest_value) AS latest_value";

/// The SQL for `parts` grouped by `keys` group keys; per part, `?` stand for each group key,
/// then tenant, meter, customer, and the part's bounds.
pub fn statement(parts: &[Part], keys: usize) -> String {
    let group = group_expr(keys);
    let selects: Vec<String> = parts
        .iter()
        .map(|part| match part {
            Part::Hours(..) => format!("SELECT {group}, {ROLLUP_COLUMNS} FROM meter_rollup_hour WHERE {WHERE_KEY} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)"),
            Part::Minutes(..) => format!("SELECT {group}, {ROLLUP_COLUMNS} FROM meter_rollup_minute WHERE {WHERE_KEY} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)"),
            Part::Samples(..) => format!("SELECT {group}, {SAMPLE_STATES} FROM meter_samples WHERE {WHERE_KEY} AND ts_ms >= ? AND ts_ms < ? GROUP BY grp"),
        })
        .collect();
    format!(
        "SELECT {MERGE} FROM ({}) GROUP BY grp ORDER BY grp",
        selects.join(" UNION ALL ")
    )
}

/// Usage per group over the query's window.
pub async fn usage(store: &Store, q: &UsageQuery<'_>) -> Result<Vec<GroupUsage>, StoreError> {
    let parts = split(q.from_ms, q.to_ms);
    if parts.is_empty() {
        return Ok(vec![]);
    }
    let mut query = store.client().query(&statement(&parts, q.group_by.len()));
    for part in &parts {
        let (a, b) = match *part {
            Part::Hours(a, b) | Part::Minutes(a, b) => (a / 1000, b / 1000),
            Part::Samples(a, b) => (a, b),
        };
        for key in q.group_by {
            query = query.bind(key.as_str());
        }
        query = query
            .bind(q.tenant)
            .bind(q.meter)
            .bind(q.customer)
            .bind(a)
            .bind(b);
    }
    let rows: Vec<UsageRow> = query.fetch_all().await?;
    rows.into_iter().map(UsageRow::into_usage).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aligned_windows_read_only_rollups() {
        assert_eq!(split(0, 3 * HOUR_MS), vec![Part::Hours(0, 3 * HOUR_MS)]);
        assert_eq!(
            split(MINUTE_MS, 3 * MINUTE_MS),
            vec![Part::Minutes(MINUTE_MS, 3 * MINUTE_MS)]
        );
    }

    #[test]
    fn ragged_windows_read_minutes_and_samples_at_the_edges() {
        let from = HOUR_MS - 90_500; // 58:29.5 past the hour before
        let to = 3 * HOUR_MS + 61_000; // 1:01 past
        assert_eq!(
            split(from, to),
            vec![
                Part::Samples(from, HOUR_MS - 60_000),
                Part::Minutes(HOUR_MS - 60_000, HOUR_MS),
                Part::Hours(HOUR_MS, 3 * HOUR_MS),
                Part::Minutes(3 * HOUR_MS, 3 * HOUR_MS + 60_000),
                Part::Samples(3 * HOUR_MS + 60_000, to),
            ]
        );
        assert_eq!(split(500, 700), vec![Part::Samples(500, 700)]);
        assert!(split(700, 700).is_empty());
    }

    #[test]
    fn the_statement_has_one_select_per_part() {
        let sql = statement(&split(HOUR_MS - 90_500, 3 * HOUR_MS + 61_000), 2);
        assert_eq!(sql.matches("UNION ALL").count(), 4);
        assert_eq!(sql.matches('?').count(), 5 * 7);
    }

    proptest! {
        #[test]
        fn parts_tile_the_window(from in -10_000_000_000i64..10_000_000_000, len in 0i64..500_000_000) {
            let to = from + len;
            let parts = split(from, to);
            let mut at = from;
            for part in &parts {
                let (a, b, unit) = match *part {
                    Part::Hours(a, b) => (a, b, HOUR_MS),
                    Part::Minutes(a, b) => (a, b, MINUTE_MS),
                    Part::Samples(a, b) => (a, b, 1),
                };
                prop_assert_eq!(a, at);
                prop_assert!(a < b && a % unit == 0 && b % unit == 0);
                at = b;
            }
            prop_assert_eq!(at, if parts.is_empty() { from } else { to });
            prop_assert!(parts.iter().filter(|p| matches!(p, Part::Samples(..))).count() <= 4);
        }
    }
}

/// The grain of a time series' windows, in the series' timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSize {
    Minute,
    Hour,
    Day,
}

/// A time series of one meter.
#[derive(Debug, Clone)]
pub struct SeriesQuery<'a> {
    pub tenant: &'a str,
    pub meter: &'a str,
    /// One customer, or all (each gets its own rows).
    pub customer: Option<&'a str>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub window_size: WindowSize,
    /// IANA name; windows start at its local minute, hour or midnight.
    pub timezone: &'a str,
    /// Whether whole UTC hours fall inside one window (false for minute windows and for
    /// timezones whose offset is not a whole number of hours).
    pub hours_align: bool,
    pub group_by: &'a [String],
    /// Group key and the values it may take.
    pub filters: &'a [(String, Vec<String>)],
}

/// One window of a series for one customer and group.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoint {
    /// Local start of the window, as epoch seconds.
    pub window: i64,
    pub customer: String,
    pub usage: GroupUsage,
}

#[derive(clickhouse::Row, Deserialize)]
struct SeriesRow {
    window: i64,
    customer: String,
    grp: Vec<String>,
    sum_value: i128,
    samples: u64,
    min_value: i128,
    max_value: i128,
    distinct_values: u64,
    latest_value: i128,
}

impl SeriesRow {
    fn into_point(self) -> Result<SeriesPoint, StoreError> {
        let states = UsageRow {
            grp: self.grp,
            sum_value: self.sum_value,
            samples: self.samples,
            min_value: self.min_value,
            max_value: self.max_value,
            distinct_values: self.distinct_values,
            latest_value: self.latest_value,
        };
        Ok(SeriesPoint {
            window: self.window,
            customer: self.customer,
            usage: states.into_usage()?,
        })
    }
}

/// Usage per window, customer and group over the query's range.
pub async fn series(store: &Store, q: &SeriesQuery<'_>) -> Result<Vec<SeriesPoint>, StoreError> {
    let parts = split_with(
        q.from_ms,
        q.to_ms,
        q.hours_align && q.window_size != WindowSize::Minute,
    );
    if parts.is_empty() {
        return Ok(vec![]);
    }
    let group = group_expr(q.group_by.len());
    let mut filter = String::new();
    if q.customer.is_some() {
        filter.push_str(" AND customer = ?");
    }
    for _ in q.filters {
        filter.push_str(" AND has(?, group_values[indexOf(group_keys, ?)])");
    }
    let selects: Vec<String> = parts
        .iter()
        .map(|part| match part {
            Part::Hours(..) => format!("SELECT bucket AS t, customer, {group}, {ROLLUP_COLUMNS} FROM meter_rollup_hour WHERE tenant = ? AND meter = ?{filter} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)"),
            Part::Minutes(..) => format!("SELECT bucket AS t, customer, {group}, {ROLLUP_COLUMNS} FROM meter_rollup_minute WHERE tenant = ? AND meter = ?{filter} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)"),
            Part::Samples(..) => format!("SELECT ts AS t, customer, {group}, {SAMPLE_STATES} FROM meter_samples WHERE tenant = ? AND meter = ?{filter} AND ts_ms >= ? AND ts_ms < ? GROUP BY t, customer, grp"),
        })
        .collect();
    let start_of = match q.window_size {
        WindowSize::Minute => "toStartOfMinute",
        WindowSize::Hour => "toStartOfHour",
        WindowSize::Day => "toStartOfDay",
    };
    let sql = format!(
        "SELECT toInt64(toUnixTimestamp({start_of}(t, ?))) AS window, customer, {MERGE} FROM ({}) \
         GROUP BY window, customer, grp ORDER BY window, customer, grp",
        selects.join(" UNION ALL ")
    );
    let mut query = store.client().query(&sql).bind(q.timezone);
    for part in &parts {
        let (a, b) = match *part {
            Part::Hours(a, b) | Part::Minutes(a, b) => (a / 1000, b / 1000),
            Part::Samples(a, b) => (a, b),
        };
        for key in q.group_by {
            query = query.bind(key.as_str());
        }
        query = query.bind(q.tenant).bind(q.meter);
        if let Some(customer) = q.customer {
            query = query.bind(customer);
        }
        for (key, values) in q.filters {
            query = query.bind(values.as_slice()).bind(key.as_str());
        }
        query = query.bind(a).bind(b);
    }
    let rows: Vec<SeriesRow> = query.fetch_all().await?;
    rows.into_iter().map(SeriesRow::into_point).collect()
}
