//! A customer's account as of now: active subscriptions, each one's current-period report, and
//! per usage price the units included and used. Shared by `GET /v1/customers/{id}/billing_state`,
//! `GET /v1/subscriptions/{id}` and the vendor-shaped endpoints, so they all tell one story.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::UsageReader;
use super::report::{ResolvedSubscription, UsageError, UsageReport, report};
use crate::billing::period::{Status, Timeline};
use crate::catalog::TenantCatalog;
use crate::domain::{Meter, Plan, Subscription};

/// One usage price of a current period: what is included and what was used.
#[derive(Debug, Clone, Serialize)]
pub struct UsageLine {
    pub subscription: String,
    /// The plan of the phase the price belongs to: a period with a plan change has lines of
    /// each plan.
    pub plan: String,
    pub price: String,
    pub meter: String,
    /// The meter's display name.
    #[serde(skip)]
    pub meter_name: String,
    pub included_units: Decimal,
    pub used_units: Decimal,
    /// Included units not yet used: 0 once usage reaches them, never negative.
    pub remaining_units: Decimal,
    /// Usage beyond the included units (any usage when none are included).
    pub overage: bool,
}

/// A subscription active (or trialing) now, with its current period's report.
#[derive(Debug, Clone)]
pub struct Current<'c> {
    pub subscription: &'c Subscription,
    pub plan: &'c Plan,
    pub status: Status,
    /// Its billing periods, trial and end.
    pub timeline: Timeline,
    pub report: UsageReport,
    pub usage: Vec<UsageLine>,
}

/// The customer's subscriptions that are active (or trialing) at `now`, newest first.
pub fn active_subscriptions<'c>(
    catalog: &'c TenantCatalog,
    customer: &str,
    now: DateTime<Utc>,
) -> Vec<(&'c Subscription, Status)> {
    let mut active: Vec<_> = catalog
        .subscriptions
        .values()
        .filter(|s| s.customer == customer)
        .filter_map(|s| {
            let resolved = ResolvedSubscription::new("", catalog, s).ok()?;
            let status = resolved.timeline.status_at(now);
            matches!(status, Status::Active | Status::Trialing).then_some((s, status))
        })
        .collect();
    active.sort_by_key(|(s, _)| std::cmp::Reverse(s.start_date));
    active
}

/// The report for the subscription's billing period at `now`; `None` when it has none (not
/// started or ended).
pub async fn current_report(
    reader: &UsageReader,
    tenant: &str,
    catalog: &TenantCatalog,
    subscription: &Subscription,
    now: DateTime<Utc>,
) -> Result<Option<UsageReport>, UsageError> {
    let resolved = ResolvedSubscription::new(tenant, catalog, subscription)?;
    let Some(period) = resolved.timeline.period_at(now)? else {
        return Ok(None);
    };
    Ok(Some(
        report(reader, &resolved, period.window.from, period.window.to).await?,
    ))
}

/// Per usage price of a report: included and used units.
pub fn usage_lines(catalog: &TenantCatalog, report: &UsageReport) -> Vec<UsageLine> {
    report
        .charges
        .iter()
        .map(|c| UsageLine {
            subscription: report.subscription.clone(),
            plan: c.plan.clone(),
            price: c.price.clone(),
            meter: c.meter.clone(),
            meter_name: catalog
                .get::<Meter>(&c.meter)
                .map_or_else(|| c.meter.clone(), |m| m.name.clone()),
            included_units: c.included_units,
            used_units: c.quantity,
            remaining_units: c.remaining_units(),
            overage: c.is_overage(),
        })
        .collect()
}

/// The customer's active subscriptions at `now`, newest first, each with its current report.
pub async fn current_subscriptions<'c>(
    reader: &UsageReader,
    tenant: &str,
    catalog: &'c TenantCatalog,
    customer: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Current<'c>>, UsageError> {
    let mut current = Vec::new();
    for (subscription, status) in active_subscriptions(catalog, customer, now) {
        let resolved = ResolvedSubscription::new(tenant, catalog, subscription)?;
        // Active or trialing now, so it has a current period.
        let Some(period) = resolved.timeline.period_at(now)? else {
            continue;
        };
        let report = report(reader, &resolved, period.window.from, period.window.to).await?;
        let plan = catalog.get::<Plan>(&report.plan).ok_or_else(|| {
            UsageError::Catalog(format!("plan '{}' no longer exists", report.plan))
        })?;
        current.push(Current {
            subscription,
            plan,
            status,
            timeline: resolved.timeline,
            usage: usage_lines(catalog, &report),
            report,
        });
    }
    Ok(current)
}
