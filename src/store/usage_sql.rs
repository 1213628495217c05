//! The usage reads. A window is read in parts ([`Part`]): whole sealed UTC days from the day
//! grain `usage_rollup_day`, whole hours from `usage_rollup_hour`, the rest from
//! `usage_samples`, whose key `(tenant, customer, meter, ts_ms)` reads exactly them. The parts are merged as aggregate states in one statement, so
//! distinct counts and latest values stay exact across the seams. Which parts a window has is
//! the read model's decision (`readmodel::window`); this module only states and runs them.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::sql::Sql;
use super::{Store, StoreError};
use crate::domain::Aggregation;

/// One contiguous piece of a window and the table it is read from. Bounds in epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Whole UTC days, from the day grain (sql/0015).
    Days(i64, i64),
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
pub(super) struct States {
    pub(super) column: &'static str,
    pub(super) from_samples: &'static str,
    pub(super) merge: &'static str,
    /// An empty state of the column, for a state whose size grows with what it holds (a set
    /// of distinct values): a read of several meters' rows leaves the column out of the rows
    /// of meters that do not need it (see `combined_sql::rollup_reads`).
    pub(super) empty: Option<&'static str>,
}

impl States {
    pub(super) fn of(aggregation: Aggregation) -> Option<Self> {
        let (column, from_samples, merge, empty) = match aggregation {
            // A weighted sum is integrated from the samples' times (`weighted_sql`): the other
            // reads count its events.
            Aggregation::Count | Aggregation::WeightedSum => return None,
            Aggregation::Sum => ("sum_value", "sumState(value)", "sumMerge", None),
            Aggregation::Min => ("min_value", "minState(value)", "minMerge", None),
            Aggregation::Max => ("max_value", "maxState(value)", "maxMerge", None),
            Aggregation::UniqueCount => (
                "distinct_values",
                "uniqExactState(value_str)",
                "uniqExactMerge",
                Some("arrayReduce('uniqExactState', emptyArrayString())"),
            ),
            Aggregation::Latest => (
                "latest_value",
                "argMaxState(value, ts_ms)",
                "argMaxMerge",
                None,
            ),
        };
        Some(Self {
            column,
            from_samples,
            merge,
            empty,
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
    /// Only samples ingested at or before this instant (epoch ms): a read as of a past moment.
    /// Such a read takes every part from samples (rollups do not know when a row arrived).
    pub as_of_ms: Option<i64>,
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
            Part::Days(..) | Part::Hours(..) => "bucket AS t, customer, ",
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
        Part::Days(..) | Part::Hours(..) => {
            sql.push(", samples");
            if let Some(states) = states {
                sql.push(", ").push(states.column);
            }
            sql.push(match part {
                Part::Days(..) => " FROM usage_rollup_day PREWHERE ",
                _ => " FROM usage_rollup_hour PREWHERE ",
            });
        }
        Part::Samples(..) => {
            sql.push(", countState() AS samples");
            if let Some(states) = states {
                sql.push(", ")
                    .push(states.from_samples)
                    .push(" AS ")
                    .push(states.column);
            }
            sql.push(" FROM usage_samples PREWHERE ");
        }
    }
    sql.append(scope_condition(scope));
    match part {
        Part::Days(from, to) | Part::Hours(from, to) => {
            debug_assert!(
                scope.as_of_ms.is_none(),
                "a read as of a moment takes no rollup"
            );
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
                .arg(to);
            if let Some(as_of_ms) = scope.as_of_ms {
                sql.push(" AND ingested_ms <= ").arg(as_of_ms);
            }
            sql.push(match leading {
                Leading::None => " GROUP BY grp",
                Leading::TimeAndCustomer => " GROUP BY t, customer, grp",
            });
        }
    }
    sql
}

/// The rows of `scope` (tenant, meter, customer if one, filters): the start of a condition on
/// any table keyed by tenant, customer and meter.
pub(super) fn scope_condition(scope: &Scope<'_>) -> Sql {
    let mut sql = Sql::new("tenant = ");
    sql.arg(scope.tenant).push(" AND meter = ").arg(scope.meter);
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

impl GroupUsage {
    /// A group's row as a read returns it: its values, the merged value as text, the count.
    pub(super) fn from_row(
        group: Vec<String>,
        value: &str,
        count: u64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            value: parse_value(value)?,
            group,
            count,
        })
    }
}

impl Store {
    /// The rows of `statement`, read within the request's read budget.
    pub(super) async fn read_rows<T>(&self, statement: &Sql) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        statement
            .query(self.reader())
            .fetch_all()
            .await
            .map_err(StoreError::from_read)
    }

    /// Runs a per-meter read ([`usage_statement`]) within the request's read budget.
    pub async fn usage(&self, statement: &Sql) -> Result<Vec<GroupUsage>, StoreError> {
        let rows: Vec<UsageRow> = self.read_rows(statement).await?;
        rows.into_iter()
            .map(|r| GroupUsage::from_row(r.grp, &r.value, r.events))
            .collect()
    }
}

#[cfg(test)]
mod tests;
