//! The time series of one meter: usage per window (minute, hour or day in a timezone),
//! customer and group, read in the same parts as any usage read.

use serde::Deserialize;

use super::sql::Sql;
use super::usage_sql::{GroupUsage, Leading, Part, Scope, merged, part_select};
use super::{Store, StoreError};
use crate::domain::Aggregation;

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
    pub scope: Scope<'a>,
    pub aggregation: Aggregation,
    pub from_ms: i64,
    pub to_ms: i64,
    pub window_size: WindowSize,
    /// IANA name; windows start at its local minute, hour or midnight.
    pub timezone: &'a str,
    /// Whether whole UTC hours fall inside one window (false for timezones whose offset is
    /// not a whole number of hours).
    pub hours_align: bool,
    /// Whether its days are UTC days (a timezone at UTC's offset throughout).
    pub utc_days: bool,
    pub group_by: &'a [String],
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

/// The series of `q` over `parts`: a row per window, customer and group.
pub fn series_statement(parts: &[Part], q: &SeriesQuery<'_>) -> Sql {
    let start_of = match q.window_size {
        WindowSize::Minute => "toStartOfMinute",
        WindowSize::Hour => "toStartOfHour",
        WindowSize::Day => "toStartOfDay",
    };
    let mut sql = Sql::new("SELECT toInt64(toUnixTimestamp(");
    sql.push(start_of)
        .push("(t, ")
        .arg(q.timezone)
        .push("))) AS window, customer, grp, ")
        .push(&merged(q.aggregation))
        .push(" FROM (");
    let selects = parts.iter().map(|&part| {
        part_select(
            part,
            q.aggregation,
            q.group_by,
            &q.scope,
            Leading::TimeAndCustomer,
        )
    });
    sql.join(selects, " UNION ALL ")
        .push(") GROUP BY window, customer, grp ORDER BY window, customer, grp");
    sql
}

impl Store {
    /// Runs a series read ([`series_statement`]) within the request's read budget.
    pub async fn series(&self, statement: &Sql) -> Result<Vec<SeriesPoint>, StoreError> {
        let rows: Vec<SeriesRow> = self.read_rows(statement).await?;
        rows.into_iter()
            .map(|r| {
                Ok(SeriesPoint {
                    usage: GroupUsage::from_row(r.grp, &r.value, r.events)?,
                    window: r.window,
                    customer: r.customer,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_binds_the_timezone_first_then_each_parts_values() {
        let q = SeriesQuery {
            scope: Scope {
                tenant: "t",
                meter: "m",
                customer: None,
                filters: &[],
                as_of_ms: None,
            },
            aggregation: Aggregation::Max,
            from_ms: 0,
            to_ms: 7_200_000,
            window_size: WindowSize::Hour,
            timezone: "Europe/Paris",
            hours_align: true,
            utc_days: false,
            group_by: &[],
        };
        let parts = [
            Part::Hours(0, 3_600_000),
            Part::Samples(3_600_000, 3_600_100),
        ];
        assert_eq!(
            series_statement(&parts, &q).render(),
            "SELECT toInt64(toUnixTimestamp(toStartOfHour(t, 'Europe/Paris'))) AS window, customer, grp, \
             toString(maxMerge(max_value)) AS value, countMerge(samples) AS events FROM (\
             SELECT bucket AS t, customer, emptyArrayString() AS grp, samples, max_value FROM usage_rollup_hour \
             PREWHERE tenant = 't' AND meter = 'm' AND bucket >= toDateTime(0) AND bucket < toDateTime(3600) \
             UNION ALL SELECT ts AS t, customer, emptyArrayString() AS grp, countState() AS samples, \
             maxState(value) AS max_value FROM usage_samples PREWHERE tenant = 't' AND meter = 'm' \
             AND ts_ms >= 3600000 AND ts_ms < 3600100 GROUP BY t, customer, grp) \
             GROUP BY window, customer, grp ORDER BY window, customer, grp"
        );
    }
}
