//! The dashboards' tables and reads: the secrets that sign links, events per hour, and the
//! overview's week of every meter over every customer in one statement.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::sql::Sql;
use super::usage_sql::{Leading, Part, Scope, States, parse_value, part_select};
use super::{Store, StoreError, queries};
use crate::domain::Aggregation;

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct SecretRow {
    secret: String,
    created_ms: i64,
}

/// Events of one hour (event time).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Deserialize)]
pub struct HourlyEvents {
    /// Start of the hour, epoch seconds.
    pub hour: i64,
    pub events: u64,
}

/// One meter of a week read ([`week_volumes_statement`]): what it aggregates and the parts
/// its window is read in (`readmodel::window::parts_of`, every customer's).
#[derive(Debug, Clone)]
pub struct WeekMeter<'a> {
    pub slug: &'a str,
    pub aggregation: Aggregation,
    pub parts: Vec<Part>,
}

/// One customer's volume of one meter over a week: the sum of its daily values for counts and
/// sums, the largest daily value otherwise (the meter query's daily series, folded).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerVolume {
    pub meter: String,
    pub customer: String,
    pub value: Decimal,
}

#[derive(clickhouse::Row, Deserialize)]
struct VolumeRow {
    meter: String,
    customer: String,
    value: String,
}

/// Whether a meter's daily values add up over days (counts and sums; a weighted sum's
/// integrals too, though those are read apart, from its samples).
pub fn adds_up_over_days(aggregation: Aggregation) -> bool {
    matches!(
        aggregation,
        Aggregation::Count | Aggregation::Sum | Aggregation::WeightedSum
    )
}

/// Every customer's volume of each of `meters` over their parts, one row per meter and
/// customer with usage: the meter query's daily series (days starting at midnight in
/// `timezone`, no group split) folded per customer in the store, as aggregate states merged
/// exactly. Values that add up over days are merged over the whole window at once (the days
/// tile it); the others per day first, then the largest day is taken.
pub fn week_volumes_statement(tenant: &str, timezone: &str, meters: &[WeekMeter<'_>]) -> Sql {
    let selects = meters
        .iter()
        .filter(|m| !m.parts.is_empty())
        .map(|m| meter_volumes(tenant, timezone, m));
    let mut sql = Sql::default();
    sql.join(selects, " UNION ALL ");
    sql
}

fn meter_volumes(tenant: &str, timezone: &str, meter: &WeekMeter<'_>) -> Sql {
    let scope = Scope {
        tenant,
        meter: meter.slug,
        customer: None,
        filters: &[],
        as_of_ms: None,
    };
    let merge = States::of(meter.aggregation).map_or_else(
        || "countMerge(samples)".to_owned(),
        |s| format!("{}({})", s.merge, s.column),
    );
    let parts = meter.parts.iter().map(|&part| {
        part_select(
            part,
            meter.aggregation,
            &[],
            &scope,
            Leading::TimeAndCustomer,
        )
    });
    let mut sql = Sql::new("SELECT ");
    sql.arg(meter.slug).push(" AS meter, customer, ");
    if adds_up_over_days(meter.aggregation) {
        sql.push("toString(")
            .push(&merge)
            .push(") AS value FROM (")
            .join(parts, " UNION ALL ")
            .push(") GROUP BY customer");
    } else {
        sql.push("toString(max(v)) AS value FROM (SELECT toStartOfDay(t, ")
            .arg(timezone)
            .push(") AS day, customer, ")
            .push(&merge)
            .push(" AS v FROM (")
            .join(parts, " UNION ALL ")
            .push(") GROUP BY day, customer) GROUP BY customer");
    }
    sql
}

impl Store {
    /// Runs a week read ([`week_volumes_statement`]) within the request's read budget.
    pub async fn week_volumes(&self, statement: &Sql) -> Result<Vec<CustomerVolume>, StoreError> {
        if statement.is_empty() {
            return Ok(vec![]);
        }
        let rows: Vec<VolumeRow> = self.read_rows(statement).await?;
        rows.into_iter()
            .map(|r| {
                Ok(CustomerVolume {
                    value: parse_value(&r.value)?,
                    meter: r.meter,
                    customer: r.customer,
                })
            })
            .collect()
    }

    /// Every stored signing secret (hex), oldest first.
    pub async fn dashboard_secrets(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client()
            .query(queries::DASHBOARD_SECRETS)
            .fetch_all()
            .await?)
    }

    /// Stores a new signing secret (hex).
    pub async fn insert_dashboard_secret(&self, secret: &str) -> Result<(), StoreError> {
        let mut insert = self
            .client()
            .insert::<SecretRow>("dashboard_secrets")
            .await?;
        insert
            .write(&SecretRow {
                secret: secret.to_owned(),
                created_ms: chrono::Utc::now().timestamp_millis(),
            })
            .await?;
        insert.end().await?;
        Ok(())
    }

    /// The tenant's events per hour of event time in `[from_s, to_s)`, hours without events
    /// left out; within the request's read budget.
    pub async fn events_per_hour(
        &self,
        tenant: &str,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<HourlyEvents>, StoreError> {
        let statement = queries::events_per_hour(tenant, from_s, to_s);
        let mut by_hour = std::collections::BTreeMap::new();
        // In cluster mode each shard counts its customers' events, all at once.
        let shards = self.shards();
        let reads = shards
            .iter()
            .map(|shard| shard.read_rows::<HourlyEvents>(&statement));
        for read in futures_util::future::join_all(reads).await {
            for h in read? {
                *by_hour.entry(h.hour).or_insert(0) += h.events;
            }
        }
        Ok(by_hour
            .into_iter()
            .map(|(hour, events)| HourlyEvents { hour, events })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_week_read_folds_each_meter_per_customer_in_one_statement() {
        let meters = [
            WeekMeter {
                slug: "calls",
                aggregation: Aggregation::Count,
                parts: vec![
                    Part::Days(0, 86_400_000),
                    Part::Hours(86_400_000, 90_000_000),
                ],
            },
            WeekMeter {
                slug: "users",
                aggregation: Aggregation::UniqueCount,
                parts: vec![
                    Part::Hours(0, 3_600_000),
                    Part::Samples(3_600_000, 3_600_500),
                ],
            },
            WeekMeter {
                slug: "none",
                aggregation: Aggregation::Max,
                parts: vec![],
            },
        ];
        assert_eq!(
            week_volumes_statement("t", "Europe/Paris", &meters).render(),
            "SELECT 'calls' AS meter, customer, toString(countMerge(samples)) AS value FROM (\
             SELECT bucket AS t, customer, emptyArrayString() AS grp, samples FROM usage_rollup_day \
             PREWHERE tenant = 't' AND meter = 'calls' AND bucket >= toDateTime(0) AND bucket < toDateTime(86400) \
             UNION ALL SELECT bucket AS t, customer, emptyArrayString() AS grp, samples FROM usage_rollup_hour \
             PREWHERE tenant = 't' AND meter = 'calls' AND bucket >= toDateTime(86400) AND bucket < toDateTime(90000)) \
             GROUP BY customer \
             UNION ALL \
             SELECT 'users' AS meter, customer, toString(max(v)) AS value FROM (\
             SELECT toStartOfDay(t, 'Europe/Paris') AS day, customer, uniqExactMerge(distinct_values) AS v FROM (\
             SELECT bucket AS t, customer, emptyArrayString() AS grp, samples, distinct_values FROM usage_rollup_hour \
             PREWHERE tenant = 't' AND meter = 'users' AND bucket >= toDateTime(0) AND bucket < toDateTime(3600) \
             UNION ALL SELECT ts AS t, customer, emptyArrayString() AS grp, countState() AS samples, \
             uniqExactState(value_str) AS distinct_values FROM usage_samples PREWHERE tenant = 't' AND meter = 'users' \
             AND ts_ms >= 3600000 AND ts_ms < 3600500 GROUP BY t, customer, grp) \
             GROUP BY day, customer) GROUP BY customer"
        );
        assert!(week_volumes_statement("t", "UTC", &meters[2..]).is_empty());
    }
}
