//! The measured amounts of `dynamic` prices, per group: Σ value × unit amount from the priced
//! samples (read with the meter's, often from memory), and what the group's first included
//! units cost, which is taken off. Included units are counted in event order (timestamp, then
//! event id) within each rated part of the window, per group; an event that crosses the limit
//! is free for its units below it.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::UsageReader;
use super::report::UsageError;
use crate::billing::rating::{DynamicAmounts, PricedSample, included_share};
use crate::store::priced_sql::{PricedScope, priced_samples_statement};
use crate::store::usage_sql::GroupUsage;

/// One dynamic price over one part of a window.
pub(super) struct PricedRead<'a> {
    pub tenant: &'a str,
    pub customer: &'a str,
    pub meter: &'a str,
    pub priced_meter: &'a str,
    pub group_by: &'a [String],
    pub bounds: (i64, i64),
    pub included: Decimal,
}

/// The amounts of each of the meter's `groups`, given the priced meter's groups.
pub(super) async fn amounts(
    reader: &UsageReader,
    read: &PricedRead<'_>,
    groups: &[GroupUsage],
    priced: &[GroupUsage],
) -> Result<BTreeMap<Vec<String>, DynamicAmounts>, UsageError> {
    let mut amounts = BTreeMap::new();
    for group in groups {
        let total = priced
            .iter()
            .find(|p| p.group == group.group)
            .map_or(Decimal::ZERO, |p| p.value);
        let included = if read.included <= Decimal::ZERO {
            Decimal::ZERO
        } else if group.value <= read.included {
            // Every unit is included: all of it is free.
            total
        } else {
            let scope = PricedScope {
                tenant: read.tenant,
                customer: read.customer,
                meter: read.meter,
                priced_meter: read.priced_meter,
                group_by: read.group_by,
                group: &group.group,
                from_ms: read.bounds.0,
                to_ms: read.bounds.1,
                as_of_ms: reader.as_of_ms(),
            };
            let statement = priced_samples_statement(&scope);
            let samples = reader
                .store()
                .for_customer(read.tenant, read.customer)
                .samples_to_include(&statement, read.included)
                .await?;
            let samples = samples.into_iter().map(|s| PricedSample {
                value: s.value,
                unit_amount: s.unit_amount,
            });
            included_share(samples, read.included)?
        };
        amounts.insert(
            group.group.clone(),
            DynamicAmounts {
                priced: total,
                included,
            },
        );
    }
    Ok(amounts)
}
