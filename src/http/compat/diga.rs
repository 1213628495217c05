//! Diga: `GET /diga/v1/billing/subscription/`, the subscription of the customer bound to a
//! `customer`-role key. Minutes are the units of the plan's first usage price.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{number, whole};
use crate::auth::{Principal, Role};
use crate::billing::period::Interval;
use crate::domain::Plan;
use crate::error::ApiError;
use crate::http::AppState;
use crate::readmodel::account;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(subscription)).route(
        "/diga/v1/billing/subscription",
        axum::routing::get(subscription),
    )
}

fn period(plan: &Plan) -> &'static str {
    match plan.interval {
        Interval::Day => "day",
        Interval::Week => "week",
        Interval::Month => "month",
        // Diga has no quarter; a quarterly plan's period shows as what it is.
        Interval::Quarter => "quarter",
        Interval::Year => "year",
    }
}

/// The caller's subscription: plan, current period, included and used minutes, prices, and
/// the next invoice. For `customer` keys only: the customer is the key's.
#[utoipa::path(get, path = "/diga/v1/billing/subscription/", tag = "compat",
    responses((status = 200, description = "{name, period_start, period_end, included_minutes, minutes_count, price, overage_price_per_minute, next_invoice_date, next_invoice_amount, next_phase, ...}"),
              (status = 403, description = "not a customer key"), (status = 422, description = "no_active_subscription")))]
async fn subscription(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let (Role::Customer, Some(customer)) = (principal.role, principal.customer.as_deref()) else {
        return Err(ApiError::Forbidden(
            "this route answers with a customer's own subscription: use a key with the customer role".into(),
        ));
    };
    let catalog = state.catalog.tenant(&principal.tenant);
    let now = Utc::now();
    let current =
        account::current_subscriptions(&state.usage, &principal.tenant, &catalog, customer, now)
            .await?;
    let Some(current) = current.first() else {
        return Err(ApiError::Unprocessable {
            code: "no_active_subscription",
            message: format!("customer '{customer}' has no active subscription"),
        });
    };
    let (subscription, plan, report) = (current.subscription, current.plan, &current.report);
    // The minutes are the first usage price of the plan in force; after a plan change inside
    // the period, the minutes used count every phase's usage of that meter.
    let minutes = plan.usage_prices().next().and_then(|price| {
        let line = current
            .usage
            .iter()
            .find(|u| u.plan == plan.code && u.price == price.code)?;
        let used: rust_decimal::Decimal = current
            .usage
            .iter()
            .filter(|u| u.meter == line.meter)
            .map(|u| u.used_units)
            .sum();
        Some((price, line, used))
    });
    // A subscription that ends (cancelled) has no next invoice to announce.
    let next_invoice_date = match subscription.ends_at {
        Some(_) => None,
        None => current
            .timeline
            .next_invoice_date(now)
            .map_err(crate::readmodel::report::UsageError::from)?,
    };
    let next_phase = subscription
        .phases
        .iter()
        .find(|phase| phase.from > now)
        .and_then(|phase| catalog.get::<Plan>(&phase.plan))
        .map(|next| json!({"name": next.name, "period": period(next), "price": number(next.flat_amount())}));
    Ok(Json(json!({
        "name": plan.name,
        "next_invoice_date": next_invoice_date,
        "period_start": report.from,
        "period_end": report.to,
        "included_minutes": minutes.map_or(0, |(_, u, _)| whole(u.included_units)),
        "active_since": subscription.start_date,
        "price": number(plan.flat_amount()),
        "currency": plan.currency,
        "period": period(plan),
        "overage_price_per_minute": minutes.and_then(|(p, _, _)| p.overage_unit_amount()).map(number),
        "usage_based_billing_enabled": minutes.is_some(),
        "minutes_count": minutes.map_or(0, |(_, _, used)| whole(used)),
        "rollover_minutes_count": 0,
        "next_payment_date": next_invoice_date.unwrap_or(report.to),
        "next_invoice_amount": number(report.total),
        "next_phase": next_phase,
    })))
}
