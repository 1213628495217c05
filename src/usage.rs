//! Usage and charges of a subscription over a window: its billing periods (`billing::period`),
//! each usage price's quantity from the store (`store::usage`), rated (`billing::rating`),
//! flat fees once per period, totals rounded once (`billing::money`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::money::round_to_currency;
use crate::billing::period::{Period, PeriodError, Timeline, Window};
use crate::billing::rating::{self, Charge, RatingError, TierLine};
use crate::catalog::Aggregation;
use crate::catalog::plan::{Price, PriceType, Timing};
use crate::catalog::{Catalog, Customer, Meter, Plan, Subscription, TenantCatalog};
use crate::store::usage::{GroupUsage, MeterGroupUsage, UsageQuery, project, usage};
use crate::store::usage_cache::{self, cached_usage_of_meters};
use crate::store::{Store, StoreError};

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
    pub model: Option<crate::catalog::plan::UsageModel>,
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub subscription: String,
    pub customer: String,
    pub plan: String,
    pub currency: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub charges: Vec<UsageCharge>,
    pub flat_fees: Vec<FlatFee>,
    /// The usage charges' sum, full precision (flat fees not included).
    pub usage_amount: Decimal,
    /// Usage charges and flat fees, full precision.
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
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub catalog: &'a TenantCatalog,
    pub subscription: &'a Subscription,
    pub customer: &'a Customer,
    pub timeline: Timeline,
}

impl<'a> Subject<'a> {
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

    fn plan(&self, period: &Period) -> Result<&'a Plan, UsageError> {
        let code = &self.subscription.phases[period.phase].plan;
        self.catalog
            .get::<Plan>(code)
            .ok_or_else(|| UsageError::Catalog(format!("plan '{code}' no longer exists")))
    }
}

/// Usage and charges over `[from, to)`: every billing period overlapping it, each usage price
/// measured over the part of the period inside the window.
pub async fn report(
    store: &Store,
    subject: &Subject<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<UsageReport, UsageError> {
    let periods = subject.timeline.periods_overlapping(from, to)?;
    let window = Window { from, to };
    let mut charges = Vec::new();
    let mut flat_fees = Vec::new();
    let mut last_plan = subject.catalog.get::<Plan>(
        subject
            .subscription
            .plan_at(to.min(subject.timeline.end.unwrap_or(to))),
    );
    for period in &periods {
        let plan = subject.plan(period)?;
        last_plan = Some(plan);
        let Some(inside) = period.window.intersect(&window) else {
            continue;
        };
        charges.extend(usage_charges(store, subject, plan, inside).await?);
        if !period.trial {
            for price in plan.prices.iter().filter(|p| p.kind == PriceType::Flat) {
                flat_fees.push(flat_fee(plan, price, period)?);
            }
        }
    }
    let plan = last_plan
        .ok_or_else(|| UsageError::Catalog("the subscription's plan no longer exists".into()))?;
    let usage_amount = charges.iter().map(|c| c.amount).sum::<Decimal>();
    let subtotal = usage_amount + flat_fees.iter().map(|f| f.amount).sum::<Decimal>();
    Ok(UsageReport {
        subscription: subject.subscription.external_id.clone(),
        customer: subject.customer.external_id.clone(),
        plan: plan.code.clone(),
        currency: plan.currency.clone(),
        from,
        to,
        as_of: Utc::now(),
        charges,
        flat_fees,
        usage_amount,
        subtotal,
        total: round_to_currency(subtotal, &plan.currency),
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
/// (`store::usage::usage_of_meters`, kept in memory by `store::usage_cache`); a price whose
/// groups cannot be taken from that read
/// (see `project`) is read on its own.
async fn usage_charges(
    store: &Store,
    subject: &Subject<'_>,
    plan: &Plan,
    window: Window,
) -> Result<Vec<UsageCharge>, UsageError> {
    let priced = priced_meters(subject.catalog, plan)?;
    let meters = meters_read(&priced);
    let customer = subject.customer.external_id.as_str();
    let bounds = (window.from.timestamp_millis(), window.to.timestamp_millis());
    let rows = cached_usage_of_meters(store, subject.tenant, customer, bounds, &meters).await?;
    let mut charges = Vec::with_capacity(priced.len());
    for (price, slug, aggregation) in priced {
        let projected = rows.as_ref().and_then(|rows| {
            let of_meter: Vec<&MeterGroupUsage> = rows.iter().filter(|r| r.meter == slug).collect();
            project(&of_meter, &price.group_by, aggregation)
        });
        let groups = match projected {
            Some(groups) => groups,
            None => {
                let query = UsageQuery {
                    tenant: subject.tenant,
                    meter: slug,
                    aggregation,
                    customer,
                    from_ms: bounds.0,
                    to_ms: bounds.1,
                    group_by: &price.group_by,
                };
                usage(store, &query).await?
            }
        };
        charges.push(usage_charge(plan, price, slug, window, &groups)?);
    }
    Ok(charges)
}

/// The usage prices of `plan`, each with its meter's slug and aggregation.
fn priced_meters<'p>(
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

/// The meters the usage prices read, each once, in the prices' order: what one read of a
/// plan's usage asks (and what the cache keys its answer by).
fn meters_read<'p>(priced: &[(&'p Price, &'p str, Aggregation)]) -> Vec<(&'p str, Aggregation)> {
    let mut meters: Vec<(&str, Aggregation)> = Vec::new();
    for &(_, slug, aggregation) in priced {
        if !meters.iter().any(|(m, _)| *m == slug) {
            meters.push((slug, aggregation));
        }
    }
    meters
}

/// The meters one read of a plan's usage asks for ([`meters_read`]).
type Meters<'c> = Vec<(&'c str, Aggregation)>;

/// One read of a plan's usage: its window in epoch ms, and its meters.
type Asked<'c> = ((i64, i64), Meters<'c>);

/// A customer and its window in epoch ms.
type CustomerWindow<'c> = (&'c str, (i64, i64));
/// How many customers one statement of [`load_current_periods`] reads at most...
const LOAD_CUSTOMERS: usize = 500;
/// ...and how many bytes of their ids: the statement names each customer seven times, and
/// ClickHouse parses at most 256 KiB of a statement (`max_query_size`).
const LOAD_ID_BYTES: usize = 16 * 1024;

/// `asked` cut into the customers of one load statement each ([`LOAD_CUSTOMERS`],
/// [`LOAD_ID_BYTES`]; a single customer over the byte bound goes alone).
fn load_chunks<'a, 'c>(asked: &'a [CustomerWindow<'c>]) -> Vec<&'a [CustomerWindow<'c>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (customer, _)) in asked.iter().enumerate() {
        let full = i - start == LOAD_CUSTOMERS || bytes + customer.len() > LOAD_ID_BYTES;
        if full && i > start {
            chunks.push(&asked[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += customer.len();
    }
    if start < asked.len() {
        chunks.push(&asked[start..]);
    }
    chunks
}

/// Loads into memory (`store::usage_cache`) the usage of the billing period at `now` of every
/// subscription of `tenant` that has one, as [`report`] reads it for the current period, so
/// that its first read is answered from memory as well. Subscriptions whose answer is already
/// held are skipped; the others are read in one statement per set of meters (each customer
/// over its own window) for up to [`LOAD_CUSTOMERS`] customers. A subscription whose catalog
/// entries are inconsistent is skipped (its own reads report why). Returns how many answers
/// were loaded.
pub async fn load_current_periods(
    store: &Store,
    tenant: &str,
    catalog: &TenantCatalog,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    // Per set of meters, each customer's window.
    let mut by_meters: HashMap<Meters<'_>, Vec<CustomerWindow<'_>>> = HashMap::new();
    for subscription in catalog.subscriptions.values() {
        let Ok(asked) = current_questions(tenant, catalog, subscription, now) else {
            continue;
        };
        for (bounds, meters) in asked {
            let customer = subscription.customer.as_str();
            by_meters
                .entry(meters)
                .or_default()
                .push((customer, bounds));
        }
    }
    let mut loaded = 0;
    for (meters, mut asked) in by_meters {
        asked.sort_unstable();
        asked.dedup();
        // A statement answers per customer, so it reads each customer once: a customer with
        // several windows (subscriptions) has them read by successive statements.
        while !asked.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (once, again): (Vec<_>, Vec<_>) =
                asked.into_iter().partition(|&(c, _)| seen.insert(c));
            for chunk in load_chunks(&once) {
                loaded += usage_cache::load(store, tenant, chunk, &meters).await?;
            }
            asked = again;
        }
    }
    Ok(loaded)
}

/// The reads (window in epoch ms, meters) of the subscription's report for its period at
/// `now`: one per phase of the period. None when it has no period then.
fn current_questions<'c>(
    tenant: &'c str,
    catalog: &'c TenantCatalog,
    subscription: &'c Subscription,
    now: DateTime<Utc>,
) -> Result<Vec<Asked<'c>>, UsageError> {
    let subject = Subject::new(tenant, catalog, subscription)?;
    let Some(current) = subject.timeline.period_at(now)? else {
        return Ok(vec![]);
    };
    let window = current.window;
    let mut asked = Vec::new();
    for period in subject
        .timeline
        .periods_overlapping(window.from, window.to)?
    {
        let Some(inside) = period.window.intersect(&window) else {
            continue;
        };
        let plan = subject.plan(&period)?;
        let meters = meters_read(&priced_meters(catalog, plan)?);
        if !meters.is_empty() {
            let bounds = (inside.from.timestamp_millis(), inside.to.timestamp_millis());
            asked.push((bounds, meters));
        }
    }
    Ok(asked)
}

/// Loads the current periods of every tenant's subscriptions into memory at once, then every
/// `every`: new subscriptions, new periods, and customers whose answers another writer's
/// events dropped are read back in bulk rather than on their next read.
pub fn spawn_load_current_periods(
    store: Store,
    catalog: Catalog,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let mut loaded = 0;
            for (tenant, snapshot) in catalog.tenants() {
                match load_current_periods(&store, &tenant, &snapshot, Utc::now()).await {
                    Ok(n) => loaded += n,
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, error = %e, "loading current periods' usage failed");
                    }
                }
            }
            if loaded > 0 {
                tracing::info!(
                    loaded,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "current periods' usage loaded into memory"
                );
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Rates one usage price's measured `groups`.
fn usage_charge(
    plan: &Plan,
    price: &Price,
    slug: &str,
    window: Window,
    groups: &[GroupUsage],
) -> Result<UsageCharge, UsageError> {
    let model = price.rating_model().ok_or_else(|| {
        UsageError::Catalog(format!("price '{}' has no usable model", price.code))
    })?;
    let included = price.included();
    let (amount, total, tiers, group_charges) = if price.group_by.is_empty() {
        let usage = groups.first();
        let q = usage.map_or(Decimal::ZERO, |u| u.value);
        let charge = rating::rate(&model, q, included)?;
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
        let rated = rating::rate_groups(
            &model,
            included,
            groups.iter().map(|g| (g, g.value)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_statements_are_bounded_by_customers_and_by_id_bytes() {
        let short: Vec<String> = (0..1_201).map(|i| format!("c{i:04}")).collect();
        let asked: Vec<CustomerWindow<'_>> = short.iter().map(|c| (c.as_str(), (0, 1))).collect();
        let sizes: Vec<usize> = load_chunks(&asked).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [500, 500, 201]);
        // 1,000-byte ids: 16 fit in 16 KiB; one longer than the bound goes alone.
        let long: Vec<String> = (0..40).map(|i| format!("{i:0>1000}")).collect();
        let huge = "x".repeat(20_000);
        let mut asked: Vec<CustomerWindow<'_>> =
            long.iter().map(|c| (c.as_str(), (0, 1))).collect();
        asked.insert(20, (huge.as_str(), (0, 1)));
        let chunks = load_chunks(&asked);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [16, 4, 1, 16, 4]);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), asked.len());
        assert!(load_chunks(&[]).is_empty());
    }
}
