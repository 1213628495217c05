//! The samples of a `dynamic` price in the order its included units are counted: each event's
//! sample of the meter (its units) followed by its priced sample (its unit amount, kept as the
//! sample's text at ingest), by timestamp, then event id. Read only as far as the included
//! units go.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::sql::Sql;
use super::usage_sql::parse_value;
use super::{Store, StoreError};

/// One event's units and unit amount, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredPricedSample {
    pub value: Decimal,
    pub unit_amount: Decimal,
}

/// One group of one dynamic price of one customer over a window.
#[derive(Debug, Clone)]
pub struct PricedScope<'a> {
    pub tenant: &'a str,
    pub customer: &'a str,
    pub meter: &'a str,
    /// Where the meter's samples priced at the price's property are (`plan::priced_meter`).
    pub priced_meter: &'a str,
    /// The price's group keys and this group's values.
    pub group_by: &'a [String],
    pub group: &'a [String],
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only samples ingested at or before this instant (epoch ms).
    pub as_of_ms: Option<i64>,
}

/// The samples of `scope` in counting order, the meter's sample of an event before its priced
/// one.
pub fn priced_samples_statement(scope: &PricedScope<'_>) -> Sql {
    let mut sql = Sql::new("SELECT meter = ");
    sql.arg(scope.priced_meter)
        .push(" AS priced, event_id, toString(value) AS value, value_str FROM usage_samples PREWHERE tenant = ")
        .arg(scope.tenant)
        .push(" AND customer = ")
        .arg(scope.customer)
        .push(" AND meter IN (")
        .list([scope.meter, scope.priced_meter])
        .push(") AND ts_ms >= ")
        .arg(scope.from_ms)
        .push(" AND ts_ms < ")
        .arg(scope.to_ms)
        .push(" WHERE 1");
    for (key, value) in scope.group_by.iter().zip(scope.group) {
        sql.push(" AND group_values[indexOf(group_keys, ")
            .arg(key.as_str())
            .push(")] = ")
            .arg(value.as_str());
    }
    if let Some(as_of_ms) = scope.as_of_ms {
        sql.push(" AND ingested_ms <= ").arg(as_of_ms);
    }
    sql.push(" ORDER BY ts_ms, event_id, priced");
    sql
}

#[derive(clickhouse::Row, Deserialize)]
struct PricedRow {
    priced: u8,
    event_id: String,
    value: String,
    value_str: String,
}

impl Store {
    /// The first samples of [`priced_samples_statement`] that hold `included` units (the
    /// event that crosses it included), each with its unit amount (0 for an event without a
    /// priced sample: ingested before the price existed).
    pub async fn samples_to_include(
        &self,
        statement: &Sql,
        included: Decimal,
    ) -> Result<Vec<StoredPricedSample>, StoreError> {
        let mut cursor = statement
            .query(self.reader())
            .fetch::<PricedRow>()
            .map_err(StoreError::from_read)?;
        let mut samples: Vec<StoredPricedSample> = Vec::new();
        let (mut units, mut event) = (Decimal::ZERO, String::new());
        while let Some(row) = cursor.next().await.map_err(StoreError::from_read)? {
            if row.priced == 0 {
                if units >= included {
                    break;
                }
                let value = parse_value(&row.value)?;
                units += value.max(Decimal::ZERO);
                samples.push(StoredPricedSample {
                    value,
                    unit_amount: Decimal::ZERO,
                });
                event = row.event_id;
            } else if row.event_id == event
                && let Some(last) = samples.last_mut()
            {
                last.unit_amount = parse_value(&row.value_str)?;
            }
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_samples_are_read_in_counting_order_up_to_the_moment() {
        let (keys, values) = (["model".to_owned()], ["gpt-x".to_owned()]);
        let scope = PricedScope {
            tenant: "t",
            customer: "c",
            meter: "tokens",
            priced_meter: "tokens#unit_price",
            group_by: &keys,
            group: &values,
            from_ms: 10,
            to_ms: 20,
            as_of_ms: Some(15),
        };
        assert_eq!(
            priced_samples_statement(&scope).render(),
            "SELECT meter = 'tokens#unit_price' AS priced, event_id, toString(value) AS value, \
             value_str FROM usage_samples PREWHERE tenant = 't' AND customer = 'c' \
             AND meter IN ('tokens', 'tokens#unit_price') AND ts_ms >= 10 AND ts_ms < 20 \
             WHERE 1 AND group_values[indexOf(group_keys, 'model')] = 'gpt-x' \
             AND ingested_ms <= 15 ORDER BY ts_ms, event_id, priced"
        );
    }
}
