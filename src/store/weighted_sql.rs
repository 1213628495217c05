//! The samples a `weighted_sum` meter is integrated from (`domain::weighted`): per customer
//! and series (the meter's own group values), the last sample before the window (the value
//! carried in) and every sample inside it, in time order (equal times by event id). Read from
//! `usage_samples`: the hour rollups' states do not say when in the hour each value started to
//! hold; whole hours may come from the weighted grain instead (`store::weighted_grain`), and the
//! samples are then read only around them. The carried-in sample is the newest of the series'
//! history, found through the table's key `(tenant, customer, meter, ts_ms)`.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::sql::Sql;
use super::usage_sql::{Scope, parse_value, scope_condition};
use super::{Store, StoreError};

/// One weighted meter's read over `[from_ms, to_ms)`.
#[derive(Debug, Clone)]
pub struct WeightedScope<'a> {
    /// Tenant, meter, customer (or all), filters, moment.
    pub scope: Scope<'a>,
    /// The meter's own `group_by`: a value holds until the next sample with the same values.
    pub series_by: &'a [String],
    /// The keys each sample's time is reported under (a price's or a series' `group_by`).
    pub group_by: &'a [String],
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One stored sample of a weighted meter.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSample {
    pub customer: String,
    /// Values of the meter's `group_by` ("" where the event lacked the key).
    pub series: Vec<String>,
    /// Values of the read's `group_by`.
    pub group: Vec<String>,
    pub ts_ms: i64,
    pub value: Decimal,
    /// The last sample before the window (its value is in force at the window's start).
    pub carried: bool,
}

pub(super) fn values_of(keys: &[String]) -> Sql {
    if keys.is_empty() {
        return Sql::new("emptyArrayString()");
    }
    let mut sql = Sql::new("[");
    for (i, key) in keys.iter().enumerate() {
        sql.push(if i == 0 { "" } else { ", " })
            .push("group_values[indexOf(group_keys, ")
            .arg(key)
            .push(")]");
    }
    sql.push("]");
    sql
}

/// The samples of `w`: carried-in ones first per series (the last before the window), then
/// those inside `inside` (ranges of the window, epoch ms, sorted: the window whole unless some
/// hours are read from the grain, `store::weighted_grain`); ordered by customer, series, time
/// and event id.
pub fn weighted_statement(w: &WeightedScope<'_>, inside: &[(i64, i64)]) -> Sql {
    let select = |carried: u8| {
        let mut sql = Sql::new("SELECT customer, ");
        sql.append(values_of(w.series_by))
            .push(" AS series, ")
            .append(values_of(w.group_by))
            .push(" AS grp, ts_ms, value, event_id, ")
            .push(if carried == 1 { "1" } else { "0" })
            .push(" AS carried FROM usage_samples PREWHERE ")
            .append(scope_condition(&w.scope));
        if carried == 1 {
            sql.push(" AND ts_ms < ").arg(w.from_ms);
        } else {
            let empty = [(w.from_ms, w.from_ms)];
            let inside = if inside.is_empty() {
                &empty[..]
            } else {
                inside
            };
            sql.push(" AND (").join(
                inside.iter().map(|&(from, to)| {
                    let mut range = Sql::new("ts_ms >= ");
                    range.arg(from).push(" AND ts_ms < ").arg(to);
                    range
                }),
                " OR ",
            );
            sql.push(")");
        }
        if let Some(as_of_ms) = w.scope.as_of_ms {
            sql.push(" WHERE ingested_ms <= ").arg(as_of_ms);
        }
        sql
    };
    let mut sql =
        Sql::new("SELECT customer, series, grp, ts_ms, toString(value) AS value, carried FROM (");
    sql.append(select(0))
        .push(" UNION ALL SELECT * FROM (")
        .append(select(1))
        .push(
            " ORDER BY customer, series, ts_ms DESC, event_id DESC LIMIT 1 BY customer, series)) \
             ORDER BY customer, series, ts_ms, carried DESC, event_id",
        );
    sql
}

#[derive(clickhouse::Row, Deserialize)]
struct WeightedRow {
    customer: String,
    series: Vec<String>,
    grp: Vec<String>,
    ts_ms: i64,
    value: String,
    carried: u8,
}

impl Store {
    /// Runs [`weighted_statement`] within the request's read budget.
    pub async fn weighted_samples(
        &self,
        statement: &Sql,
    ) -> Result<Vec<WeightedSample>, StoreError> {
        let rows: Vec<WeightedRow> = self.read_rows(statement).await?;
        rows.into_iter()
            .map(|r| {
                Ok(WeightedSample {
                    value: parse_value(&r.value)?,
                    customer: r.customer,
                    series: r.series,
                    group: r.grp,
                    ts_ms: r.ts_ms,
                    carried: r.carried == 1,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weighted_read_takes_the_last_sample_before_the_window_and_those_inside() {
        let (series_by, group_by) = (["region".to_owned()], ["tier".to_owned()]);
        let w = WeightedScope {
            scope: Scope {
                tenant: "t",
                meter: "gb",
                customer: Some("c"),
                filters: &[],
                as_of_ms: Some(50),
            },
            series_by: &series_by,
            group_by: &group_by,
            from_ms: 10,
            to_ms: 20,
        };
        assert_eq!(
            weighted_statement(&w, &[(10, 20)]).render(),
            "SELECT customer, series, grp, ts_ms, toString(value) AS value, carried FROM (\
             SELECT customer, [group_values[indexOf(group_keys, 'region')]] AS series, \
             [group_values[indexOf(group_keys, 'tier')]] AS grp, ts_ms, value, event_id, 0 AS carried \
             FROM usage_samples PREWHERE tenant = 't' AND meter = 'gb' AND customer = 'c' \
             AND (ts_ms >= 10 AND ts_ms < 20) WHERE ingested_ms <= 50 UNION ALL SELECT * FROM (\
             SELECT customer, [group_values[indexOf(group_keys, 'region')]] AS series, \
             [group_values[indexOf(group_keys, 'tier')]] AS grp, ts_ms, value, event_id, 1 AS carried \
             FROM usage_samples PREWHERE tenant = 't' AND meter = 'gb' AND customer = 'c' \
             AND ts_ms < 10 WHERE ingested_ms <= 50 \
             ORDER BY customer, series, ts_ms DESC, event_id DESC LIMIT 1 BY customer, series)) \
             ORDER BY customer, series, ts_ms, carried DESC, event_id"
        );
    }
}
