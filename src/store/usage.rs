//! Usage of one meter over any window `[from, to)`, exact: whole hours come from
//! `meter_rollup_hour` and the ragged edges (under an hour each) from `meter_samples`, whose key
//! `(tenant, meter, customer, ts_ms)` reads exactly them. The parts are merged as aggregate
//! states in one statement, so distinct counts and latest values stay exact across the seams.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::{Store, StoreError};
use crate::catalog::Aggregation;

const HOUR_MS: i64 = 3_600_000;

/// One contiguous piece of a window and where it is read from. Bounds in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Hours(i64, i64),
    Samples(i64, i64),
}

fn ceil_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit + if ms.rem_euclid(unit) == 0 { 0 } else { unit }
}

fn floor_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit
}

/// Splits `[from, to)`: whole hours from the hour rollup, the (under an hour) edges from
/// samples; with `hours` false (a series whose windows do not align to UTC hours), all from
/// samples. The parts tile the window exactly.
pub fn split(from: i64, to: i64, hours: bool) -> Vec<Part> {
    if from >= to {
        return vec![];
    }
    let (h0, h1) = (ceil_to(from, HOUR_MS), floor_to(to, HOUR_MS));
    if !hours || h0 >= h1 {
        return vec![Part::Samples(from, to)];
    }
    let mut parts = Vec::with_capacity(3);
    if from < h0 {
        parts.push(Part::Samples(from, h0));
    }
    parts.push(Part::Hours(h0, h1));
    if h1 < to {
        parts.push(Part::Samples(h1, to));
    }
    parts
}

/// Takes `dirty` hours (epoch ms, sorted; see sql/0007) out of the rollup parts and reads them
/// from samples instead; the parts still tile the same window.
pub fn carve(parts: Vec<Part>, dirty: &[i64]) -> Vec<Part> {
    if dirty.is_empty() {
        return parts;
    }
    let mut out = Vec::with_capacity(parts.len() + 2 * dirty.len());
    for part in parts {
        let Part::Hours(start, to) = part else {
            out.push(part);
            continue;
        };
        let mut from = start;
        for &hour in dirty.iter().filter(|&&h| h >= start && h < to) {
            if from < hour {
                out.push(Part::Hours(from, hour));
            }
            out.push(Part::Samples(hour, hour + HOUR_MS));
            from = hour + HOUR_MS;
        }
        if from < to {
            out.push(Part::Hours(from, to));
        }
    }
    out
}

/// The window's parts, with hours the rollup may lack read from samples.
async fn parts_of(
    store: &Store,
    key: (&str, &str, Option<&str>),
    from_ms: i64,
    to_ms: i64,
    hours: bool,
) -> Result<Vec<Part>, StoreError> {
    let parts = split(from_ms, to_ms, hours);
    if !parts.iter().any(|p| matches!(p, Part::Hours(..))) {
        return Ok(parts);
    }
    let (tenant, meter, customer) = key;
    let dirty = store
        .dirty_hours(tenant, meter, customer, from_ms, to_ms)
        .await?;
    Ok(carve(parts, &dirty))
}

/// One group's usage of a meter over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupUsage {
    /// Values of the requested group keys, in order ("" where an event lacked the key).
    pub group: Vec<String>,
    /// The meter's aggregate: the sum, count, extreme, distinct count or latest value.
    pub value: Decimal,
    /// Samples (events) counted.
    pub count: u64,
}

/// The state column and expressions of one aggregation: (rollup column, state of raw
/// samples, merge). Only the meter's own aggregation is read; `uniqExact` and `argMax`
/// states are costly to merge when they are not needed.
fn aggregate(aggregation: Aggregation) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match aggregation {
        Aggregation::Count => return None,
        Aggregation::Sum => ("sum_value", "sumState(value)", "sumMerge(sum_value)"),
        Aggregation::Min => ("min_value", "minState(value)", "minMerge(min_value)"),
        Aggregation::Max => ("max_value", "maxState(value)", "maxMerge(max_value)"),
        Aggregation::UniqueCount => (
            "distinct_values",
            "uniqExactState(value_str)",
            "uniqExactMerge(distinct_values)",
        ),
        Aggregation::Latest => (
            "latest_value",
            "argMaxState(value, ts_ms)",
            "argMaxMerge(latest_value)",
        ),
    })
}

/// The group of a row for `keys` group keys: one `?` (the key) per element.
fn group_expr(keys: usize) -> String {
    if keys == 0 {
        return "emptyArrayString() AS grp".into();
    }
    let elements = vec!["group_values[indexOf(group_keys, ?)]"; keys].join(", ");
    format!("[{elements}] AS grp")
}

/// The inner SELECT of one part. `extra` adds `?` filters after tenant and meter;
/// `time` is the window column to output (or empty).
fn part_select(
    part: &Part,
    aggregation: Aggregation,
    group: &str,
    extra: &str,
    time: (&str, &str),
) -> String {
    let (column, state, _) = aggregate(aggregation).map_or(("", "", ""), |a| a);
    let state_column = if column.is_empty() {
        String::new()
    } else {
        format!(", {column}")
    };
    let raw_state = if column.is_empty() {
        String::new()
    } else {
        format!(", {state} AS {column}")
    };
    let (rollup_time, sample_time) = time;
    match part {
        Part::Hours(..) => {
            format!(
                "SELECT {rollup_time}{group}, samples{state_column} FROM meter_rollup_hour WHERE tenant = ? AND meter = ?{extra} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)"
            )
        }
        Part::Samples(..) => {
            let by = if sample_time.is_empty() {
                "grp".to_owned()
            } else {
                "t, customer, grp".to_owned()
            };
            format!(
                "SELECT {sample_time}{group}, countState() AS samples{raw_state} FROM meter_samples WHERE tenant = ? AND meter = ?{extra} AND ts_ms >= ? AND ts_ms < ? GROUP BY {by}"
            )
        }
    }
}

/// The merged value and count of a group, as text (exact for every type).
fn merged(aggregation: Aggregation) -> String {
    let value = aggregate(aggregation).map_or("countMerge(samples)", |(_, _, merge)| merge);
    format!("toString({value}) AS value, countMerge(samples) AS events")
}

/// The SQL for `parts` grouped by `keys` group keys; per part, `?` stand for each group key,
/// then tenant, meter, customer, and the part's bounds.
pub fn statement(parts: &[Part], keys: usize, aggregation: Aggregation) -> String {
    let selects = selects(parts, aggregation, keys, &filter_sql(true, 0), ("", ""));
    format!(
        "SELECT grp, {} FROM ({}) GROUP BY grp ORDER BY grp",
        merged(aggregation),
        selects.join(" UNION ALL ")
    )
}

/// The inner SELECTs of `parts`, one per part.
fn selects(
    parts: &[Part],
    aggregation: Aggregation,
    keys: usize,
    extra: &str,
    time: (&str, &str),
) -> Vec<String> {
    let group = group_expr(keys);
    parts
        .iter()
        .map(|p| part_select(p, aggregation, &group, extra, time))
        .collect()
}

/// Filters after tenant and meter: the customer if one is given, then each group filter.
fn filter_sql(customer: bool, filters: usize) -> String {
    let mut extra = if customer {
        " AND customer = ?".to_owned()
    } else {
        String::new()
    };
    extra.push_str(&" AND has(?, group_values[indexOf(group_keys, ?)])".repeat(filters));
    extra
}

/// Binds each part's values in the order of `part_select`: group keys, tenant, meter,
/// customer, filters, bounds.
fn bind_parts(
    mut query: clickhouse::query::Query,
    parts: &[Part],
    group_by: &[String],
    key: (&str, &str, Option<&str>),
    filters: &[(String, Vec<String>)],
) -> clickhouse::query::Query {
    let (tenant, meter, customer) = key;
    for part in parts {
        let (a, b) = match *part {
            Part::Hours(a, b) => (a / 1000, b / 1000),
            Part::Samples(a, b) => (a, b),
        };
        for key in group_by {
            query = query.bind(key.as_str());
        }
        query = query.bind(tenant).bind(meter);
        if let Some(customer) = customer {
            query = query.bind(customer);
        }
        for (key, values) in filters {
            query = query.bind(values.as_slice()).bind(key.as_str());
        }
        query = query.bind(a).bind(b);
    }
    query
}

#[derive(clickhouse::Row, Deserialize)]
struct UsageRow {
    grp: Vec<String>,
    value: String,
    events: u64,
}

impl UsageRow {
    fn into_usage(self) -> Result<GroupUsage, StoreError> {
        let value: Decimal = self.value.parse().map_err(|_| {
            StoreError::Rejected(format!("usage '{}' is not a decimal", self.value))
        })?;
        Ok(GroupUsage {
            group: self.grp,
            value: value.normalize(),
            count: self.events,
        })
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct UsageQuery<'a> {
    pub tenant: &'a str,
    pub meter: &'a str,
    pub aggregation: Aggregation,
    pub customer: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Group keys to split by (a price's `group_by`); empty for one total.
    pub group_by: &'a [String],
}

/// Usage per group over the query's window.
pub async fn usage(store: &Store, q: &UsageQuery<'_>) -> Result<Vec<GroupUsage>, StoreError> {
    let key = (q.tenant, q.meter, Some(q.customer));
    let parts = parts_of(store, key, q.from_ms, q.to_ms, true).await?;
    if parts.is_empty() {
        return Ok(vec![]);
    }
    let query = store
        .client()
        .query(&statement(&parts, q.group_by.len(), q.aggregation));
    let query = bind_parts(query, &parts, q.group_by, key, &[]);
    let rows: Vec<UsageRow> = query.fetch_all().await?;
    rows.into_iter().map(UsageRow::into_usage).collect()
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
    pub aggregation: Aggregation,
    /// One customer, or all (each gets its own rows).
    pub customer: Option<&'a str>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub window_size: WindowSize,
    /// IANA name; windows start at its local minute, hour or midnight.
    pub timezone: &'a str,
    /// Whether whole UTC hours fall inside one window (false for timezones whose offset is
    /// not a whole number of hours).
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
    value: String,
    events: u64,
}

/// Usage per window, customer and group over the query's range.
pub async fn series(store: &Store, q: &SeriesQuery<'_>) -> Result<Vec<SeriesPoint>, StoreError> {
    let key = (q.tenant, q.meter, q.customer);
    let hours = q.hours_align && q.window_size != WindowSize::Minute;
    let parts = parts_of(store, key, q.from_ms, q.to_ms, hours).await?;
    if parts.is_empty() {
        return Ok(vec![]);
    }
    let extra = filter_sql(q.customer.is_some(), q.filters.len());
    let selects = selects(
        &parts,
        q.aggregation,
        q.group_by.len(),
        &extra,
        ("bucket AS t, customer, ", "ts AS t, customer, "),
    );
    let start_of = match q.window_size {
        WindowSize::Minute => "toStartOfMinute",
        WindowSize::Hour => "toStartOfHour",
        WindowSize::Day => "toStartOfDay",
    };
    let sql = format!(
        "SELECT toInt64(toUnixTimestamp({start_of}(t, ?))) AS window, customer, grp, {} FROM ({}) \
         GROUP BY window, customer, grp ORDER BY window, customer, grp",
        merged(q.aggregation),
        selects.join(" UNION ALL ")
    );
    let query = store.client().query(&sql).bind(q.timezone);
    let query = bind_parts(query, &parts, q.group_by, key, q.filters);
    let rows: Vec<SeriesRow> = query.fetch_all().await?;
    rows.into_iter()
        .map(|r| {
            let usage = UsageRow {
                grp: r.grp,
                value: r.value,
                events: r.events,
            }
            .into_usage()?;
            Ok(SeriesPoint {
                window: r.window,
                customer: r.customer,
                usage,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dirty_hours_are_read_from_samples_and_the_parts_still_tile() {
        let parts = split(HOUR_MS - 5, 5 * HOUR_MS + 7, true);
        let carved = carve(parts, &[0, HOUR_MS, 3 * HOUR_MS, 5 * HOUR_MS]);
        assert_eq!(
            carved,
            vec![
                Part::Samples(HOUR_MS - 5, HOUR_MS),
                Part::Samples(HOUR_MS, 2 * HOUR_MS),
                Part::Hours(2 * HOUR_MS, 3 * HOUR_MS),
                Part::Samples(3 * HOUR_MS, 4 * HOUR_MS),
                Part::Hours(4 * HOUR_MS, 5 * HOUR_MS),
                Part::Samples(5 * HOUR_MS, 5 * HOUR_MS + 7),
            ]
        );
        assert_eq!(
            carve(split(0, 2 * HOUR_MS, true), &[]),
            vec![Part::Hours(0, 2 * HOUR_MS)]
        );
    }

    #[test]
    fn aligned_windows_read_only_the_rollup() {
        assert_eq!(
            split(0, 3 * HOUR_MS, true),
            vec![Part::Hours(0, 3 * HOUR_MS)]
        );
    }

    #[test]
    fn ragged_windows_read_their_edges_from_samples() {
        let (from, to) = (HOUR_MS - 90_500, 3 * HOUR_MS + 61_000);
        assert_eq!(
            split(from, to, true),
            vec![
                Part::Samples(from, HOUR_MS),
                Part::Hours(HOUR_MS, 3 * HOUR_MS),
                Part::Samples(3 * HOUR_MS, to)
            ]
        );
        assert_eq!(split(10, 20, true), vec![Part::Samples(10, 20)]);
        assert_eq!(
            split(0, 3 * HOUR_MS, false),
            vec![Part::Samples(0, 3 * HOUR_MS)]
        );
        assert!(split(700, 700, true).is_empty());
    }

    #[test]
    fn the_statement_has_one_select_per_part_and_reads_one_state() {
        let sql = statement(
            &split(HOUR_MS - 90_500, 3 * HOUR_MS + 61_000, true),
            2,
            Aggregation::Sum,
        );
        assert_eq!(sql.matches("UNION ALL").count(), 2);
        assert_eq!(sql.matches('?').count(), 3 * 7);
        assert!(!sql.contains("uniqExact"), "only the sum is read");
    }

    proptest! {
        #[test]
        fn parts_tile_the_window(from in -10_000_000_000i64..10_000_000_000, len in 0i64..500_000_000, hours in any::<bool>()) {
            let to = from + len;
            let parts = split(from, to, hours);
            let mut at = from;
            for part in &parts {
                let (a, b) = match *part {
                    Part::Hours(a, b) => {
                        prop_assert!(a % HOUR_MS == 0 && b % HOUR_MS == 0);
                        (a, b)
                    }
                    Part::Samples(a, b) => (a, b),
                };
                prop_assert_eq!(a, at);
                prop_assert!(a < b);
                at = b;
            }
            prop_assert_eq!(at, if parts.is_empty() { from } else { to });
        }
    }
}
