//! The usage reads. A window is read in parts ([`Part`]): whole hours from
//! `usage_rollup_hour`, the rest from `usage_samples`, whose key `(tenant, meter, customer,
//! ts_ms)` reads exactly them. The parts are merged as aggregate states in one statement, so
//! distinct counts and latest values stay exact across the seams. Which parts a window has is
//! the read model's decision (`readmodel::window`); this module only states and runs them.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::sql::Sql;
use super::{Store, StoreError};
use crate::domain::Aggregation;

/// One contiguous piece of a window and the table it is read from. Bounds in epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Whole UTC hours, from the hour rollup.
    Hours(i64, i64),
    /// Anything, from the samples.
    Samples(i64, i64),
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

/// How one aggregation is kept and merged: its column in the rollup, the state built from
/// raw samples, and the merge. Counts have none: every row carries `samples`, a count state.
/// Only the aggregation a read needs is read: `uniqExact` and `argMax` states are costly to
/// merge when they are not needed.
#[derive(Debug, Clone, Copy)]
struct States {
    column: &'static str,
    from_samples: &'static str,
    merge: &'static str,
}

impl States {
    fn of(aggregation: Aggregation) -> Option<Self> {
        let (column, from_samples, merge) = match aggregation {
            Aggregation::Count => return None,
            Aggregation::Sum => ("sum_value", "sumState(value)", "sumMerge"),
            Aggregation::Min => ("min_value", "minState(value)", "minMerge"),
            Aggregation::Max => ("max_value", "maxState(value)", "maxMerge"),
            Aggregation::UniqueCount => (
                "distinct_values",
                "uniqExactState(value_str)",
                "uniqExactMerge",
            ),
            Aggregation::Latest => ("latest_value", "argMaxState(value, ts_ms)", "argMaxMerge"),
        };
        Some(Self {
            column,
            from_samples,
            merge,
        })
    }
}

/// Which rows one meter's read takes, after tenant and meter.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub tenant: &'a str,
    pub meter: &'a str,
    /// One customer, or all.
    pub customer: Option<&'a str>,
    /// Group key and the values it may take.
    pub filters: &'a [(String, Vec<String>)],
}

/// The columns a per-meter read adds before its group: none, or the series' time and customer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leading {
    None,
    TimeAndCustomer,
}

/// The inner SELECT of one part of a per-meter read: a row per group (and, for a series, per
/// time and customer) with the meter's states.
pub(super) fn part_select(
    part: Part,
    aggregation: Aggregation,
    group_by: &[String],
    scope: &Scope<'_>,
    leading: Leading,
) -> Sql {
    let states = States::of(aggregation);
    let mut sql = Sql::new("SELECT ");
    if let Leading::TimeAndCustomer = leading {
        sql.push(match part {
            Part::Hours(..) => "bucket AS t, customer, ",
            Part::Samples(..) => "ts AS t, customer, ",
        });
    }
    if group_by.is_empty() {
        sql.push("emptyArrayString() AS grp");
    } else {
        sql.push("[");
        for (i, key) in group_by.iter().enumerate() {
            sql.push(if i == 0 { "" } else { ", " })
                .push("group_values[indexOf(group_keys, ")
                .arg(key)
                .push(")]");
        }
        sql.push("] AS grp");
    }
    match part {
        Part::Hours(..) => {
            sql.push(", samples");
            if let Some(states) = states {
                sql.push(", ").push(states.column);
            }
            sql.push(" FROM usage_rollup_hour WHERE ");
        }
        Part::Samples(..) => {
            sql.push(", countState() AS samples");
            if let Some(states) = states {
                sql.push(", ")
                    .push(states.from_samples)
                    .push(" AS ")
                    .push(states.column);
            }
            sql.push(" FROM usage_samples WHERE ");
        }
    }
    sql.push("tenant = ")
        .arg(scope.tenant)
        .push(" AND meter = ")
        .arg(scope.meter);
    if let Some(customer) = scope.customer {
        sql.push(" AND customer = ").arg(customer);
    }
    for (key, values) in scope.filters {
        sql.push(" AND has(")
            .arg(values.as_slice())
            .push(", group_values[indexOf(group_keys, ")
            .arg(key)
            .push(")])");
    }
    match part {
        Part::Hours(from, to) => {
            sql.push(" AND bucket >= toDateTime(")
                .arg(from / 1000)
                .push(") AND bucket < toDateTime(")
                .arg(to / 1000)
                .push(")");
        }
        Part::Samples(from, to) => {
            sql.push(" AND ts_ms >= ")
                .arg(from)
                .push(" AND ts_ms < ")
                .arg(to)
                .push(match leading {
                    Leading::None => " GROUP BY grp",
                    Leading::TimeAndCustomer => " GROUP BY t, customer, grp",
                });
        }
    }
    sql
}

/// The merged value and count of a group, as text (exact for every type).
pub(super) fn merged(aggregation: Aggregation) -> String {
    let value = States::of(aggregation).map_or_else(
        || "countMerge(samples)".to_owned(),
        |s| format!("{}({})", s.merge, s.column),
    );
    format!("toString({value}) AS value, countMerge(samples) AS events")
}

/// The per-meter read of `parts`: one row per group of `group_by`.
pub fn usage_statement(
    parts: &[Part],
    aggregation: Aggregation,
    group_by: &[String],
    scope: &Scope<'_>,
) -> Sql {
    let mut sql = Sql::new("SELECT grp, ");
    sql.push(&merged(aggregation)).push(" FROM (");
    let selects = parts
        .iter()
        .map(|&part| part_select(part, aggregation, group_by, scope, Leading::None));
    sql.join(selects, " UNION ALL ")
        .push(") GROUP BY grp ORDER BY grp");
    sql
}

#[derive(clickhouse::Row, Deserialize)]
struct UsageRow {
    grp: Vec<String>,
    value: String,
    events: u64,
}

/// A merged value as the store prints it (exact text for every type), as a decimal.
pub(super) fn parse_value(value: &str) -> Result<Decimal, StoreError> {
    let parsed: Decimal = value
        .parse()
        .map_err(|_| StoreError::Rejected(format!("usage '{value}' is not a decimal")))?;
    Ok(parsed.normalize())
}

/// The meters of a combined read, each with its aggregation.
pub type Meters<'a> = [(&'a str, Aggregation)];

/// `states` of the aggregations of `meters` that keep one, each once, in order: `, sum_value`
/// (the rollup's columns) or `, sumState(value) AS sum_value` (built from samples).
fn state_columns(meters: &Meters<'_>, from_samples: bool) -> String {
    state_aggregations(meters)
        .into_iter()
        .filter_map(States::of)
        .map(|s| match from_samples {
            false => format!(", {}", s.column),
            true => format!(", {} AS {}", s.from_samples, s.column),
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
fn combined(meters: &Meters<'_>, selects: Vec<Sql>) -> Sql {
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
    let scope = || {
        let mut sql = Sql::new("tenant = ");
        sql.arg(tenant)
            .push(" AND customer = ")
            .arg(customer)
            .push(" AND meter IN (")
            .list(meters.iter().map(|(slug, _)| *slug))
            .push(")");
        sql
    };
    let hours: Vec<(i64, i64)> = parts
        .iter()
        .filter_map(|p| match *p {
            Part::Hours(a, b) => Some((a, b)),
            Part::Samples(..) => None,
        })
        .collect();
    let edges: Vec<(i64, i64)> = parts
        .iter()
        .filter_map(|p| match *p {
            Part::Samples(a, b) => Some((a, b)),
            Part::Hours(..) => None,
        })
        .collect();
    let mut selects = Vec::new();
    if !hours.is_empty() {
        let mut sql = Sql::new("SELECT customer, meter, group_keys, group_values, samples");
        sql.push(&state_columns(meters, false))
            .push(" FROM usage_rollup_hour WHERE ")
            .append(scope())
            .push(" AND (");
        let ranges = hours.iter().map(|&(a, b)| {
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
    if !edges.is_empty() {
        let mut sql =
            Sql::new("SELECT customer, meter, group_keys, group_values, countState() AS samples");
        sql.push(&state_columns(meters, true))
            .push(" FROM usage_samples WHERE ")
            .append(scope())
            .push(" AND (");
        let ranges = edges.iter().map(|&(a, b)| {
            let mut range = Sql::new("(ts_ms >= ");
            range.arg(a).push(" AND ts_ms < ").arg(b).push(")");
            range
        });
        sql.join(ranges, " OR ")
            .push(") GROUP BY customer, meter, group_keys, group_values");
        selects.push(sql);
    }
    combined(meters, selects)
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
pub fn several_statement(tenant: &str, windows: &Windows<'_>, meters: &Meters<'_>) -> Sql {
    let scope = |(from, to): (i64, i64), column: &str| {
        let mut sql = Sql::new("tenant = ");
        sql.arg(tenant)
            .push(" AND meter IN (")
            .list(meters.iter().map(|(slug, _)| *slug))
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
        let mut sql = Sql::new("SELECT customer, meter, group_keys, group_values, samples");
        sql.push(&state_columns(meters, false))
            .push(" FROM usage_rollup_hour WHERE ")
            .append(scope((from / 1000, to / 1000), "bucket"))
            .push(" AND toUInt32(bucket) >= ")
            .append(bound(&seconds(&windows.h0), "UInt32"))
            .push(" AND toUInt32(bucket) < ")
            .append(bound(&seconds(&windows.h1), "UInt32"));
        selects.push(sql);
    }
    let mut sql =
        Sql::new("SELECT customer, meter, group_keys, group_values, countState() AS samples");
    sql.push(&state_columns(meters, true))
        .push(" FROM usage_samples WHERE ")
        .append(scope(windows.span(), "ts_ms"))
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
    /// Runs a per-meter read ([`usage_statement`]) within the request's read budget.
    pub async fn usage(&self, statement: &Sql) -> Result<Vec<GroupUsage>, StoreError> {
        let rows: Vec<UsageRow> = statement
            .query(self.reader())
            .fetch_all()
            .await
            .map_err(StoreError::from_read)?;
        rows.into_iter()
            .map(|r| {
                Ok(GroupUsage {
                    value: parse_value(&r.value)?,
                    group: r.grp,
                    count: r.events,
                })
            })
            .collect()
    }

    /// Runs a combined read ([`combined_statement`] within the request's read budget,
    /// [`several_statement`] without one: it runs in the background): each customer's rows.
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
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn scope<'a>(filters: &'a [(String, Vec<String>)]) -> Scope<'a> {
        Scope {
            tenant: "t",
            meter: "tokens",
            customer: Some("c"),
            filters,
        }
    }

    #[test]
    fn a_per_meter_read_binds_each_value_in_its_place() {
        let parts = [
            Part::Samples(HOUR_MS - 5, HOUR_MS),
            Part::Hours(HOUR_MS, 3 * HOUR_MS),
        ];
        let filters = [("region".to_owned(), vec!["eu".to_owned()])];
        let sql = usage_statement(
            &parts,
            Aggregation::Sum,
            &["model".into()],
            &scope(&filters),
        );
        assert_eq!(
            sql.render(),
            "SELECT grp, toString(sumMerge(sum_value)) AS value, countMerge(samples) AS events FROM (\
             SELECT [group_values[indexOf(group_keys, 'model')]] AS grp, countState() AS samples, sumState(value) AS sum_value \
             FROM usage_samples WHERE tenant = 't' AND meter = 'tokens' AND customer = 'c' \
             AND has(['eu'], group_values[indexOf(group_keys, 'region')]) \
             AND ts_ms >= 3599995 AND ts_ms < 3600000 GROUP BY grp \
             UNION ALL SELECT [group_values[indexOf(group_keys, 'model')]] AS grp, samples, sum_value \
             FROM usage_rollup_hour WHERE tenant = 't' AND meter = 'tokens' AND customer = 'c' \
             AND has(['eu'], group_values[indexOf(group_keys, 'region')]) \
             AND bucket >= toDateTime(3600) AND bucket < toDateTime(10800)) GROUP BY grp ORDER BY grp"
        );
        let count = usage_statement(&parts[1..], Aggregation::Count, &[], &scope(&[]));
        assert!(count.render().starts_with(
            "SELECT grp, toString(countMerge(samples)) AS value, countMerge(samples) AS events \
             FROM (SELECT emptyArrayString() AS grp, samples FROM usage_rollup_hour"
        ));
    }

    #[test]
    fn a_combined_read_binds_each_meter_and_bound_in_its_place() {
        let parts = [
            Part::Samples(HOUR_MS - 5, HOUR_MS),
            Part::Hours(HOUR_MS, 2 * HOUR_MS),
            Part::Samples(2 * HOUR_MS, 2 * HOUR_MS + 7),
        ];
        let meters = [
            ("calls", Aggregation::Count),
            ("tokens", Aggregation::Sum),
            ("users", Aggregation::UniqueCount),
        ];
        let sql = combined_statement("t", "c", &parts, &meters);
        assert_eq!(
            sql.render(),
            "SELECT customer, meter, group_keys, group_values, multiIf(\
             meter IN ('tokens'), toString(sumMergeIf(sum_value, meter IN ('tokens'))), \
             meter IN ('users'), toString(uniqExactMergeIf(distinct_values, meter IN ('users'))), \
             toString(countMerge(samples))) AS value, countMerge(samples) AS events FROM (\
             SELECT customer, meter, group_keys, group_values, samples, sum_value, distinct_values \
             FROM usage_rollup_hour WHERE tenant = 't' AND customer = 'c' AND meter IN ('calls', 'tokens', 'users') \
             AND (bucket >= toDateTime(3600) AND bucket < toDateTime(7200)) \
             UNION ALL SELECT customer, meter, group_keys, group_values, countState() AS samples, \
             sumState(value) AS sum_value, uniqExactState(value_str) AS distinct_values \
             FROM usage_samples WHERE tenant = 't' AND customer = 'c' AND meter IN ('calls', 'tokens', 'users') \
             AND ((ts_ms >= 3599995 AND ts_ms < 3600000) OR (ts_ms >= 7200000 AND ts_ms < 7200007)) \
             GROUP BY customer, meter, group_keys, group_values) \
             GROUP BY customer, meter, group_keys, group_values"
        );
        let only_hours = combined_statement("t", "c", &parts[1..2], &meters[..1]);
        assert!(!only_hours.render().contains("usage_samples"));
        assert!(
            only_hours
                .render()
                .contains("toString(countMerge(samples)) AS value")
        );
    }

    #[test]
    fn a_read_of_several_customers_binds_each_customers_bounds_in_order() {
        let mut windows = Windows::default();
        windows.push(
            "a",
            (HOUR_MS - 5, 3 * HOUR_MS + 5),
            Some((HOUR_MS, 3 * HOUR_MS)),
        );
        windows.push("b", (10, 20), None);
        assert_eq!(windows.hours(), Some((HOUR_MS, 3 * HOUR_MS)));
        assert_eq!(windows.span(), (10, 3 * HOUR_MS + 5));
        let sql = several_statement("t", &windows, &[("calls", Aggregation::Count)]);
        assert_eq!(
            sql.render(),
            "SELECT customer, meter, group_keys, group_values, toString(countMerge(samples)) AS value, \
             countMerge(samples) AS events FROM (\
             SELECT customer, meter, group_keys, group_values, samples FROM usage_rollup_hour \
             WHERE tenant = 't' AND meter IN ('calls') AND customer IN ('a', 'b') \
             AND bucket >= toDateTime(3600) AND bucket < toDateTime(10800) \
             AND toUInt32(bucket) >= transform(customer, ['a','b'], CAST([3600,0] AS Array(UInt32)), toUInt32(0)) \
             AND toUInt32(bucket) < transform(customer, ['a','b'], CAST([10800,0] AS Array(UInt32)), toUInt32(0)) \
             UNION ALL SELECT customer, meter, group_keys, group_values, countState() AS samples FROM usage_samples \
             WHERE tenant = 't' AND meter IN ('calls') AND customer IN ('a', 'b') AND ts_ms >= 10 AND ts_ms < 10800005 \
             AND ts_ms >= transform(customer, ['a','b'], CAST([3599995,10] AS Array(Int64)), toInt64(0)) \
             AND ts_ms < transform(customer, ['a','b'], CAST([10800005,20] AS Array(Int64)), toInt64(0)) \
             AND NOT (ts_ms >= transform(customer, ['a','b'], CAST([3600000,0] AS Array(Int64)), toInt64(0)) \
             AND ts_ms < transform(customer, ['a','b'], CAST([10800000,0] AS Array(Int64)), toInt64(0))) \
             GROUP BY customer, meter, group_keys, group_values) GROUP BY customer, meter, group_keys, group_values"
        );
        let mut no_hours = Windows::default();
        no_hours.push("b", (10, 20), None);
        let sql = several_statement("t", &no_hours, &[("calls", Aggregation::Count)]);
        assert!(!sql.render().contains("usage_rollup_hour"));
    }
}
