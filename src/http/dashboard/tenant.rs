//! `/dashboard`: the tenant's overview: events per hour over 7 days, the meters with their
//! volume and top customers, and the current periods' estimated charges per plan and per
//! customer (refreshed live).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::chart::{self, ChartSpec, Series};
use super::live::{self, LiveParams};
use super::view::{self, href, money, number};
use super::{PageError, Viewer};
use crate::catalog::TenantCatalog;
use crate::domain::{Aggregation, Customer, Meter};
use crate::http::AppState;
use crate::http::usage::meter_series;
use crate::readmodel::account;

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
    let hours = state
        .store
        .events_per_hour(&viewer.tenant, from.timestamp(), to.timestamp())
        .await?;
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
    let meters = meter_volumes(&state, &viewer, &catalog, from, to, tz).await?;
    let figures = figures(&state, &viewer, &catalog, now).await?;
    let live_src = href(&viewer, "/dashboard/live", &[]);
    let body = html! {
        section {
            h2 { "Events" }
            p { (number(Decimal::from(total_events))) " events in the last 7 days (event time)." }
            (view::svg(chart::time_series(&spec, &[events])))
        }
        (live::section(&live_src, figures))
        section {
            h2 { "Meters, last 7 days" }
            (meters)
        }
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

/// Per plan, and per customer (top ones), the current periods' estimated charges: the same
/// reports as `GET /v1/customers/{id}/usage`.
async fn figures(
    state: &AppState,
    viewer: &Viewer,
    catalog: &TenantCatalog,
    now: DateTime<Utc>,
) -> Result<Markup, PageError> {
    let mut per_plan: BTreeMap<(String, String), (usize, Decimal)> = BTreeMap::new();
    let mut per_customer: Vec<CustomerAmount<'_>> = Vec::new();
    for customer in catalog.customers.values() {
        let current = account::current_subscriptions(
            &state.usage,
            &viewer.tenant,
            catalog,
            &customer.external_id,
            now,
        )
        .await?;
        for c in &current {
            let plan = per_plan
                .entry((c.plan.name.clone(), c.report.currency.clone()))
                .or_default();
            plan.0 += 1;
            plan.1 += c.report.total;
            match per_customer.iter_mut().find(|a| {
                a.customer.external_id == customer.external_id && a.currency == c.report.currency
            }) {
                Some(amount) => amount.total += c.report.total,
                None => per_customer.push(CustomerAmount {
                    customer,
                    currency: c.report.currency.clone(),
                    total: c.report.total,
                }),
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
    let principal = viewer.principal();
    let mut rows = Vec::new();
    for meter in catalog.meters.values() {
        let params = super::params(&[
            ("from", &from.to_rfc3339()),
            ("to", &to.to_rfc3339()),
            ("window_size", "day"),
            ("timezone", tz.name()),
        ]);
        let series = meter_series(state, &principal, &meter.slug, &params).await?;
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
