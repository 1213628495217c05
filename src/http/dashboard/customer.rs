//! `/dashboard/customers/{external_id}`: each active subscription's current period (or any
//! window asked for): per price the quantity, included units, amount and progress through its
//! tiers, the flat fees and the total; a daily and an hourly chart per meter.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::chart::{self, ChartSpec};
use super::live::{self, LiveParams};
use super::view::{self, href, money, number};
use super::{PageError, Viewer};
use crate::catalog::TenantCatalog;
use crate::domain::{Customer, Meter, Plan, Subscription};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::{meter_series, readable_customer};
use crate::readmodel::account;
use crate::readmodel::report::{ResolvedSubscription, UsageCharge, UsageReport, report};

#[derive(Debug, Default, Deserialize)]
pub(super) struct CustomerParams {
    /// A window instead of the current period: both, as RFC 3339 or a date (midnight in the
    /// page's zone).
    from: Option<String>,
    to: Option<String>,
    /// One subscription of the customer's (all active ones by default).
    subscription: Option<String>,
    /// The zone times are shown in; the customer's own by default.
    tz: Option<String>,
}

/// A subscription's report as a page shows it.
struct ReportView<'c> {
    subscription: &'c Subscription,
    plan: Option<&'c Plan>,
    report: UsageReport,
    /// The billing period before the report's, to link to.
    previous: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(params): Query<CustomerParams>,
) -> Result<Markup, PageError> {
    viewer.require_customer(&id)?;
    let catalog = readable_customer(&state, &viewer.principal(), &id)?;
    let customer = known(&catalog, &id)?;
    let tz = super::zone(params.tz.as_deref().or(Some(customer.timezone.as_str())))?;
    let now = Utc::now();
    let window = match (&params.from, &params.to) {
        (Some(from), Some(to)) if !from.is_empty() && !to.is_empty() => {
            let (from, to) = (
                super::instant("from", from, tz)?,
                super::instant("to", to, tz)?,
            );
            if from >= to {
                return Err(ApiError::InvalidRequest("from: must be before to".into()).into());
            }
            Some((from, to))
        }
        _ => None,
    };
    let views = match window {
        Some((from, to)) => {
            window_reports(&state, &viewer, &catalog, &id, &params, from, to).await?
        }
        None => current_reports(&state, &viewer, &catalog, &id, now).await?,
    };
    let base = view::customer_path(&id);
    let mut charts = Vec::new();
    for v in &views {
        let end = v.report.to.min(now);
        charts.push(meter_charts(&state, &viewer, &catalog, &id, v, end, tz).await?);
    }
    let figures = sections(&viewer, &views, tz, &base);
    let body = html! {
        p.note { "Times in " (tz.name()) ". " a href=(href(&viewer, &base, &[])) { "Current period" } }
        form.window method="get" action=(base) {
            label { "From " input type="text" name="from" placeholder="2026-01-01" value=(params.from.clone().unwrap_or_default()); }
            label { "To " input type="text" name="to" placeholder="2026-02-01" value=(params.to.clone().unwrap_or_default()); }
            @if let Some(token) = &viewer.embedded_token { input type="hidden" name="token" value=(token); }
            button type="submit" { "Show window" }
        }
        @if window.is_some() { section #figures { (figures) } }
        @else { (live::section(&href(&viewer, &format!("{base}/live"), &[]), figures)) }
        @for chart in charts { (chart) }
    };
    Ok(view::page(
        Some(&viewer),
        &format!("Usage of {}", label(customer)),
        body,
    ))
}

/// The current-period figures alone, when they change (the page's refresh).
pub(super) async fn live(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(params): Query<LiveParams>,
) -> Result<Json<live::Figures>, PageError> {
    viewer.require_customer(&id)?;
    let catalog = readable_customer(&state, &viewer.principal(), &id)?;
    let customer = known(&catalog, &id)?;
    let tz = super::zone(Some(customer.timezone.as_str()))?;
    let base = view::customer_path(&id);
    live::wait_for_change(&state, &params, || async {
        let views = current_reports(&state, &viewer, &catalog, &id, Utc::now()).await?;
        Ok(sections(&viewer, &views, tz, &base))
    })
    .await
}

fn known<'c>(catalog: &'c TenantCatalog, id: &str) -> Result<&'c Customer, PageError> {
    catalog.get::<Customer>(id).ok_or_else(|| {
        ApiError::not_found(
            "customer_not_found",
            format!("no customer '{id}' in this tenant"),
        )
        .into()
    })
}

fn label(customer: &Customer) -> String {
    if customer.name.is_empty() {
        customer.external_id.clone()
    } else {
        format!("{} ({})", customer.name, customer.external_id)
    }
}

/// The customer's active subscriptions' current periods, as `GET /v1/customers/{id}/billing_state`.
async fn current_reports<'c>(
    state: &AppState,
    viewer: &Viewer,
    catalog: &'c TenantCatalog,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ReportView<'c>>, PageError> {
    let current =
        account::current_subscriptions(&state.usage, &viewer.tenant, catalog, id, now).await?;
    let mut views = Vec::new();
    for c in current {
        let previous = c
            .timeline
            .period_at(c.report.from - TimeDelta::seconds(1))
            .ok()
            .flatten()
            .filter(|p| p.window.to <= c.report.from)
            .map(|p| (p.window.from, p.window.to));
        views.push(ReportView {
            subscription: c.subscription,
            plan: Some(c.plan),
            report: c.report,
            previous,
        });
    }
    Ok(views)
}

/// The reports of `GET /v1/customers/{id}/usage?from&to` for the customer's subscriptions.
async fn window_reports<'c>(
    state: &AppState,
    viewer: &Viewer,
    catalog: &'c TenantCatalog,
    id: &str,
    params: &CustomerParams,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ReportView<'c>>, PageError> {
    let mut views = Vec::new();
    let subscriptions = catalog.subscriptions.values().filter(|s| {
        s.customer == id
            && params
                .subscription
                .as_ref()
                .is_none_or(|only| &s.external_id == only)
    });
    for subscription in subscriptions {
        let resolved = ResolvedSubscription::new(&viewer.tenant, catalog, subscription)?;
        let report = report(&state.usage, &resolved, from, to).await?;
        let previous = resolved
            .timeline
            .period_at(from - TimeDelta::seconds(1))
            .ok()
            .flatten()
            .map(|p| (p.window.from, p.window.to));
        views.push(ReportView {
            subscription,
            plan: catalog.get::<Plan>(&report.plan),
            report,
            previous,
        });
    }
    Ok(views)
}

/// Each subscription's figures: prices, flat fees, total.
fn sections(viewer: &Viewer, views: &[ReportView<'_>], tz: Tz, base: &str) -> Markup {
    html! {
        @if views.is_empty() { p { "No active subscription." } }
        @for v in views {
            @let r = &v.report;
            section.subscription data-subscription=(v.subscription.external_id) {
                h2 { "Subscription " (v.subscription.external_id) " · " (v.plan.map_or(r.plan.as_str(), |p| p.name.as_str())) }
                p {
                    (view::local_time(r.from, tz)) " – " (view::local_time(r.to, tz))
                    @if let Some((from, to)) = v.previous {
                        " · " a href=(href(viewer, base, &[("from", &from.to_rfc3339()), ("to", &to.to_rfc3339()), ("subscription", &v.subscription.external_id)])) { "Previous period" }
                    }
                }
                table.prices {
                    thead { tr { th { "Price" } th.num { "Quantity" } th.num { "Included" } th.num { "Amount" } th { "Tiers" } } }
                    tbody {
                        @for c in &r.charges {
                            tr data-price=(c.price) data-quantity=(c.quantity) data-amount=(c.amount) {
                                td { (c.price) br; small { (c.meter) } }
                                td.num.quantity { (number(c.quantity)) }
                                td.num { (number(c.included_units)) }
                                td.num.amount { (money(c.amount, &r.currency)) }
                                td { (tier_progress(c)) }
                            }
                        }
                        @for fee in &r.flat_fees {
                            tr.flat data-price=(fee.price) data-amount=(fee.amount) {
                                td { (fee.price) br; small { "flat fee" } }
                                td {} td {}
                                td.num.amount { (money(fee.amount, &r.currency)) }
                                td {}
                            }
                        }
                        @if let Some(true_up) = &r.commitment_true_up {
                            tr { td { "minimum commitment" } td {} td {} td.num { (money(true_up.amount, &r.currency)) } td {} }
                        }
                    }
                    tfoot {
                        tr { th { "Total" } td {} td {} td.num.total data-total=(r.total) { (money(r.total, &r.currency)) } td {} }
                    }
                }
            }
        }
    }
}

/// How far the quantity is into its tier, and how far to the next one.
fn tier_progress(charge: &UsageCharge) -> Markup {
    if charge.tiers.is_empty() {
        if charge.included_units > Decimal::ZERO {
            let percent = percent(charge.quantity, charge.included_units);
            let caption = format!("{}% of the included units", percent);
            return view::progress(percent, &caption);
        }
        return html! { "—" };
    }
    let (index, tier) = charge
        .tiers
        .iter()
        .enumerate()
        .rev()
        .find(|(_, t)| t.quantity > Decimal::ZERO)
        .unwrap_or((0, &charge.tiers[0]));
    match tier.up_to {
        Some(up_to) if up_to > tier.from => {
            let into = charge.billable_quantity - tier.from;
            let percent = percent(into, up_to - tier.from);
            let caption = format!(
                "tier {}: {} of {}; next tier from {}",
                index + 1,
                number(charge.billable_quantity),
                number(up_to),
                number(up_to)
            );
            view::progress(percent, &caption)
        }
        _ => view::progress(100, &format!("tier {}: the last", index + 1)),
    }
}

/// `part` of `whole` in whole percent, 0 to 100.
fn percent(part: Decimal, whole: Decimal) -> u32 {
    use rust_decimal::prelude::ToPrimitive;
    if whole <= Decimal::ZERO {
        return 100;
    }
    ((part.max(Decimal::ZERO) * Decimal::ONE_HUNDRED / whole).floor())
        .to_u32()
        .unwrap_or(100)
        .min(100)
}

/// Per meter of the report: a daily chart over its window and an hourly one over the last
/// 48 hours of it, split by the meter's first group property.
async fn meter_charts(
    state: &AppState,
    viewer: &Viewer,
    catalog: &TenantCatalog,
    id: &str,
    v: &ReportView<'_>,
    end: DateTime<Utc>,
    tz: Tz,
) -> Result<Markup, PageError> {
    let from = v.report.from;
    if end <= from {
        return Ok(html! {});
    }
    let mut meters: Vec<&str> = v.report.charges.iter().map(|c| c.meter.as_str()).collect();
    meters.dedup();
    let principal = viewer.principal();
    let mut out = Vec::new();
    for slug in meters {
        let Some(meter) = catalog.get::<Meter>(slug) else {
            continue;
        };
        let group = catalog
            .meters_for(&meter.event_type)
            .iter()
            .find(|e| e.meter.slug == slug)
            .and_then(|e| e.group_keys.first().cloned())
            .unwrap_or_default();
        let hourly_from = from.max(end - TimeDelta::hours(48));
        let mut figures = Vec::new();
        for (size, start, title) in [
            ("day", from, format!("{} per day", meter.name)),
            (
                "hour",
                hourly_from,
                format!("{} per hour, last 48 hours", meter.name),
            ),
        ] {
            let params = super::params(&[
                ("from", &start.to_rfc3339()),
                ("to", &end.to_rfc3339()),
                ("window_size", size),
                ("customer", id),
                ("timezone", tz.name()),
                ("group_by", &group),
            ]);
            let series = meter_series(state, &principal, slug, &params).await?;
            let spec = ChartSpec {
                title: &title,
                unit: &meter.name,
                tz,
                from: start.timestamp(),
                to: end.timestamp(),
            };
            figures.push(view::svg(chart::time_series(
                &spec,
                &chart::lines(&series, false),
            )));
        }
        out.push(html! {
            section.charts data-meter=(slug) {
                h2 { (meter.name) }
                @for figure in figures { (figure) }
                p.note { a href=(href(viewer, &view::meter_path(slug), &[("customer", id), ("from", &from.to_rfc3339()), ("to", &end.to_rfc3339()), ("window_size", "day"), ("timezone", tz.name()), ("group_by", &group)])) { "Explore this meter" } }
            }
        });
    }
    Ok(html! { @for section in out { (section) } })
}
