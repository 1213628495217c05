//! Usage of one meter over any window `[from, to)`, exact: whole hours come from
//! `usage_rollup_hour` and the ragged edges (under an hour each) from `usage_samples`, whose key
//! `(tenant, meter, customer, ts_ms)` reads exactly them. The parts are merged as aggregate
//! states in one statement, so distinct counts and latest values stay exact across the seams.

use std::collections::HashMap;

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
                "SELECT {rollup_time}{group}, samples{state_column} FROM usage_rollup_hour WHERE tenant = ? AND meter = ?{extra} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)"
            )
        }
        Part::Samples(..) => {
            let by = if sample_time.is_empty() {
                "grp".to_owned()
            } else {
                "t, customer, grp".to_owned()
            };
            format!(
                "SELECT {sample_time}{group}, countState() AS samples{raw_state} FROM usage_samples WHERE tenant = ? AND meter = ?{extra} AND ts_ms >= ? AND ts_ms < ? GROUP BY {by}"
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
        Ok(GroupUsage {
            value: measured(&self.value)?,
            group: self.grp,
            count: self.events,
        })
    }
}

/// A merged value as the store prints it (exact text for every type), as a decimal.
fn measured(value: &str) -> Result<Decimal, StoreError> {
    let parsed: Decimal = value
        .parse()
        .map_err(|_| StoreError::Rejected(format!("usage '{value}' is not a decimal")))?;
    Ok(parsed.normalize())
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
        .reader()
        .query(&statement(&parts, q.group_by.len(), q.aggregation));
    let query = bind_parts(query, &parts, q.group_by, key, &[]);
    let rows: Vec<UsageRow> = query.fetch_all().await.map_err(StoreError::from_read)?;
    rows.into_iter().map(UsageRow::into_usage).collect()
}

/// One row of a combined read: a meter's usage for one combination of its samples' group
/// values (the keys its samples carry: the meter's `group_by` and its prices').
#[derive(Debug, Clone, PartialEq)]
pub struct MeterGroupUsage {
    pub meter: String,
    pub keys: Vec<String>,
    pub values: Vec<String>,
    pub value: Decimal,
    pub count: u64,
}

/// `n` bind markers, comma-separated: the members of an `IN (...)` list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The outer statement of a combined read: the rows of `selects` (partial states per
/// customer, meter and group) merged per customer, meter and the samples' own group values,
/// each meter's value by its aggregation. Binds each meter slug, per aggregation branch, twice.
fn combined(meters: &[(&str, Aggregation)], selects: &[String]) -> String {
    let of = |a: Aggregation| meters.iter().filter(|(_, m)| *m == a).count();
    let mut branches = Vec::new();
    for a in state_aggregations(meters) {
        let (column, _, merge) = aggregate(a).unwrap_or_default();
        let function = merge.split('(').next().unwrap_or_default();
        let condition = format!("meter IN ({})", placeholders(of(a)));
        branches.push(format!(
            "{condition}, toString({function}If({column}, {condition}))"
        ));
    }
    let value = if branches.is_empty() {
        "toString(countMerge(samples))".to_owned()
    } else {
        format!(
            "multiIf({}, toString(countMerge(samples)))",
            branches.join(", ")
        )
    };
    format!(
        "SELECT customer, meter, group_keys, group_values, {value} AS value, \
         countMerge(samples) AS events FROM ({}) GROUP BY customer, meter, group_keys, group_values",
        selects.join(" UNION ALL ")
    )
}

/// The columns a combined read takes from the rollup (`, sum_value, ...`) and the states it
/// builds from samples (`, sumState(value) AS sum_value, ...`).
fn state_columns(meters: &[(&str, Aggregation)]) -> (String, String) {
    let aggregations = state_aggregations(meters);
    let columns = aggregations
        .iter()
        .filter_map(|&a| aggregate(a))
        .map(|(column, _, _)| format!(", {column}"))
        .collect();
    let states = aggregations
        .iter()
        .filter_map(|&a| aggregate(a))
        .map(|(column, state, _)| format!(", {state} AS {column}"))
        .collect();
    (columns, states)
}

/// The SQL of a combined read of `meters` (slug, aggregation) of one customer over `parts`,
/// grouped by customer, meter and the samples' own group values. Binds, in order: each meter
/// slug (per aggregation branch, twice); then per table read: tenant, customer, each meter,
/// the bounds of the parts in that table.
pub fn combined_statement(parts: &[Part], meters: &[(&str, Aggregation)]) -> String {
    let (columns, states) = state_columns(meters);
    let scope = format!(
        "tenant = ? AND customer = ? AND meter IN ({})",
        placeholders(meters.len())
    );
    let mut selects = Vec::new();
    if count_hours(parts) > 0 {
        let hours = vec!["bucket >= toDateTime(?) AND bucket < toDateTime(?)"; count_hours(parts)];
        selects.push(format!(
            "SELECT customer, meter, group_keys, group_values, samples{columns} FROM usage_rollup_hour \
             WHERE {scope} AND ({})",
            hours.join(" OR ")
        ));
    }
    if count_edges(parts) > 0 {
        let ranges = vec!["(ts_ms >= ? AND ts_ms < ?)"; count_edges(parts)];
        selects.push(format!(
            "SELECT customer, meter, group_keys, group_values, countState() AS samples{states} \
             FROM usage_samples WHERE {scope} AND ({}) \
             GROUP BY customer, meter, group_keys, group_values",
            ranges.join(" OR ")
        ));
    }
    combined(meters, &selects)
}

/// The SQL of a combined read of `meters` of `customers` customers, each over its own window
/// ([`Windows`]): whole hours from the rollup (`hours` false when no window has one), the rest
/// from samples. Each table is narrowed by the set of customers and the windows' overall
/// span, then each row is kept by its own customer's bounds (looked up with `transform`; a
/// condition per customer would be evaluated per row). Binds, in order: each meter slug (per
/// aggregation branch, twice); then per table read: tenant, each meter, each customer, the
/// span; then, for the rollup, the customers and the hour bounds in seconds (`h0`, `h1`); for
/// samples, the customers and the bounds in ms `from`, `to`, `h0` and `h1`.
pub fn several_statement(meters: &[(&str, Aggregation)], customers: usize, hours: bool) -> String {
    let (columns, states) = state_columns(meters);
    let scope = format!(
        "tenant = ? AND meter IN ({}) AND customer IN ({})",
        placeholders(meters.len()),
        placeholders(customers)
    );
    let bound =
        |cast: &str| format!("transform(customer, ?, CAST(? AS Array({cast})), to{cast}(0))");
    let (hour, ms) = (bound("UInt32"), bound("Int64"));
    let mut selects = Vec::new();
    if hours {
        selects.push(format!(
            "SELECT customer, meter, group_keys, group_values, samples{columns} FROM usage_rollup_hour \
             WHERE {scope} AND bucket >= toDateTime(?) AND bucket < toDateTime(?) \
             AND toUInt32(bucket) >= {hour} AND toUInt32(bucket) < {hour}"
        ));
    }
    selects.push(format!(
        "SELECT customer, meter, group_keys, group_values, countState() AS samples{states} \
         FROM usage_samples WHERE {scope} AND ts_ms >= ? AND ts_ms < ? \
         AND ts_ms >= {ms} AND ts_ms < {ms} AND NOT (ts_ms >= {ms} AND ts_ms < {ms}) \
         GROUP BY customer, meter, group_keys, group_values"
    ));
    combined(meters, &selects)
}

/// The windows of a read of several customers, as parallel lists: each customer's window
/// `[from, to)` and its whole hours `[h0, h1)` (empty, `0, 0`, when it has none), in ms.
#[derive(Debug, Default)]
pub struct Windows<'a> {
    pub customers: Vec<&'a str>,
    pub from: Vec<i64>,
    pub to: Vec<i64>,
    pub h0: Vec<i64>,
    pub h1: Vec<i64>,
}

impl<'a> Windows<'a> {
    pub fn new(asked: &[(&'a str, (i64, i64))]) -> Self {
        let mut windows = Self::default();
        for &(customer, (from, to)) in asked {
            let (h0, h1) = split(from, to, true)
                .into_iter()
                .find_map(|part| match part {
                    Part::Hours(a, b) => Some((a, b)),
                    Part::Samples(..) => None,
                })
                .unwrap_or((0, 0));
            windows.customers.push(customer);
            windows.from.push(from);
            windows.to.push(to);
            windows.h0.push(h0);
            windows.h1.push(h1);
        }
        windows
    }

    /// The span of the whole hours, if any window has some.
    pub fn hours(&self) -> Option<(i64, i64)> {
        let with_hours = || self.h0.iter().zip(&self.h1).filter(|(a, b)| a < b);
        let from = with_hours().map(|(a, _)| *a).min()?;
        let to = with_hours().map(|(_, b)| *b).max()?;
        Some((from, to))
    }

    /// The span of all the windows.
    pub fn span(&self) -> (i64, i64) {
        let from = self.from.iter().copied().min().unwrap_or(0);
        let to = self.to.iter().copied().max().unwrap_or(0);
        (from, to)
    }
}

/// The aggregations of `meters` that read a state besides the count, each once, in order.
fn state_aggregations(meters: &[(&str, Aggregation)]) -> Vec<Aggregation> {
    let mut seen = Vec::new();
    for &(_, a) in meters {
        if aggregate(a).is_some() && !seen.contains(&a) {
            seen.push(a);
        }
    }
    seen
}

fn count_hours(parts: &[Part]) -> usize {
    parts
        .iter()
        .filter(|p| matches!(p, Part::Hours(..)))
        .count()
}

fn count_edges(parts: &[Part]) -> usize {
    parts.len() - count_hours(parts)
}

#[derive(clickhouse::Row, Deserialize)]
struct MeterGroupRow {
    customer: String,
    meter: String,
    group_keys: Vec<String>,
    group_values: Vec<String>,
    value: String,
    events: u64,
}

/// Usage of several meters of one customer over `[from_ms, to_ms)` in one statement, per
/// meter and combination of the samples' group values. `None` when some hour of the rollup
/// may be incomplete (see `carve`): the caller then reads meter by meter.
pub async fn usage_of_meters(
    store: &Store,
    tenant: &str,
    customer: &str,
    bounds: (i64, i64),
    meters: &[(&str, Aggregation)],
) -> Result<Option<Vec<MeterGroupUsage>>, StoreError> {
    let usage = usage_of_customers(store, tenant, &[(customer, bounds)], meters).await?;
    Ok(usage.map(|mut by_customer| by_customer.remove(customer).unwrap_or_default()))
}

/// [`usage_of_meters`] of several customers of a tenant, each over its own window, in one
/// statement; each customer at most once. A customer with no usage in its window has no entry.
/// `None` when some hour of the rollup in any of the windows may be incomplete.
pub async fn usage_of_customers(
    store: &Store,
    tenant: &str,
    asked: &[(&str, (i64, i64))],
    meters: &[(&str, Aggregation)],
) -> Result<Option<HashMap<String, Vec<MeterGroupUsage>>>, StoreError> {
    let asked: Vec<(&str, (i64, i64))> =
        asked.iter().copied().filter(|(_, (a, b))| a < b).collect();
    if meters.is_empty() || asked.is_empty() {
        return Ok(Some(HashMap::new()));
    }
    let windows = Windows::new(&asked);
    if windows.hours().is_some() && store.may_have_dirty_hours().await? {
        let one = match asked[..] {
            [(customer, _)] => Some(customer),
            _ => None,
        };
        let (from, to) = windows.span();
        for &(meter, _) in meters {
            if !store
                .dirty_hours(tenant, meter, one, from, to)
                .await?
                .is_empty()
            {
                return Ok(None);
            }
        }
    }
    let query = match asked[..] {
        [(customer, (from, to))] => one_customer_query(store, tenant, customer, from, to, meters),
        _ => several_query(store, tenant, &windows, meters),
    };
    let rows: Vec<MeterGroupRow> = query.fetch_all().await.map_err(StoreError::from_read)?;
    let mut usage: HashMap<String, Vec<MeterGroupUsage>> = HashMap::new();
    for r in rows {
        usage.entry(r.customer).or_default().push(MeterGroupUsage {
            value: measured(&r.value)?,
            meter: r.meter,
            keys: r.group_keys,
            values: r.group_values,
            count: r.events,
        });
    }
    Ok(Some(usage))
}

/// Binds each meter slug per aggregation branch, twice, as [`combined`] asks.
fn bind_branches(
    mut query: clickhouse::query::Query,
    meters: &[(&str, Aggregation)],
) -> clickhouse::query::Query {
    for a in state_aggregations(meters) {
        for _ in 0..2 {
            for (slug, _) in meters.iter().filter(|(_, m)| *m == a) {
                query = query.bind(*slug);
            }
        }
    }
    query
}

fn one_customer_query(
    store: &Store,
    tenant: &str,
    customer: &str,
    from: i64,
    to: i64,
    meters: &[(&str, Aggregation)],
) -> clickhouse::query::Query {
    let parts = split(from, to, true);
    let mut query = store.reader().query(&combined_statement(&parts, meters));
    query = bind_branches(query, meters);
    for hours in [true, false] {
        let in_table = |part: &&Part| matches!(part, Part::Hours(..)) == hours;
        if !parts.iter().any(|p| in_table(&p)) {
            continue;
        }
        query = query.bind(tenant).bind(customer);
        for (slug, _) in meters {
            query = query.bind(*slug);
        }
        for part in parts.iter().filter(in_table) {
            query = match *part {
                Part::Hours(a, b) => query.bind(a / 1000).bind(b / 1000),
                Part::Samples(a, b) => query.bind(a).bind(b),
            };
        }
    }
    query
}

fn several_query(
    store: &Store,
    tenant: &str,
    windows: &Windows<'_>,
    meters: &[(&str, Aggregation)],
) -> clickhouse::query::Query {
    let hours = windows.hours();
    let sql = several_statement(meters, windows.customers.len(), hours.is_some());
    let mut query = bind_branches(store.client().query(&sql), meters);
    let scope = |mut query: clickhouse::query::Query, (from, to): (i64, i64)| {
        query = query.bind(tenant);
        for (slug, _) in meters {
            query = query.bind(*slug);
        }
        for customer in &windows.customers {
            query = query.bind(*customer);
        }
        query.bind(from).bind(to)
    };
    let seconds = |ms: &[i64]| ms.iter().map(|v| v / 1000).collect::<Vec<i64>>();
    if let Some((from, to)) = hours {
        query = scope(query, (from / 1000, to / 1000));
        for bounds in [seconds(&windows.h0), seconds(&windows.h1)] {
            query = query.bind(&windows.customers).bind(bounds);
        }
    }
    query = scope(query, windows.span());
    for bounds in [&windows.from, &windows.to, &windows.h0, &windows.h1] {
        query = query.bind(&windows.customers).bind(bounds);
    }
    query
}

/// A price's groups from the rows of its meter: each row's values for `group_by` ("" where a
/// row lacks the key, as the per-meter statement does), rows that land in one group merged.
/// `None` when merging would need the aggregate states (distinct counts, latest values): the
/// caller then asks the store for that price alone.
pub fn project(
    rows: &[&MeterGroupUsage],
    group_by: &[String],
    aggregation: Aggregation,
) -> Option<Vec<GroupUsage>> {
    let mut groups: std::collections::BTreeMap<Vec<String>, GroupUsage> = Default::default();
    for row in rows {
        let group: Vec<String> = group_by
            .iter()
            .map(|key| {
                row.keys
                    .iter()
                    .position(|k| k == key)
                    .and_then(|i| row.values.get(i))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        match groups.entry(group) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                let group = slot.key().clone();
                slot.insert(GroupUsage {
                    group,
                    value: row.value,
                    count: row.count,
                });
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let merged = slot.get_mut();
                merged.value = match aggregation {
                    Aggregation::Sum | Aggregation::Count => merged.value.checked_add(row.value)?,
                    Aggregation::Min => merged.value.min(row.value),
                    Aggregation::Max => merged.value.max(row.value),
                    Aggregation::UniqueCount | Aggregation::Latest => return None,
                };
                merged.count = merged.count.checked_add(row.count)?;
            }
        }
    }
    Some(groups.into_values().collect())
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
    let query = store.reader().query(&sql).bind(q.timezone);
    let query = bind_parts(query, &parts, q.group_by, key, q.filters);
    let rows: Vec<SeriesRow> = query.fetch_all().await.map_err(StoreError::from_read)?;
    rows.into_iter()
        .map(|r| {
            Ok(SeriesPoint {
                usage: GroupUsage {
                    value: measured(&r.value)?,
                    group: r.grp,
                    count: r.events,
                },
                window: r.window,
                customer: r.customer,
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

    fn row(meter: &str, keys: &[&str], values: &[&str], value: i64, count: u64) -> MeterGroupUsage {
        MeterGroupUsage {
            meter: meter.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            values: values.iter().map(|v| v.to_string()).collect(),
            value: Decimal::from(value),
            count,
        }
    }

    #[test]
    fn rows_keyed_like_the_price_are_its_groups() {
        let rows = [
            row("m", &["model"], &["b"], 7, 2),
            row("m", &["model"], &["a"], 5, 1),
        ];
        let rows: Vec<&MeterGroupUsage> = rows.iter().collect();
        let groups = project(&rows, &["model".into()], Aggregation::UniqueCount).unwrap();
        assert_eq!(
            groups
                .iter()
                .map(|g| (g.group.clone(), g.value, g.count))
                .collect::<Vec<_>>(),
            vec![
                (vec!["a".to_string()], Decimal::from(5), 1),
                (vec!["b".to_string()], Decimal::from(7), 2)
            ]
        );
    }

    #[test]
    fn rows_that_share_a_group_merge_when_their_values_can_be_merged() {
        let rows = [
            row("m", &["model", "region"], &["a", "eu"], 7, 2),
            row("m", &["model", "region"], &["a", "us"], 5, 1),
            row("m", &["model", "region"], &["b", "us"], 4, 3),
            row("m", &["region"], &["us"], 9, 1),
        ];
        let rows: Vec<&MeterGroupUsage> = rows.iter().collect();
        let by_model = ["model".to_string()];
        let values = |a: Aggregation| {
            project(&rows, &by_model, a).map(|g| {
                g.iter()
                    .map(|g| (g.group[0].clone(), g.value, g.count))
                    .collect::<Vec<_>>()
            })
        };
        // The row without the key belongs to the group "" (as `group_values[indexOf(..)]`).
        assert_eq!(
            values(Aggregation::Sum).unwrap(),
            vec![
                (String::new(), Decimal::from(9), 1),
                ("a".into(), Decimal::from(12), 3),
                ("b".into(), Decimal::from(4), 3)
            ]
        );
        assert_eq!(values(Aggregation::Max).unwrap()[1].1, Decimal::from(7));
        assert_eq!(values(Aggregation::Min).unwrap()[1].1, Decimal::from(5));
        assert_eq!(values(Aggregation::Count).unwrap()[1].1, Decimal::from(12));
        // Distinct counts and latest values cannot be merged from finished values.
        assert_eq!(values(Aggregation::UniqueCount), None);
        assert_eq!(values(Aggregation::Latest), None);
        let total = project(&rows, &[], Aggregation::Sum).unwrap();
        assert_eq!((total[0].value, total[0].count), (Decimal::from(25), 7));
    }

    #[test]
    fn the_combined_statement_reads_each_table_once_and_only_the_states_it_needs() {
        let parts = split(HOUR_MS - 90_500, 3 * HOUR_MS + 61_000, true);
        let meters = [
            ("calls", Aggregation::Count),
            ("tokens", Aggregation::Sum),
            ("gb", Aggregation::Sum),
        ];
        let sql = combined_statement(&parts, &meters);
        assert_eq!(sql.matches("FROM usage_rollup_hour").count(), 1);
        assert_eq!(sql.matches("FROM usage_samples").count(), 1);
        assert!(!sql.contains("uniqExact") && !sql.contains("argMax"));
        // Meter slugs twice for the sum branch, then per table: tenant, customer, 3 meters and
        // the bounds (one hour range; two edges).
        assert_eq!(sql.matches('?').count(), 2 * 2 + (5 + 2) + (5 + 4));
        let only_hours = combined_statement(&split(0, 2 * HOUR_MS, true), &meters);
        assert!(!only_hours.contains("usage_samples"));
        // Several customers: a set of customers and the span in each table, then per row its
        // customer's bounds (2 in the rollup, 4 in samples; customers and bounds each).
        let several = several_statement(&meters, 3, true);
        assert_eq!(several.matches("customer IN (?, ?, ?)").count(), 2);
        assert_eq!(several.matches("transform(customer, ?,").count(), 6);
        assert_eq!(
            several.matches('?').count(),
            2 * 2 + (4 + 3 + 2 + 2 * 2) + (4 + 3 + 2 + 4 * 2)
        );
        assert!(!several_statement(&meters, 3, false).contains("usage_rollup_hour"));
        let windows = Windows::new(&[("a", (HOUR_MS - 5, 3 * HOUR_MS + 5)), ("b", (10, 20))]);
        assert_eq!(
            (windows.h0.clone(), windows.h1.clone()),
            (vec![HOUR_MS, 0], vec![3 * HOUR_MS, 0])
        );
        assert_eq!(windows.hours(), Some((HOUR_MS, 3 * HOUR_MS)));
        assert_eq!(windows.span(), (10, 3 * HOUR_MS + 5));
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
