//! The combined reads: several meters of one customer (or of many customers, each over its own
//! window) in one statement, per meter and combination of the samples' own group values. What a
//! subscription's report and the answers kept in memory are made of.

use std::collections::HashMap;

use serde::Deserialize;

use super::sql::Sql;
use super::usage_sql::{MeterGroupUsage, Part, States, parse_value};
use super::{Store, StoreError};
use crate::domain::Aggregation;

/// The meters of a combined read, each with its aggregation.
pub type Meters<'a> = [(&'a str, Aggregation)];

/// `, sumState(value) AS sum_value` and the like: the state of each aggregation of `meters`
/// that keeps one, each once, in order, built from samples.
fn sample_state_columns(meters: &Meters<'_>) -> String {
    states_of(meters)
        .into_iter()
        .map(|s| format!(", {} AS {}", s.from_samples, s.column))
        .collect()
}

/// The states the aggregations of `meters` keep besides the count, each once, in order: the
/// state columns of every branch of their combined read.
pub(super) fn states_of(meters: &Meters<'_>) -> Vec<States> {
    state_aggregations(meters)
        .into_iter()
        .filter_map(States::of)
        .collect()
}

/// One read of the rollups' rows within a combined read: the meters whose rows it takes, and
/// its state columns (`, sum_value, distinct_values`): one for every aggregation of the whole
/// combined read, so that its branches line up.
struct RollupRead<'a> {
    slugs: Vec<&'a str>,
    columns: String,
}

/// The reads of the rollups' rows of `meters`. A state that grows with what it holds (a
/// distinct count's set of values) is costly to decode, and ClickHouse decodes a column for
/// every row of each granule a read touches: a read of one customer's counts would decode the
/// sets of whichever rows share its granules, another customer's heavy distinct counts
/// included (the rows before and after it in the tables' key order). So when distinct counts
/// sit beside other aggregations, the other meters' rows are read apart, with an empty set in
/// that column, and the distinct counts' rows apart, with theirs.
fn rollup_reads<'a>(meters: &Meters<'a>) -> Vec<RollupRead<'a>> {
    let costly = |a: Aggregation| States::of(a).is_some_and(|s| s.empty.is_some());
    let (sets, rest): (Vec<_>, Vec<_>) = meters.iter().partition(|(_, a)| costly(*a));
    let reads = if sets.is_empty() || rest.is_empty() {
        vec![meters.to_vec()]
    } else {
        vec![rest, sets]
    };
    reads
        .into_iter()
        .map(|read| {
            let needs = |column: &str| {
                read.iter()
                    .any(|&(_, a)| States::of(a).is_some_and(|s| s.column == column))
            };
            let columns = states_of(meters)
                .into_iter()
                .map(|s| match s.empty {
                    Some(empty) if !needs(s.column) => format!(", {empty} AS {}", s.column),
                    _ => format!(", {}", s.column),
                })
                .collect();
            RollupRead {
                slugs: read.iter().map(|(slug, _)| *slug).collect(),
                columns,
            }
        })
        .collect()
}

/// The aggregations of `meters` that read a state besides the count, each once, in order.
fn state_aggregations(meters: &Meters<'_>) -> Vec<Aggregation> {
    let mut seen = Vec::new();
    for &(_, a) in meters {
        if States::of(a).is_some() && !seen.contains(&a) {
            seen.push(a);
        }
    }
    seen
}

/// The outer statement of a combined read: the rows of `selects` (partial states per
/// customer, meter and group) merged per customer, meter and the samples' own group values,
/// each meter's value by its aggregation.
pub(super) fn combined(meters: &Meters<'_>, selects: Vec<Sql>) -> Sql {
    let mut sql = Sql::new("SELECT customer, meter, group_keys, group_values, ");
    let aggregations = state_aggregations(meters);
    if aggregations.is_empty() {
        sql.push("toString(countMerge(samples))");
    } else {
        sql.push("multiIf(");
        for a in aggregations {
            let states = States::of(a).expect("state_aggregations keeps those with states");
            let slugs = || meters.iter().filter(move |(_, m)| *m == a).map(|(s, _)| *s);
            sql.push("meter IN (").list(slugs()).push("), toString(");
            sql.push(states.merge).push("If(").push(states.column);
            sql.push(", meter IN (").list(slugs()).push("))), ");
        }
        sql.push("toString(countMerge(samples)))");
    }
    sql.push(" AS value, countMerge(samples) AS events FROM (");
    sql.join(selects, " UNION ALL ")
        .push(") GROUP BY customer, meter, group_keys, group_values");
    sql
}

/// The combined read of `meters` of one customer over `parts`, grouped by customer, meter and
/// the samples' own group values; each table read once.
pub fn combined_statement(
    tenant: &str,
    customer: &str,
    parts: &[Part],
    meters: &Meters<'_>,
) -> Sql {
    combined_of_parts(tenant, customer, parts, meters, None)
}

/// [`combined_statement`], its samples only those ingested at or before `as_of_ms` if given
/// (the rollup parts must then hold no sample ingested after it).
pub(super) fn combined_of_parts(
    tenant: &str,
    customer: &str,
    parts: &[Part],
    meters: &Meters<'_>,
    as_of_ms: Option<i64>,
) -> Sql {
    combined(
        meters,
        part_selects(tenant, customer, parts, meters, as_of_ms),
    )
}

/// The inner SELECTs of [`combined_of_parts`]: partial states per customer, meter and group,
/// each table read once.
pub(super) fn part_selects(
    tenant: &str,
    customer: &str,
    parts: &[Part],
    meters: &Meters<'_>,
    as_of_ms: Option<i64>,
) -> Vec<Sql> {
    let scope = |slugs: &[&str]| {
        let mut sql = Sql::new("tenant = ");
        sql.arg(tenant)
            .push(" AND customer = ")
            .arg(customer)
            .push(" AND meter IN (")
            .list(slugs.iter().copied())
            .push(")");
        sql
    };
    let all: Vec<&str> = meters.iter().map(|(slug, _)| *slug).collect();
    let ranges_of = |wanted: fn(&Part) -> Option<(i64, i64)>| -> Vec<(i64, i64)> {
        parts.iter().filter_map(wanted).collect()
    };
    let days = ranges_of(|p| match *p {
        Part::Days(a, b) => Some((a, b)),
        _ => None,
    });
    let hours = ranges_of(|p| match *p {
        Part::Hours(a, b) => Some((a, b)),
        _ => None,
    });
    let edges = ranges_of(|p| match *p {
        Part::Samples(a, b) => Some((a, b)),
        _ => None,
    });
    let mut selects = Vec::new();
    let reads = rollup_reads(meters);
    // Without FINAL: a day is read from the grain only once one set of its rows is there, on
    // every replica (`store::days`).
    for (table, ranges) in [("usage_rollup_day", &days), ("usage_rollup_hour", &hours)] {
        if ranges.is_empty() {
            continue;
        }
        for read in &reads {
            let mut sql = Sql::new("SELECT customer, meter, group_keys, group_values, samples");
            sql.push(&read.columns)
                .push(" FROM ")
                .push(table)
                .push(" PREWHERE ")
                .append(scope(&read.slugs))
                .push(" AND (");
            let ranges = ranges.iter().map(|&(a, b)| {
                let mut range = Sql::new("bucket >= toDateTime(");
                range
                    .arg(a / 1000)
                    .push(") AND bucket < toDateTime(")
                    .arg(b / 1000)
                    .push(")");
                range
            });
            sql.join(ranges, " OR ").push(")");
            selects.push(sql);
        }
    }
    if !edges.is_empty() {
        let mut sql =
            Sql::new("SELECT customer, meter, group_keys, group_values, countState() AS samples");
        sql.push(&sample_state_columns(meters))
            .push(" FROM usage_samples PREWHERE ")
            .append(scope(&all))
            .push(" AND (");
        let ranges = edges.iter().map(|&(a, b)| {
            let mut range = Sql::new("(ts_ms >= ");
            range.arg(a).push(" AND ts_ms < ").arg(b).push(")");
            range
        });
        sql.join(ranges, " OR ").push(")");
        if let Some(as_of_ms) = as_of_ms {
            sql.push(" WHERE ingested_ms <= ").arg(as_of_ms);
        }
        sql.push(" GROUP BY customer, meter, group_keys, group_values");
        selects.push(sql);
    }
    selects
}

/// The windows of a read of several customers, as parallel lists: each customer's window
/// `[from, to)` and its whole hours `[h0, h1)` (`0, 0` when it has none), in ms.
#[derive(Debug, Default)]
pub struct Windows<'a> {
    pub customers: Vec<&'a str>,
    pub from: Vec<i64>,
    pub to: Vec<i64>,
    pub h0: Vec<i64>,
    pub h1: Vec<i64>,
}

impl<'a> Windows<'a> {
    /// Adds a customer's window and the whole hours inside it, if any.
    pub fn push(&mut self, customer: &'a str, (from, to): (i64, i64), hours: Option<(i64, i64)>) {
        let (h0, h1) = hours.unwrap_or((0, 0));
        self.customers.push(customer);
        self.from.push(from);
        self.to.push(to);
        self.h0.push(h0);
        self.h1.push(h1);
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

/// The combined read of `meters` of several customers, each over its own window: whole hours
/// from the rollup, the rest from samples. Each table is narrowed by the set of customers and
/// the windows' overall span, then each row is kept by its own customer's bounds, looked up
/// with `transform` (a condition per customer would be evaluated per row).
pub fn customers_statement(tenant: &str, windows: &Windows<'_>, meters: &Meters<'_>) -> Sql {
    let scope = |slugs: &[&str], (from, to): (i64, i64), column: &str| {
        let mut sql = Sql::new("tenant = ");
        sql.arg(tenant)
            .push(" AND meter IN (")
            .list(slugs.iter().copied())
            .push(") AND customer IN (")
            .list(windows.customers.iter().copied())
            .push(") AND ")
            .push(column)
            .push(" >= ");
        if column == "bucket" {
            sql.push("toDateTime(")
                .arg(from)
                .push(") AND bucket < toDateTime(")
                .arg(to)
                .push(")");
        } else {
            sql.arg(from).push(" AND ").push(column).push(" < ").arg(to);
        }
        sql
    };
    // The customer's bound in `bounds`: `transform(customer, [customers], [bounds], 0)`.
    let bound = |bounds: &[i64], cast: &str| {
        let mut sql = Sql::new("transform(customer, ");
        sql.arg(&windows.customers[..])
            .push(", CAST(")
            .arg(bounds)
            .push(&format!(" AS Array({cast})), to{cast}(0))"));
        sql
    };
    let seconds = |ms: &[i64]| ms.iter().map(|v| v / 1000).collect::<Vec<i64>>();
    let mut selects = Vec::new();
    if let Some((from, to)) = windows.hours() {
        for read in rollup_reads(meters) {
            let mut sql = Sql::new("SELECT customer, meter, group_keys, group_values, samples");
            sql.push(&read.columns)
                .push(" FROM usage_rollup_hour PREWHERE ")
                .append(scope(&read.slugs, (from / 1000, to / 1000), "bucket"))
                .push(" AND toUInt32(bucket) >= ")
                .append(bound(&seconds(&windows.h0), "UInt32"))
                .push(" AND toUInt32(bucket) < ")
                .append(bound(&seconds(&windows.h1), "UInt32"));
            selects.push(sql);
        }
    }
    let all: Vec<&str> = meters.iter().map(|(slug, _)| *slug).collect();
    let mut sql =
        Sql::new("SELECT customer, meter, group_keys, group_values, countState() AS samples");
    sql.push(&sample_state_columns(meters))
        .push(" FROM usage_samples PREWHERE ")
        .append(scope(&all, windows.span(), "ts_ms"))
        .push(" AND ts_ms >= ")
        .append(bound(&windows.from, "Int64"))
        .push(" AND ts_ms < ")
        .append(bound(&windows.to, "Int64"))
        .push(" AND NOT (ts_ms >= ")
        .append(bound(&windows.h0, "Int64"))
        .push(" AND ts_ms < ")
        .append(bound(&windows.h1, "Int64"))
        .push(") GROUP BY customer, meter, group_keys, group_values");
    selects.push(sql);
    combined(meters, selects)
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

impl Store {
    /// Runs a combined read ([`combined_statement`] within the request's read budget,
    /// [`customers_statement`] without one: it runs in the background): each customer's rows.
    pub async fn usage_of_meters(
        &self,
        statement: &Sql,
        budget: bool,
    ) -> Result<HashMap<String, Vec<MeterGroupUsage>>, StoreError> {
        let client = if budget { self.reader() } else { self.client() };
        let rows: Vec<MeterGroupRow> = statement
            .query(client)
            .fetch_all()
            .await
            .map_err(StoreError::from_read)?;
        let mut usage: HashMap<String, Vec<MeterGroupUsage>> = HashMap::new();
        for r in rows {
            usage.entry(r.customer).or_default().push(MeterGroupUsage {
                value: parse_value(&r.value)?,
                meter: r.meter,
                keys: r.group_keys,
                values: r.group_values,
                count: r.events,
            });
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests;
