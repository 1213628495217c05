//! `/dashboard`: the tenant's overview: events per hour over 7 days, the meters with their
//! volume and top customers (`week`), and the current periods' estimated charges per plan and
//! per customer (refreshed live).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::live::{self, LiveParams};
use super::view::{self, href, money};
use super::week;
use super::{PageError, Viewer};
use crate::billing::period::Status;
use crate::catalog::TenantCatalog;
use crate::domain::Customer;
use crate::domain::{Plan, Subscription};
use crate::error::ApiError;
use crate::http::AppState;
use crate::readmodel::report::{ResolvedSubscription, UsageError, report};

#[derive(Debug, Default, Deserialize)]
pub(super) struct TenantParams {
    /// The zone times are shown in (IANA name); UTC by default.
    tz: Option<String>,
}

/// Customers listed as "top", at most.
const TOP: usize = 10;

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(params): Query<TenantParams>,
) -> Result<Markup, PageError> {
    viewer.require_tenant()?;
    let tz = super::zone(params.tz.as_deref())?;
    let catalog = state.catalog.tenant(&viewer.tenant);
    let now = Utc::now();
    // The current figures and the week read independently: at once.
    let (week, figures) = tokio::join!(
        week::kept_or_read(&state, &viewer.tenant, &catalog, tz, now),
        figures(&state, &viewer, &catalog, now)
    );
    let (week, figures) = (week?, figures?);
    let (events, meters) = week::sections(&viewer, &catalog, &week, tz);
    let live_src = href(&viewer, "/dashboard/live", &[]);
    let body = html! {
        form.zone method="get" action="/dashboard" {
            label { "Time zone " input type="text" name="tz" value=(tz.name()) placeholder="UTC"; }
            @if let Some(token) = &viewer.embedded_token { input type="hidden" name="token" value=(token); }
            button type="submit" { "Show" }
        }
        (events)
        (live::section(&live_src, figures))
        (meters)
    };
    Ok(view::page(Some(&viewer), "Overview", body))
}

/// The current-period figures alone, when they change (the page's refresh).
pub(super) async fn live(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(params): Query<LiveParams>,
) -> Result<Json<live::Figures>, PageError> {
    viewer.require_tenant()?;
    let catalog = state.catalog.tenant(&viewer.tenant);
    live::wait_for_change(&state, &params, || {
        figures(&state, &viewer, &catalog, Utc::now())
    })
    .await
}

/// One customer's current-period total in one currency.
struct CustomerAmount<'c> {
    customer: &'c Customer,
    currency: String,
    total: Decimal,
}

/// One active subscription's current-period total.
struct SubscriptionTotal {
    customer: String,
    plan: String,
    currency: String,
    total: Decimal,
}

/// The current-period totals of the subscriptions among `keys` active at `now`, as
/// `account::current_subscriptions` reads them.
async fn subscription_totals(
    state: &AppState,
    tenant: &str,
    catalog: &TenantCatalog,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<SubscriptionTotal>, PageError> {
    let mut totals = Vec::new();
    for subscription in keys.iter().filter_map(|k| catalog.get::<Subscription>(k)) {
        let Ok(resolved) = ResolvedSubscription::new(tenant, catalog, subscription) else {
            continue;
        };
        if !matches!(
            resolved.timeline.status_at(now),
            Status::Active | Status::Trialing
        ) {
            continue;
        }
        let Some(period) = resolved.timeline.period_at(now).map_err(UsageError::from)? else {
            continue;
        };
        let r = report(
            &state.usage,
            &resolved,
            period.window.from,
            period.window.to,
        )
        .await?;
        totals.push(SubscriptionTotal {
            customer: subscription.customer.clone(),
            plan: r.plan,
            currency: r.currency,
            total: r.total,
        });
    }
    Ok(totals)
}

/// Every subscription's current-period total, the subscriptions shared among tasks (one per
/// core): a tenant's reports are mostly answered from memory, so this is rating work.
async fn all_totals(
    state: &AppState,
    viewer: &Viewer,
    catalog: &std::sync::Arc<TenantCatalog>,
    now: DateTime<Utc>,
) -> Result<Vec<SubscriptionTotal>, PageError> {
    let keys: Vec<String> = catalog.subscriptions.keys().cloned().collect();
    let tasks = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let chunk = keys.len().div_ceil(tasks).max(64);
    let mut set = tokio::task::JoinSet::new();
    for part in keys.chunks(chunk) {
        let (state, tenant, catalog, part) = (
            state.clone(),
            viewer.tenant.clone(),
            catalog.clone(),
            part.to_vec(),
        );
        set.spawn(async move { subscription_totals(&state, &tenant, &catalog, &part, now).await });
    }
    let mut totals = Vec::with_capacity(keys.len());
    while let Some(part) = set.join_next().await {
        let part = part.map_err(|e| ApiError::Internal(format!("a report task failed: {e}")))?;
        totals.extend(part?);
    }
    Ok(totals)
}

/// Per plan, and per customer (top ones), the current periods' estimated charges: the
/// reports of `GET /v1/subscriptions/{id}/usage`.
async fn figures(
    state: &AppState,
    viewer: &Viewer,
    catalog: &std::sync::Arc<TenantCatalog>,
    now: DateTime<Utc>,
) -> Result<Markup, PageError> {
    let totals = all_totals(state, viewer, catalog, now).await?;
    let mut per_plan: BTreeMap<(String, String), (usize, Decimal)> = BTreeMap::new();
    let mut per_customer: Vec<CustomerAmount<'_>> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for t in totals {
        let plan_name = catalog
            .get::<Plan>(&t.plan)
            .map_or_else(|| t.plan.clone(), |p| p.name.clone());
        let plan = per_plan.entry((plan_name, t.currency.clone())).or_default();
        plan.0 += 1;
        plan.1 += t.total;
        let Some(customer) = catalog.get::<Customer>(&t.customer) else {
            continue;
        };
        match index.get(&(t.customer.clone(), t.currency.clone())) {
            Some(&at) => per_customer[at].total += t.total,
            None => {
                index.insert((t.customer, t.currency.clone()), per_customer.len());
                per_customer.push(CustomerAmount {
                    customer,
                    currency: t.currency,
                    total: t.total,
                });
            }
        }
    }
    per_customer.sort_by(|a, b| a.currency.cmp(&b.currency).then(b.total.cmp(&a.total)));
    let mut shown: HashMap<String, usize> = HashMap::new();
    per_customer.retain(|a| {
        let n = shown.entry(a.currency.clone()).or_default();
        *n += 1;
        *n <= TOP
    });
    Ok(html! {
        h2 { "Current billing periods" }
        p.note { "Estimated charges so far, as of " (view::local_time(now, chrono_tz::UTC)) "." }
        table #plans {
            thead { tr { th { "Plan" } th.num { "Subscriptions" } th.num { "Estimated charges" } } }
            tbody {
                @for ((plan, currency), (count, total)) in &per_plan {
                    tr { td { (plan) } td.num { (count) } td.num data-amount=(total) { (money(*total, currency)) } }
                }
                @if per_plan.is_empty() { tr { td colspan="3" { "No active subscriptions." } } }
            }
        }
        h3 { "Top customers by current-period amount" }
        table #top-customers {
            thead { tr { th { "Customer" } th.num { "Estimated charges" } } }
            tbody {
                @for amount in &per_customer {
                    tr {
                        td { a href=(href(viewer, &view::customer_path(&amount.customer.external_id), &[])) { (customer_label(amount.customer)) } }
                        td.num { (money(amount.total, &amount.currency)) }
                    }
                }
            }
        }
    })
}

fn customer_label(customer: &Customer) -> String {
    if customer.name.is_empty() || customer.name == customer.external_id {
        customer.external_id.clone()
    } else {
        format!("{} ({})", customer.name, customer.external_id)
    }
}
