//! Usage and charges of a subscription over a window: its billing periods (`billing::period`),
//! each usage price's quantity ([`UsageReader`]), rated (`billing::rating`), flat fees once per
//! period, totals rounded once (`billing::money`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{UsageQuery, UsageReader, dynamic, weighted};
use crate::billing::money::round_to_currency;
use crate::billing::period::{Period, PeriodError, Timeline, Window};
use crate::billing::rating::{self, Charge, DynamicAmounts, Model, RatingError, TierLine};
use crate::catalog::TenantCatalog;
use crate::domain::Aggregation;
use crate::domain::plan::{Price, PriceType, Timing};
use crate::domain::{Customer, Meter, Plan, Subscription};
use crate::store::StoreError;
use crate::store::as_of_sql::LateWindow;
use crate::store::usage_sql::{GroupUsage, MeterGroupUsage, Scope};
use crate::store::weighted_sql::WeightedScope;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("rating failed: {0}")]
    Rating(#[from] RatingError),
    #[error("{0}")]
    Period(#[from] PeriodError),
    /// The catalog refers to something that is gone (a plan or meter of a past phase).
    #[error("{0}")]
    Catalog(String),
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupCharge {
    #[schema(value_type = Object)]
    pub group: serde_json::Map<String, serde_json::Value>,
    pub quantity: Decimal,
    pub billable_quantity: Decimal,
    pub events_count: u64,
    pub amount: Decimal,
    pub tiers: Vec<TierLine>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageCharge {
    pub price: String,
    pub plan: String,
    pub meter: String,
    pub model: Option<crate::domain::plan::UsageModel>,
    /// The part of the window this charge covers (one billing period or phase).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub quantity: Decimal,
    pub included_units: Decimal,
    pub billable_quantity: Decimal,
    pub events_count: u64,
    pub amount: Decimal,
    pub tiers: Vec<TierLine>,
    pub groups: Vec<GroupCharge>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlatFee {
    pub price: String,
    pub plan: String,
    pub amount: Decimal,
    pub timing: Timing,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What a plan's minimum commitment adds to the periods whose charges fall short of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommitmentTrueUp {
    pub plan: String,
    /// The commitment of the periods concerned, prorated like flat fees where the plan covers
    /// part of a period.
    pub minimum_commitment: Decimal,
    /// The periods' charges and flat fees.
    pub billed: Decimal,
    /// What is added: the commitment less what was billed, per period, never negative.
    pub amount: Decimal,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub subscription: String,
    pub customer: String,
    pub plan: String,
    pub currency: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The moment the figures stand at: now, or the `as_of` asked for.
    pub as_of: DateTime<Utc>,
    /// With `as_of`: events of the window's usage prices (their meters, each period's part of
    /// the window) ingested after that moment, so not counted here. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_events: Option<u64>,
    pub charges: Vec<UsageCharge>,
    pub flat_fees: Vec<FlatFee>,
    /// The usage charges' sum, full precision (flat fees not included).
    pub usage_amount: Decimal,
    /// Set when a plan's minimum commitment exceeds what its periods billed; shown apart from
    /// the charges, counted in the subtotal.
    pub commitment_true_up: Option<CommitmentTrueUp>,
    /// Usage charges, flat fees and the commitment true-up, full precision.
    pub subtotal: Decimal,
    pub total: Decimal,
}

impl UsageCharge {
    /// Included units not yet used: 0 once usage reaches them, never negative.
    pub fn remaining_units(&self) -> Decimal {
        (self.included_units.max(Decimal::ZERO) - self.quantity).max(Decimal::ZERO)
    }

    /// Usage beyond the included units (any usage when none are included).
    pub fn is_overage(&self) -> bool {
        self.quantity > self.included_units.max(Decimal::ZERO)
    }
}

/// Everything needed to report on one subscription.
pub struct ResolvedSubscription<'a> {
    pub tenant: &'a str,
    pub catalog: &'a TenantCatalog,
    pub subscription: &'a Subscription,
    pub customer: &'a Customer,
    pub timeline: Timeline,
}

impl<'a> ResolvedSubscription<'a> {
    pub fn new(
        tenant: &'a str,
        catalog: &'a TenantCatalog,
        subscription: &'a Subscription,
    ) -> Result<Self, UsageError> {
        let customer = catalog
            .get::<Customer>(&subscription.customer)
            .ok_or_else(|| {
                UsageError::Catalog(format!(
                    "customer '{}' no longer exists",
                    subscription.customer
                ))
            })?;
        let timeline = subscription
            .timeline(customer, |code| catalog.get::<Plan>(code))
            .map_err(UsageError::Catalog)?;
        Ok(Self {
            tenant,
            catalog,
            subscription,
            customer,
            timeline,
        })
    }

    pub(super) fn plan(&self, period: &Period) -> Result<&'a Plan, UsageError> {
        let code = &self.subscription.phases[period.phase].plan;
        self.catalog
            .get::<Plan>(code)
            .ok_or_else(|| UsageError::Catalog(format!("plan '{code}' no longer exists")))
    }
}

/// Usage and charges over `[from, to)`: every billing period overlapping it, each usage price
/// measured over the part of the period inside the window.
pub async fn report(
    reader: &UsageReader,
    resolved: &ResolvedSubscription<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<UsageReport, UsageError> {
    let periods = resolved.timeline.periods_overlapping(from, to)?;
    let window = Window { from, to };
    let mut charges = Vec::new();
    let mut flat_fees = Vec::new();
    let mut last_plan = resolved.catalog.get::<Plan>(
        resolved
            .subscription
            .plan_at(to.min(resolved.timeline.end.unwrap_or(to))),
    );
    let mut true_ups: Vec<CommitmentTrueUp> = Vec::new();
    let mut read_windows: Vec<LateWindow<'_>> = Vec::new();
    for period in &periods {
        let plan = resolved.plan(period)?;
        last_plan = Some(plan);
        let Some(inside) = period.window.intersect(&window) else {
            continue;
        };
        if reader.as_of_ms().is_some() {
            let priced = priced_meters(resolved.catalog, plan)?;
            read_windows.push(LateWindow {
                meters: meters_read(resolved.catalog, &priced)
                    .into_iter()
                    .map(|(m, _)| m)
                    .collect(),
                from_ms: inside.from.timestamp_millis(),
                to_ms: inside.to.timestamp_millis(),
            });
        }
        let from_start = inside.from == period.window.from;
        let period_charges = usage_charges(reader, resolved, plan, inside, from_start).await?;
        let mut billed = period_charges.iter().map(|c| c.amount).sum::<Decimal>();
        charges.extend(period_charges);
        if !period.trial {
            for price in plan.prices.iter().filter(|p| p.kind == PriceType::Flat) {
                let fee = flat_fee(plan, price, period)?;
                billed += fee.amount;
                flat_fees.push(fee);
            }
            if let Some(true_up) = commitment_true_up(plan, period, billed)? {
                true_ups.push(true_up);
            }
        }
    }
    let plan = last_plan
        .ok_or_else(|| UsageError::Catalog("the subscription's plan no longer exists".into()))?;
    let customer = resolved.customer.external_id.as_str();
    let late_events = reader
        .late_events(resolved.tenant, customer, &read_windows)
        .await?;
    let as_of = reader
        .as_of_ms()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    let usage_amount = charges.iter().map(|c| c.amount).sum::<Decimal>();
    let commitment_true_up = merge_true_ups(true_ups);
    let subtotal = usage_amount
        + flat_fees.iter().map(|f| f.amount).sum::<Decimal>()
        + commitment_true_up
            .as_ref()
            .map_or(Decimal::ZERO, |t| t.amount);
    Ok(UsageReport {
        subscription: resolved.subscription.external_id.clone(),
        customer: resolved.customer.external_id.clone(),
        plan: plan.code.clone(),
        currency: plan.currency.clone(),
        from,
        to,
        as_of,
        late_events,
        charges,
        flat_fees,
        usage_amount,
        commitment_true_up,
        subtotal,
        total: round_to_currency(subtotal, &plan.currency),
    })
}

/// The true-up of one period: its plan's commitment (prorated like a flat fee over the part of
/// the period the plan covers) less what the period `billed`, when that is short of it.
fn commitment_true_up(
    plan: &Plan,
    period: &Period,
    billed: Decimal,
) -> Result<Option<CommitmentTrueUp>, UsageError> {
    let Some(commitment) = &plan.minimum_commitment else {
        return Ok(None);
    };
    let committed = rating::flat_fee(
        commitment.amount,
        true,
        period.window.millis(),
        period.full.millis(),
    )?;
    Ok((billed < committed).then(|| CommitmentTrueUp {
        plan: plan.code.clone(),
        minimum_commitment: committed,
        billed,
        amount: committed - billed,
        from: period.window.from,
        to: period.window.to,
    }))
}

/// The true-ups of several periods as one line (a window over more than one period): their
/// commitments, what they billed and what is added, summed; the span of their periods.
fn merge_true_ups(true_ups: Vec<CommitmentTrueUp>) -> Option<CommitmentTrueUp> {
    true_ups.into_iter().reduce(|a, b| CommitmentTrueUp {
        plan: b.plan,
        minimum_commitment: a.minimum_commitment + b.minimum_commitment,
        billed: a.billed + b.billed,
        amount: a.amount + b.amount,
        from: a.from.min(b.from),
        to: a.to.max(b.to),
    })
}

fn flat_fee(plan: &Plan, price: &Price, period: &Period) -> Result<FlatFee, UsageError> {
    let amount = rating::flat_fee(
        price.amount.unwrap_or_default(),
        price.prorate.unwrap_or(false),
        period.window.millis(),
        period.full.millis(),
    )?;
    Ok(FlatFee {
        price: price.code.clone(),
        plan: plan.code.clone(),
        amount,
        timing: price.timing.unwrap_or(Timing::Advance),
        from: period.window.from,
        to: period.window.to,
    })
}

/// The usage prices of `plan` over `window`: every meter they use read in one statement
/// ([`UsageReader::of_meters`], often from memory); a price whose groups cannot be taken from
/// that read ([`groups_of_price`]) is read on its own. A dynamic price also reads its priced
/// samples (`dynamic`). `from_start`: `window` starts at its period's start.
async fn usage_charges(
    reader: &UsageReader,
    resolved: &ResolvedSubscription<'_>,
    plan: &Plan,
    window: Window,
    from_start: bool,
) -> Result<Vec<UsageCharge>, UsageError> {
    let priced = priced_meters(resolved.catalog, plan)?;
    let meters = meters_read(resolved.catalog, &priced);
    let customer = resolved.customer.external_id.as_str();
    let bounds = (window.from.timestamp_millis(), window.to.timestamp_millis());
    let rows = reader
        .of_meters(resolved.tenant, customer, bounds, &meters, from_start)
        .await?;
    let read = MeterRead {
        reader,
        rows: rows.as_deref().map(Vec::as_slice),
        tenant: resolved.tenant,
        customer,
        bounds,
    };
    let mut charges = Vec::with_capacity(priced.len());
    for (price, slug, aggregation) in priced {
        let groups = match aggregation {
            Aggregation::WeightedSum => {
                read.weighted(resolved.catalog, slug, &price.group_by)
                    .await?
            }
            _ => read.groups(slug, aggregation, &price.group_by).await?,
        };
        let amounts = match priced_meter(resolved.catalog, price) {
            Some(priced_meter) => {
                let priced = read
                    .groups(priced_meter, Aggregation::Sum, &price.group_by)
                    .await?;
                let scope = dynamic::PricedRead {
                    tenant: resolved.tenant,
                    customer,
                    meter: slug,
                    priced_meter,
                    group_by: &price.group_by,
                    bounds,
                    included: price.included(),
                };
                Some(dynamic::amounts(reader, &scope, &groups, &priced).await?)
            }
            None => None,
        };
        let measured = Measured {
            groups: &groups,
            amounts: amounts.as_ref(),
        };
        charges.push(usage_charge(plan, price, slug, window, measured)?);
    }
    Ok(charges)
}

/// The rows of one combined read, and how to read a meter on its own when they do not do.
struct MeterRead<'a> {
    reader: &'a UsageReader,
    rows: Option<&'a [MeterGroupUsage]>,
    tenant: &'a str,
    customer: &'a str,
    bounds: (i64, i64),
}

impl MeterRead<'_> {
    /// A `weighted_sum` meter's integral per group of `group_by`, from its samples
    /// (`weighted`): the combined read holds only its events' count.
    async fn weighted(
        &self,
        catalog: &TenantCatalog,
        slug: &str,
        group_by: &[String],
    ) -> Result<Vec<GroupUsage>, UsageError> {
        let meter = catalog
            .get::<Meter>(slug)
            .ok_or_else(|| UsageError::Catalog(format!("meter '{slug}' no longer exists")))?;
        let unit = meter
            .weight_unit
            .ok_or_else(|| UsageError::Catalog(format!("meter '{slug}' has no weight_unit")))?;
        let scope = WeightedScope {
            scope: Scope {
                tenant: self.tenant,
                meter: slug,
                customer: Some(self.customer),
                filters: &[],
                as_of_ms: self.reader.as_of_ms(),
            },
            series_by: &meter.group_by,
            group_by,
            from_ms: self.bounds.0,
            to_ms: self.bounds.1,
        };
        let usage = weighted::weighted_usage(self.reader, &scope, unit).await?;
        Ok(usage.into_iter().map(|u| u.usage).collect())
    }

    /// A meter's usage per group of `group_by`: from the combined read's rows where they
    /// give it, else read on its own.
    async fn groups(
        &self,
        slug: &str,
        aggregation: Aggregation,
        group_by: &[String],
    ) -> Result<Vec<GroupUsage>, UsageError> {
        let projected = self.rows.and_then(|rows| {
            let of_meter: Vec<&MeterGroupUsage> = rows.iter().filter(|r| r.meter == slug).collect();
            groups_of_price(&of_meter, group_by, aggregation)
        });
        if let Some(groups) = projected {
            return Ok(groups);
        }
        let query = UsageQuery {
            tenant: self.tenant,
            meter: slug,
            aggregation,
            customer: self.customer,
            from_ms: self.bounds.0,
            to_ms: self.bounds.1,
            group_by,
        };
        Ok(self.reader.of_meter(&query).await?)
    }
}

/// What was measured for one usage price: its meter's groups and, for a dynamic price, each
/// group's amounts.
struct Measured<'a> {
    groups: &'a [GroupUsage],
    amounts: Option<&'a BTreeMap<Vec<String>, DynamicAmounts>>,
}

/// The usage prices of `plan`, each with its meter's slug and aggregation.
pub(super) fn priced_meters<'p>(
    catalog: &'p TenantCatalog,
    plan: &'p Plan,
) -> Result<Vec<(&'p Price, &'p str, Aggregation)>, UsageError> {
    let mut priced = Vec::new();
    for price in plan.usage_prices() {
        let slug = price.meter.as_deref().unwrap_or_default();
        let meter = catalog.get::<Meter>(slug).ok_or_else(|| {
            UsageError::Catalog(format!(
                "meter '{slug}' of price '{}' no longer exists",
                price.code
            ))
        })?;
        priced.push((price, slug, meter.aggregation));
    }
    Ok(priced)
}

/// The meters the usage prices read, each once, in the prices' order (a dynamic price's
/// priced samples after its meter, as a sum): what one read of a plan's usage asks (and what
/// the cache keys its answer by).
pub(super) fn meters_read<'p>(
    catalog: &'p TenantCatalog,
    priced: &[(&'p Price, &'p str, Aggregation)],
) -> Vec<(&'p str, Aggregation)> {
    let mut meters: Vec<(&str, Aggregation)> = Vec::new();
    for &(price, slug, aggregation) in priced {
        let amounts = priced_meter(catalog, price).map(|m| (m, Aggregation::Sum));
        for (meter, aggregation) in std::iter::once((slug, aggregation)).chain(amounts) {
            if !meters.iter().any(|(m, _)| *m == meter) {
                meters.push((meter, aggregation));
            }
        }
    }
    meters
}

/// The meter of a dynamic price's priced samples, as the catalog's ingest index names it.
fn priced_meter<'c>(catalog: &'c TenantCatalog, price: &Price) -> Option<&'c str> {
    let property = price.unit_amount_property.as_deref()?;
    let meter = catalog.get::<Meter>(price.meter.as_deref()?)?;
    let entry = catalog
        .meters_for(&meter.event_type)
        .iter()
        .find(|e| e.meter.slug == meter.slug)?;
    let by = entry.priced.iter().find(|by| by.property == property)?;
    Some(&by.slug)
}

/// Rates one usage price's measured groups.
fn usage_charge(
    plan: &Plan,
    price: &Price,
    slug: &str,
    window: Window,
    measured: Measured<'_>,
) -> Result<UsageCharge, UsageError> {
    let model = price.rating_model().ok_or_else(|| {
        UsageError::Catalog(format!("price '{}' has no usable model", price.code))
    })?;
    // A dynamic price is rated with each group's measured amounts.
    let model_of = |group: &[String]| match measured.amounts {
        Some(amounts) => Model::Dynamic(amounts.get(group).copied().unwrap_or_default()),
        None => model,
    };
    let groups = measured.groups;
    let included = price.included();
    let (amount, total, tiers, group_charges) = if price.group_by.is_empty() {
        let usage = groups.first();
        let q = usage.map_or(Decimal::ZERO, |u| u.value);
        let events = usage.map_or(0, |u| u.count);
        let group = usage.map_or(&[][..], |u| u.group.as_slice());
        let charge = rating::rate(&model_of(group), q, events, included)?;
        let clamped = rating::clamp(charge.amount, price.minimum_amount, price.maximum_amount);
        (
            clamped,
            (
                charge.quantity,
                charge.billable_quantity,
                usage.map_or(0, |u| u.count),
            ),
            charge.tiers,
            vec![],
        )
    } else {
        let rated = rating::rate_each_group(
            included,
            groups
                .iter()
                .map(|g| (g, model_of(&g.group), g.value, g.count)),
            price.minimum_amount,
            price.maximum_amount,
        )?;
        let group_charges: Vec<GroupCharge> = rated
            .groups
            .iter()
            .map(|(g, charge)| group_charge(&price.group_by, g, charge))
            .collect();
        let q = group_charges.iter().map(|g| g.quantity).sum();
        let billable = group_charges.iter().map(|g| g.billable_quantity).sum();
        let events = group_charges.iter().map(|g| g.events_count).sum();
        (rated.amount, (q, billable, events), vec![], group_charges)
    };
    Ok(UsageCharge {
        price: price.code.clone(),
        plan: plan.code.clone(),
        meter: slug.to_owned(),
        model: price.model,
        from: window.from,
        to: window.to,
        quantity: total.0,
        included_units: included,
        billable_quantity: total.1,
        events_count: total.2,
        amount,
        tiers,
        groups: group_charges,
    })
}

fn group_charge(keys: &[String], usage: &GroupUsage, charge: &Charge) -> GroupCharge {
    let group = keys
        .iter()
        .cloned()
        .zip(
            usage
                .group
                .iter()
                .map(|v| serde_json::Value::String(v.clone())),
        )
        .collect();
    GroupCharge {
        group,
        quantity: charge.quantity,
        billable_quantity: charge.billable_quantity,
        events_count: usage.count,
        amount: charge.amount,
        tiers: charge.tiers.clone(),
    }
}

/// A price's groups from the rows of its meter: each row's values for `group_by` ("" where a
/// row lacks the key, as the per-meter statement does), rows that land in one group merged.
/// `None` when merging would need the aggregate states (distinct counts, latest values): the
/// caller then asks the store for that price alone.
pub fn groups_of_price(
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
                merged.value = aggregation.combine(merged.value, row.value)?;
                merged.count = merged.count.checked_add(row.count)?;
            }
        }
    }
    Some(groups.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let groups = groups_of_price(&rows, &["model".into()], Aggregation::UniqueCount).unwrap();
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
            groups_of_price(&rows, &by_model, a).map(|g| {
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
        let total = groups_of_price(&rows, &[], Aggregation::Sum).unwrap();
        assert_eq!((total[0].value, total[0].count), (Decimal::from(25), 7));
    }
}
