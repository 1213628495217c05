//! `/dashboard`: the tenant's overview: events per hour over 7 days, the meters with their
//! volume and top customers, and the current periods' estimated charges per plan and per
//! customer (refreshed live).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use maud::{Markup, PreEscaped, html};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::chart::{self, ChartSpec, Series};
use super::live::{self, LiveParams};
use super::view::{self, href, money, number};
use super::{PageError, Viewer};
use crate::billing::period::Status;
use crate::catalog::TenantCatalog;
use crate::domain::{Aggregation, Customer, Meter};
use crate::domain::{Plan, Subscription};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::meter_series;
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
    let to = super::next_hour(now);
    let from = to - TimeDelta::days(7);
    let key = WeekKey {
        tenant: viewer.tenant.to_string(),
        tz: tz.name().to_owned(),
        to: to.timestamp(),
    };
    let cached = state.dashboard.week.get(&key);
    let week = async {
        if let Some(week) = cached {
            return Ok(week);
        }
        let week =
            std::sync::Arc::new(week_sections(&state, &viewer, &catalog, from, to, tz).await?);
        state.dashboard.week.insert(key, week.clone());
        Ok::<_, PageError>(week)
    };
    // The current figures and the week's sections read independently: at once.
    let (week, figures) = tokio::join!(week, figures(&state, &viewer, &catalog, now));
    let (week, figures) = (week?, figures?);
    let live_src = href(&viewer, "/dashboard/live", &[]);
    let body = html! {
        (PreEscaped(&week.events))
        (live::section(&live_src, figures))
        (PreEscaped(&week.meters))
    };
    Ok(view::page(Some(&viewer), "Overview", body))
}

/// Which overview's 7-day sections: a tenant's, in a zone, up to an hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WeekKey {
    tenant: String,
    tz: String,
    /// The hour the week ends at, epoch seconds.
    to: i64,
}

/// The overview's 7-day sections, rendered.
#[derive(Debug)]
pub(super) struct WeekSections {
    events: String,
    meters: String,
}

/// Events per hour and the meters' volumes over `[from, to)`, read at once.
async fn week_sections(
    state: &AppState,
    viewer: &Viewer,
    catalog: &TenantCatalog,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
) -> Result<WeekSections, PageError> {
    let (hours, meters) = tokio::join!(
        state
            .store
            .events_per_hour(&viewer.tenant, from.timestamp(), to.timestamp()),
        meter_volumes(state, viewer, catalog, from, to, tz),
    );
    let (hours, meters) = (hours?, meters?);
    let events = Series {
        name: "events".into(),
        points: hours
            .iter()
            .map(|h| chart::Point {
                start: h.hour,
                end: h.hour + 3600,
                value: Decimal::from(h.events),
            })
            .collect(),
    };
    let spec = ChartSpec {
        title: "Events per hour, last 7 days",
        unit: "events",
        tz,
        from: from.timestamp(),
        to: to.timestamp(),
    };
    let total_events: u64 = hours.iter().map(|h| h.events).sum();
    let events = html! {
        section {
            h2 { "Events" }
            p { (number(Decimal::from(total_events))) " events in the last 7 days (event time), as of " (view::local_time(Utc::now(), tz)) "." }
            (view::svg(chart::time_series(&spec, &[events])))
        }
    };
    let meters = html! {
        section {
            h2 { "Meters, last 7 days" }
            (meters)
        }
    };
    Ok(WeekSections {
        events: events.into_string(),
        meters: meters.into_string(),
    })
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

/// Each meter's volume over `[from, to)` and its top customers, from the meter query.
async fn meter_volumes(
    state: &AppState,
    viewer: &Viewer,
    catalog: &TenantCatalog,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
) -> Result<Markup, PageError> {
    let params = super::params(&[
        ("from", &from.to_rfc3339()),
        ("to", &to.to_rfc3339()),
        ("window_size", "day"),
        ("timezone", tz.name()),
    ]);
    // One read per meter, all at once.
    let mut reads = tokio::task::JoinSet::new();
    for slug in catalog.meters.keys() {
        let (state, principal, slug, params) = (
            state.clone(),
            viewer.principal(),
            slug.clone(),
            params.clone(),
        );
        reads.spawn(async move {
            let series = meter_series(&state, &principal, &slug, &params).await;
            (slug, series)
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(answer) = reads.join_next().await {
        let (slug, series) =
            answer.map_err(|e| ApiError::Internal(format!("a meter read failed: {e}")))?;
        answers.insert(slug, series?);
    }
    let mut rows = Vec::new();
    for meter in catalog.meters.values() {
        let Some(series) = answers.get(&meter.slug) else {
            continue;
        };
        let additive = matches!(meter.aggregation, Aggregation::Count | Aggregation::Sum);
        let mut per_customer: BTreeMap<&str, Decimal> = BTreeMap::new();
        for row in &series.rows {
            let value = per_customer.entry(row.customer.as_str()).or_default();
            *value = if additive {
                *value + row.value
            } else {
                (*value).max(row.value)
            };
        }
        let volume = if additive {
            per_customer.values().copied().sum::<Decimal>()
        } else {
            per_customer.values().copied().max().unwrap_or_default()
        };
        let mut top: Vec<(&str, Decimal)> = per_customer.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(5);
        rows.push(html! {
            tr data-meter=(meter.slug) {
                td { a href=(href(viewer, &view::meter_path(&meter.slug), &[])) { (meter.name) } br; small { (meter.slug) } }
                td { (aggregation_label(meter)) }
                td.num data-volume=(volume) { (number(volume)) }
                td {
                    @for (customer, value) in &top {
                        a href=(href(viewer, &view::customer_path(customer), &[])) { (customer) }
                        " " (number(*value)) br;
                    }
                }
            }
        });
    }
    Ok(html! {
        table #meters {
            thead { tr { th { "Meter" } th { "Aggregation" } th.num { "Volume" } th { "Top customers" } } }
            tbody { @for row in rows { (row) } }
        }
        p.note { "Volume: the sum over the days for count and sum meters, the largest day otherwise." }
    })
}

fn aggregation_label(meter: &Meter) -> &'static str {
    match meter.aggregation {
        Aggregation::Count => "count",
        Aggregation::Sum => "sum",
        Aggregation::Max => "max",
        Aggregation::Min => "min",
        Aggregation::UniqueCount => "unique count",
        Aggregation::Latest => "latest",
    }
}
