//! Flexprice: `POST /flexprice/v1/subscriptions/usage` and `POST /flexprice/v1/events[/bulk]`.
//! A price keeps meterhouse's model in Flexprice's terms: per unit is `FLAT_FEE` with a unit
//! amount, package is `PACKAGE` with `transform_quantity`, graduated and volume are `TIERED`
//! with `tier_mode` `SLAB` or `VOLUME`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{events_of, ingest_body, number, submit_events};
use crate::auth::Principal;
use crate::billing::money::{display, round_to_currency};
use crate::billing::period::Interval;
use crate::billing::rating::Rounding;
use crate::catalog::TenantCatalog;
use crate::domain::plan::{Price, UsageModel};
use crate::domain::{Meter, Plan, Subscription};
use crate::error::ApiError;
use crate::http::ApiJson;
use crate::http::AppState;
use crate::http::usage::{as_of, instant, reader_at};
use crate::readmodel::account;
use crate::readmodel::report::{ResolvedSubscription, UsageCharge, report};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(subscription_usage))
        .routes(routes!(create_event))
        .routes(routes!(create_events))
}

#[derive(Deserialize)]
struct UsageRequest {
    subscription_id: String,
    start_time: Option<String>,
    end_time: Option<String>,
    #[serde(default)]
    lifetime_usage: bool,
    /// meterhouse's `as_of`: the figures with the events ingested up to that moment.
    as_of: Option<String>,
}

/// Usage charges of a subscription: over `start_time`..`end_time`, over its whole life
/// (`lifetime_usage`), or else over its current billing period.
#[utoipa::path(post, path = "/flexprice/v1/subscriptions/usage", tag = "compat",
    request_body(content = Object, description = "{subscription_id, start_time, end_time, lifetime_usage, as_of}"),
    responses((status = 200, description = "{amount, currency, display_amount, start_time, end_time, charges: [{amount, quantity, meter_id, price: {...}}]}"),
              (status = 400), (status = 404, description = "subscription_not_found"), (status = 422, description = "no_active_subscription")))]
async fn subscription_usage(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<UsageRequest>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state.catalog.tenant(&principal.tenant);
    let id = &request.subscription_id;
    let missing = || {
        ApiError::not_found(
            "subscription_not_found",
            format!("subscription_id: no subscription '{id}' in this tenant"),
        )
    };
    let subscription = catalog.get::<Subscription>(id).ok_or_else(missing)?;
    principal.may_read_subscription(&subscription.customer, missing)?;
    let at = as_of(request.as_of.as_deref())?;
    let reader = reader_at(&state, at);
    let now = at.unwrap_or_else(Utc::now);
    let window = match (&request.start_time, &request.end_time) {
        _ if request.lifetime_usage => Some((subscription.start_date, now)),
        (Some(from), Some(to)) => Some((instant("start_time", from)?, instant("end_time", to)?)),
        (None, None) => None,
        _ => {
            return Err(ApiError::InvalidRequest(
                "start_time and end_time: give both, or neither for the current period".into(),
            ));
        }
    };
    let report = match window {
        Some((from, to)) if from >= to => {
            return Err(ApiError::InvalidRequest(
                "start_time: must be before end_time".into(),
            ));
        }
        Some((from, to)) => {
            let resolved = ResolvedSubscription::new(&principal.tenant, &catalog, subscription)?;
            report(&reader, &resolved, from, to).await?
        }
        None => account::current_report(
            &reader,
            &principal.tenant,
            &catalog,
            subscription,
            now,
        )
        .await?
        .ok_or_else(|| ApiError::Unprocessable {
            code: "no_active_subscription",
            message: format!(
                "subscription '{id}' has no current billing period; pass start_time and end_time"
            ),
        })?,
    };
    let currency = report.currency.as_str();
    let charges: Vec<Value> = report
        .charges
        .iter()
        .filter_map(|c| {
            let plan = catalog.get::<Plan>(&c.plan)?;
            let price = plan.prices.iter().find(|p| p.code == c.price)?;
            Some(charge(&catalog, c, plan, price, &principal.tenant))
        })
        .collect();
    let amount = round_to_currency(report.usage_amount, currency);
    let mut body = json!({
        "amount": number(amount),
        "currency": currency,
        "display_amount": display(amount, currency),
        "start_time": report.from,
        "end_time": report.to,
        "has_overage": report.charges.iter().any(UsageCharge::is_overage),
        "charges": charges,
    });
    if let Some(late) = report.late_events {
        body["as_of"] = json!(report.as_of);
        body["late_events"] = json!(late);
    }
    Ok(Json(body))
}

fn charge(
    catalog: &TenantCatalog,
    c: &UsageCharge,
    plan: &Plan,
    price: &Price,
    tenant: &str,
) -> Value {
    let meter = catalog.get::<Meter>(&c.meter);
    let amount = round_to_currency(c.amount, &plan.currency);
    json!({
        "amount": number(amount),
        "currency": plan.currency,
        "display_amount": display(amount, &plan.currency),
        "quantity": number(c.quantity.normalize()),
        "meter_id": c.meter,
        "meter_display_name": meter.map_or(c.meter.as_str(), |m| m.name.as_str()),
        "filter_values": meter.map(|m| json!(m.filters)).unwrap_or_else(|| json!({})),
        "is_overage": c.is_overage(),
        "price": price_object(catalog, plan, price, tenant),
    })
}

/// A meterhouse usage price as a Flexprice price object. Decimals are strings, as Flexprice's
/// own price objects carry them.
fn price_object(catalog: &TenantCatalog, plan: &Plan, price: &Price, tenant: &str) -> Value {
    let text = |d: Option<Decimal>| d.map(|d| d.normalize().to_string());
    let (billing_model, tier_mode, amount) = match price.model {
        Some(UsageModel::PerUnit) | None => ("FLAT_FEE", None, text(price.unit_amount)),
        Some(UsageModel::Package) => ("PACKAGE", None, text(price.package_amount)),
        Some(UsageModel::Graduated) => ("TIERED", Some("SLAB"), None),
        Some(UsageModel::Volume) => ("TIERED", Some("VOLUME"), None),
        // Flexprice has no percentage or per-event priced model: the price shows as
        // usage-based, without an amount per unit; its charges are meterhouse's.
        Some(UsageModel::Percentage | UsageModel::Dynamic) => ("FLAT_FEE", None, None),
    };
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        object.insert(key.to_owned(), value);
    };
    put("id", json!(price.code));
    put("lookup_key", json!(price.code));
    put("plan_id", json!(plan.code));
    put("meter_id", json!(price.meter));
    put("tenant_id", json!(tenant));
    put("type", json!("USAGE"));
    put("status", json!("published"));
    put("currency", json!(plan.currency));
    put("billing_model", json!(billing_model));
    put("billing_cadence", json!("RECURRING"));
    put("invoice_cadence", json!("ARREAR"));
    let (period, count) = billing_period(plan);
    put("billing_period", json!(period));
    put("billing_period_count", json!(count));
    put("trial_period", json!(plan.trial_days));
    let changed = catalog.changed_at::<Plan>(&plan.code);
    put("created_at", json!(changed));
    put("updated_at", json!(changed));
    // Not kept by meterhouse.
    for key in ["created_by", "updated_by", "description", "environment_id"] {
        put(key, Value::Null);
    }
    // Tiered prices have no single amount; only they have tiers; only packages divide.
    let display_amount = amount
        .as_deref()
        .and_then(|a| a.parse().ok())
        .map(|a| display(a, &plan.currency));
    put("display_amount", json!(display_amount));
    put("amount", json!(amount));
    put("tier_mode", json!(tier_mode));
    put("tiers", Value::Null);
    put("transform_quantity", Value::Null);
    if tier_mode.is_some() {
        let tiers: Vec<Value> = price
            .tiers
            .iter()
            .map(|t| {
                json!({
                    "up_to": t.up_to.map(|u| number(u.normalize())),
                    "unit_amount": t.unit_amount.normalize().to_string(),
                    "flat_amount": t.flat_amount.normalize().to_string(),
                })
            })
            .collect();
        put("tiers", json!(tiers));
    }
    if price.model == Some(UsageModel::Package) {
        let round = match price.rounding.unwrap_or(Rounding::Up) {
            Rounding::Up => "up",
            Rounding::Down => "down",
        };
        put(
            "transform_quantity",
            json!({"divide_by": price.package_size.map(|s| number(s.normalize())), "round": round}),
        );
    }
    put("metadata", json!({}));
    Value::Object(object)
}

fn billing_period(plan: &Plan) -> (&'static str, u32) {
    match plan.interval {
        Interval::Day => ("DAILY", plan.interval_count),
        Interval::Week => ("WEEKLY", plan.interval_count),
        Interval::Month => ("MONTHLY", plan.interval_count),
        Interval::Quarter => ("QUARTERLY", plan.interval_count),
        Interval::Year => ("ANNUAL", plan.interval_count),
    }
}

/// One Flexprice event as a meterhouse event; an event without `event_id` gets one, as
/// Flexprice gives it.
fn to_event(index: Option<usize>, event: &Value) -> Result<(Value, String), ApiError> {
    let Some(object) = event.as_object() else {
        let at = index.map_or_else(String::new, |i| format!("events[{i}]: "));
        return Err(ApiError::InvalidRequest(format!(
            "{at}an event must be a JSON object"
        )));
    };
    let id = match object.get("event_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => generated_id(),
    };
    let mut out = Map::new();
    out.insert("id".into(), json!(id));
    out.insert(
        "customer".into(),
        object
            .get("external_customer_id")
            .cloned()
            .unwrap_or(Value::Null),
    );
    out.insert(
        "type".into(),
        object.get("event_name").cloned().unwrap_or(Value::Null),
    );
    for key in ["timestamp", "properties"] {
        if let Some(value) = object.get(key).filter(|v| !v.is_null() && *v != "") {
            out.insert(key.into(), value.clone());
        }
    }
    Ok((Value::Object(out), id))
}

/// A random event id: `evt_` and 26 hex digits (104 random bits).
fn generated_id() -> String {
    let bits: u128 = rand::random();
    format!("evt_{:026x}", bits >> 24)
}

/// One Flexprice event; 202 once durable, with its `event_id`.
#[utoipa::path(post, path = "/flexprice/v1/events", tag = "compat",
    request_body(content = Object, description = "{event_name, external_customer_id, event_id, timestamp, properties}"),
    responses((status = 202, description = "{event_id, message}"), (status = 400), (status = 401)))]
async fn create_event(
    State(state): State<AppState>,
    principal: Principal,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = ingest_body(&principal, request).await?;
    let (event, id) = to_event(None, &body)?;
    submit_events(&state, &principal, &[event]).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": id, "message": "event accepted"})),
    ))
}

/// Flexprice events in bulk (`{"events": [...]}`): all stored, or none.
#[utoipa::path(post, path = "/flexprice/v1/events/bulk", tag = "compat",
    request_body(content = Object, description = "{events: [...]}"),
    responses((status = 202, description = "{message}"), (status = 400), (status = 401)))]
async fn create_events(
    State(state): State<AppState>,
    principal: Principal,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = ingest_body(&principal, request).await?;
    let events = events_of(&body)?;
    let mapped = events
        .iter()
        .enumerate()
        .map(|(i, e)| to_event(Some(i), e).map(|(event, _)| event))
        .collect::<Result<Vec<_>, _>>()?;
    let ack = submit_events(&state, &principal, &mapped).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"message": format!("{} events accepted, {} duplicates", ack.accepted, ack.duplicates)}),
        ),
    ))
}
