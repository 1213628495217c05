//! Reads as of a past moment: usage exactly as it was with the samples ingested up to that
//! instant (every sample row records `ingested_ms`, sql/0001), and how many events of a window
//! arrived after it. Rollups do not know when their rows arrived: a read as of a moment takes
//! from them only the hours that hold no sample ingested after it, and the other hours and the
//! edges from `usage_samples`, filtered by `ingested_ms`. Samples are unique per event and
//! meter there (ids are deduplicated before the insert, a backfill skips events already
//! sampled), as for every other read of that table.

use serde::Deserialize;

use super::combined_sql::{Meters, combined_of_parts};
use super::sql::Sql;
use super::usage_sql::{Part, Scope, scope_condition};
use super::{Store, StoreError};

/// The combined read of `meters` of one customer over `parts`, as it stood with the samples
/// ingested at or before `as_of_ms`: the rows of [`super::combined_sql::combined_statement`].
/// The rollup parts must hold no sample ingested after it: the hours that do
/// ([`late_hours_statement`]) are to be read from samples.
pub fn as_of_statement(
    tenant: &str,
    customer: &str,
    parts: &[Part],
    as_of_ms: i64,
    meters: &Meters<'_>,
) -> Sql {
    combined_of_parts(tenant, customer, parts, meters, Some(as_of_ms))
}

/// The UTC hours (epoch ms) of `[from, to)` holding a sample of `meters` of `customer` ingested
/// after `as_of_ms`: where the rollups hold more than was there at that moment.
pub fn late_hours_statement(
    tenant: &str,
    customer: &str,
    (from, to): (i64, i64),
    as_of_ms: i64,
    meters: &Meters<'_>,
) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT intDiv(ts_ms, 3600000) * 3600000 AS hour FROM usage_samples PREWHERE ",
    );
    sql.append(arrived_after(as_of_ms))
        .push(" WHERE tenant = ")
        .arg(tenant)
        .push(" AND customer = ")
        .arg(customer)
        .push(" AND meter IN (")
        .list(meters.iter().map(|(slug, _)| *slug))
        .push(") AND ts_ms >= ")
        .arg(from)
        .push(" AND ts_ms < ")
        .arg(to)
        .push(" ORDER BY hour");
    sql
}

/// The condition of the scans for late samples, in `PREWHERE`: the key conditions (in `WHERE`)
/// still choose the granules, but only `ingested_ms` is read from all of them, and the other
/// columns only where a sample arrived after the moment (seldom: the scan of a busy customer's
/// month reads one column, not five).
fn arrived_after(as_of_ms: i64) -> Sql {
    let mut sql = Sql::new("ingested_ms > ");
    sql.arg(as_of_ms);
    sql
}

/// Where late events are counted: some meters of one customer over `[from, to)` (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateWindow<'a> {
    pub meters: Vec<&'a str>,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// How many distinct events with a sample in one of `windows` of `customer` were ingested
/// after `as_of_ms`.
pub fn late_events_statement(
    tenant: &str,
    customer: &str,
    windows: &[LateWindow<'_>],
    as_of_ms: i64,
) -> Sql {
    let mut sql = Sql::new("SELECT toUInt64(uniqExact(event_id)) FROM usage_samples PREWHERE ");
    sql.append(arrived_after(as_of_ms))
        .push(" WHERE tenant = ")
        .arg(tenant)
        .push(" AND customer = ")
        .arg(customer);
    let windows = windows
        .iter()
        .filter(|w| !w.meters.is_empty() && w.from_ms < w.to_ms)
        .map(|w| {
            let mut window = Sql::new("(meter IN (");
            window
                .list(w.meters.iter().copied())
                .push(") AND ts_ms >= ")
                .arg(w.from_ms)
                .push(" AND ts_ms < ")
                .arg(w.to_ms)
                .push(")");
            window
        })
        .collect::<Vec<Sql>>();
    if windows.is_empty() {
        sql.push(" AND 0");
    } else {
        sql.push(" AND (").join(windows, " OR ").push(")");
    }
    sql
}

/// How many distinct events of one meter's `scope` (its customer if one, its filters) over
/// `[from, to)` (epoch ms) were ingested after the scope's `as_of_ms`; 0 without one.
pub fn late_events_of_meter(scope: &Scope<'_>, (from, to): (i64, i64)) -> Sql {
    let mut sql = Sql::new("SELECT toUInt64(uniqExact(event_id)) FROM usage_samples PREWHERE ");
    sql.append(arrived_after(scope.as_of_ms.unwrap_or(i64::MAX)))
        .push(" WHERE ")
        .append(scope_condition(scope))
        .push(" AND ts_ms >= ")
        .arg(from)
        .push(" AND ts_ms < ")
        .arg(to);
    sql
}

#[derive(clickhouse::Row, Deserialize)]
struct LateHour {
    hour: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct Count {
    n: u64,
}

impl Store {
    /// Runs [`late_hours_statement`] within the request's read budget.
    pub async fn late_hours(&self, statement: &Sql) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<LateHour> = self.read_rows(statement).await?;
        Ok(rows.into_iter().map(|r| r.hour).collect())
    }

    /// Runs a count of late events ([`late_events_statement`], [`late_events_of_meter`])
    /// within the request's read budget.
    pub async fn late_events(&self, statement: &Sql) -> Result<u64, StoreError> {
        let rows: Vec<Count> = self.read_rows(statement).await?;
        Ok(rows.first().map_or(0, |r| r.n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Aggregation;

    #[test]
    fn an_as_of_read_takes_the_samples_ingested_up_to_the_moment_and_clean_rollup_hours() {
        let meters = [("calls", Aggregation::Count), ("tokens", Aggregation::Sum)];
        let parts = [
            Part::Samples(1_000, 3_600_000),
            Part::Hours(3_600_000, 7_200_000),
        ];
        assert_eq!(
            as_of_statement("t", "c", &parts, 4_000, &meters).render(),
            "SELECT customer, meter, group_keys, group_values, multiIf(meter IN ('tokens'), \
             toString(sumMergeIf(sum_value, meter IN ('tokens'))), toString(countMerge(samples))) \
             AS value, countMerge(samples) AS events FROM (SELECT customer, meter, group_keys, \
             group_values, samples, sum_value FROM usage_rollup_hour PREWHERE tenant = 't' \
             AND customer = 'c' AND meter IN ('calls', 'tokens') AND (bucket >= toDateTime(3600) \
             AND bucket < toDateTime(7200)) UNION ALL SELECT customer, meter, group_keys, \
             group_values, countState() AS samples, sumState(value) AS sum_value FROM usage_samples \
             PREWHERE tenant = 't' AND customer = 'c' AND meter IN ('calls', 'tokens') \
             AND ((ts_ms >= 1000 AND ts_ms < 3600000)) WHERE ingested_ms <= 4000 \
             GROUP BY customer, meter, group_keys, group_values) \
             GROUP BY customer, meter, group_keys, group_values"
        );
        assert_eq!(
            late_hours_statement("t", "c", (0, 7_200_000), 4_000, &meters).render(),
            "SELECT DISTINCT intDiv(ts_ms, 3600000) * 3600000 AS hour FROM usage_samples \
             PREWHERE ingested_ms > 4000 WHERE tenant = 't' AND customer = 'c' \
             AND meter IN ('calls', 'tokens') AND ts_ms >= 0 AND ts_ms < 7200000 ORDER BY hour"
        );
    }

    #[test]
    fn late_events_are_counted_once_over_each_windows_meters() {
        let windows = [
            LateWindow {
                meters: vec!["calls", "tokens"],
                from_ms: 0,
                to_ms: 10,
            },
            LateWindow {
                meters: vec!["calls"],
                from_ms: 10,
                to_ms: 20,
            },
        ];
        assert_eq!(
            late_events_statement("t", "c", &windows, 7).render(),
            "SELECT toUInt64(uniqExact(event_id)) FROM usage_samples PREWHERE ingested_ms > 7 \
             WHERE tenant = 't' AND customer = 'c' AND ((meter IN ('calls', 'tokens') \
             AND ts_ms >= 0 AND ts_ms < 10) OR (meter IN ('calls') AND ts_ms >= 10 AND ts_ms < 20))"
        );
        assert!(
            late_events_statement("t", "c", &[], 7)
                .render()
                .ends_with("AND customer = 'c' AND 0")
        );
    }
}
