//! Lago: `GET /lago/api/v1/customers/{external_customer_id}/current_usage` and
//! `POST /lago/api/v1/events[/batch]`. A billable metric is a meter, a charge a usage price;
//! amounts are in the currency's minor unit (`amount_cents`), as Lago counts them.

use crate::http::{ApiPath as Path, ApiQuery as Query};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{events_of, ingest_body, submit_events};
use crate::auth::Principal;
use crate::billing::money::minor_units_rounded;
use crate::domain::meter::Aggregation;
use crate::domain::plan::UsageModel;
use crate::domain::{Meter, Subscription};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::readable_customer;
use crate::ingest::parse::parse_instant;
use crate::readmodel::account;
use crate::readmodel::report::UsageCharge;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(current_usage))
        .routes(routes!(create_event))
        .routes(routes!(create_events))
}

/// Lago answers "no active subscription" with 405; everything else keeps docs/api.md's status, in
/// a body that already has Lago's `status`, `error` and `code`.
fn lago_error(err: ApiError) -> Response {
    if err.code() == "no_active_subscription" {
        let body = json!({"status": 405, "error": "Method Not Allowed", "code": "no_active_subscription", "message": err.to_string()});
        return (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response();
    }
    err.into_response()
}

#[derive(Deserialize)]
struct UsageParams {
    external_subscription_id: Option<String>,
}

/// Lago's customer usage object for the subscription's current billing period: usage charges
/// only (Lago leaves the subscription fee out of current usage), no taxes.
#[utoipa::path(get, path = "/lago/api/v1/customers/{external_customer_id}/current_usage", tag = "compat",
    params(("external_customer_id" = String, Path), ("external_subscription_id" = Option<String>, Query)),
    responses((status = 200, description = "{customer_usage: {from_datetime, to_datetime, issuing_date, currency, amount_cents, total_amount_cents, taxes_amount_cents, charges_usage}}"),
              (status = 401), (status = 404, description = "customer_not_found or subscription_not_found"),
              (status = 405, description = "no_active_subscription")))]
async fn current_usage(
    State(state): State<AppState>,
    principal: Principal,
    Path(customer): Path<String>,
    Query(params): Query<UsageParams>,
) -> Result<Json<Value>, Response> {
    let catalog = readable_customer(&state, &principal, &customer).map_err(lago_error)?;
    let now = Utc::now();
    let subscription = match &params.external_subscription_id {
        Some(id) => catalog
            .get::<Subscription>(id)
            .filter(|s| s.customer == customer)
            .ok_or_else(|| {
                ApiError::not_found(
                    "subscription_not_found",
                    format!(
                        "external_subscription_id: customer '{customer}' has no subscription '{id}'"
                    ),
                )
            }),
        None => account::active_subscriptions(&catalog, &customer, now)
            .first()
            .map(|(s, _)| *s)
            .ok_or_else(|| ApiError::Unprocessable {
                code: "no_active_subscription",
                message: format!("customer '{customer}' has no active subscription"),
            }),
    }
    .map_err(lago_error)?;
    let report =
        account::current_report(&state.usage, &principal.tenant, &catalog, subscription, now)
            .await
            .map_err(|e| lago_error(e.into()))?
            .ok_or_else(|| {
                lago_error(ApiError::Unprocessable {
                    code: "no_active_subscription",
                    message: format!(
                        "subscription '{}' is not active now",
                        subscription.external_id
                    ),
                })
            })?;
    let currency = report.currency.as_str();
    let cents = |amount: Decimal| minor_units_rounded(amount, currency);
    let charges: Vec<Value> = report
        .charges
        .iter()
        .map(|c| charge_usage(c, catalog.get::<Meter>(&c.meter), currency))
        .collect();
    let amount_cents = cents(report.usage_amount);
    Ok(Json(json!({"customer_usage": {
        "from_datetime": report.from,
        "to_datetime": report.to,
        "issuing_date": report.to.date_naive().to_string(),
        "lago_invoice_id": null,
        "currency": currency,
        "amount_cents": amount_cents,
        "taxes_amount_cents": 0,
        "total_amount_cents": amount_cents,
        "charges_usage": charges,
    }})))
}

fn charge_usage(charge: &UsageCharge, meter: Option<&Meter>, currency: &str) -> Value {
    let cents = |amount: Decimal| minor_units_rounded(amount, currency);
    let units = |q: Decimal| q.normalize().to_string();
    let grouped: Vec<Value> = charge
        .groups
        .iter()
        .map(|g| {
            json!({
                "amount_cents": cents(g.amount),
                "events_count": g.events_count,
                "units": units(g.quantity),
                "total_aggregated_units": units(g.quantity),
                "grouped_by": g.group,
                "filters": [],
            })
        })
        .collect();
    json!({
        "units": units(charge.quantity),
        "total_aggregated_units": units(charge.quantity),
        "events_count": charge.events_count,
        "amount_cents": cents(charge.amount),
        "amount_currency": currency,
        "charge": {
            "lago_id": charge.price,
            "charge_model": charge_model(charge.model),
            "invoice_display_name": null,
        },
        "billable_metric": {
            "lago_id": charge.meter,
            "code": charge.meter,
            "name": meter.map_or(charge.meter.as_str(), |m| m.name.as_str()),
            "aggregation_type": meter.map_or("count_agg", |m| aggregation_type(m.aggregation)),
        },
        "filters": [],
        "grouped_usage": grouped,
    })
}

fn charge_model(model: Option<UsageModel>) -> &'static str {
    match model {
        Some(UsageModel::Package) => "package",
        Some(UsageModel::Graduated) => "graduated",
        Some(UsageModel::Volume) => "volume",
        Some(UsageModel::Percentage) => "percentage",
        Some(UsageModel::Dynamic) => "dynamic",
        Some(UsageModel::PerUnit) | None => "standard",
    }
}

fn aggregation_type(aggregation: Aggregation) -> &'static str {
    match aggregation {
        Aggregation::Count => "count_agg",
        Aggregation::Sum => "sum_agg",
        Aggregation::Max => "max_agg",
        Aggregation::Min => "min_agg",
        Aggregation::UniqueCount => "unique_count_agg",
        Aggregation::Latest => "latest_agg",
    }
}

/// One Lago event as a meterhouse event. The customer is the event's
/// `external_customer_id`, or else the customer of its `external_subscription_id`.
fn to_event(
    catalog: &crate::catalog::TenantCatalog,
    index: Option<usize>,
    event: &Value,
) -> Result<Value, ApiError> {
    let at = |field: &str| match index {
        Some(i) => format!("events[{i}].{field}"),
        None => format!("event.{field}"),
    };
    let text = |field: &str| event.get(field).and_then(Value::as_str);
    let customer = match (
        text("external_customer_id"),
        text("external_subscription_id"),
    ) {
        (Some(customer), _) => customer.to_owned(),
        (None, Some(id)) => catalog
            .get::<Subscription>(id)
            .map(|s| s.customer.clone())
            .ok_or_else(|| {
                ApiError::not_found(
                    "subscription_not_found",
                    format!(
                        "{}: no subscription '{id}' in this tenant",
                        at("external_subscription_id")
                    ),
                )
            })?,
        (None, None) => {
            return Err(ApiError::InvalidRequest(format!(
                "{}: required (or external_customer_id)",
                at("external_subscription_id")
            )));
        }
    };
    let mut out = Map::new();
    out.insert(
        "id".into(),
        event.get("transaction_id").cloned().unwrap_or(Value::Null),
    );
    out.insert("customer".into(), Value::String(customer));
    out.insert(
        "type".into(),
        event.get("code").cloned().unwrap_or(Value::Null),
    );
    if let Some(properties) = event.get("properties") {
        out.insert("properties".into(), properties.clone());
    }
    if let Some(timestamp) = event.get("timestamp").filter(|t| !t.is_null()) {
        out.insert(
            "timestamp".into(),
            unix_seconds(timestamp)
                .map_err(|m| ApiError::InvalidRequest(format!("{}: {m}", at("timestamp"))))?,
        );
    }
    Ok(Value::Object(out))
}

/// Lago sends Unix seconds, possibly with a fraction (`1700000000.123`); meterhouse takes
/// whole seconds or milliseconds, so a fraction becomes milliseconds. Text is passed on.
fn unix_seconds(timestamp: &Value) -> Result<Value, String> {
    let text = match timestamp {
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.parse::<Decimal>().is_ok() => s.clone(),
        other => return Ok(other.clone()),
    };
    let seconds: Decimal = text
        .parse()
        .map_err(|_| "Unix seconds, or an RFC 3339 timestamp".to_owned())?;
    if seconds.fract().is_zero() {
        return Ok(json!(super::whole(seconds)));
    }
    Ok(json!(super::whole(seconds * Decimal::from(1000))))
}

/// The event as Lago echoes it back; `mapped` is it in meterhouse's shape.
fn echo(event: &Value, mapped: &Value) -> Value {
    let now = Utc::now();
    let timestamp = mapped
        .get("timestamp")
        .map(|t| t.to_string())
        .and_then(|t| parse_instant(t.trim_matches('"')).ok())
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(now);
    json!({
        "lago_id": null,
        "transaction_id": event.get("transaction_id"),
        "lago_customer_id": null,
        "lago_subscription_id": null,
        "external_subscription_id": event.get("external_subscription_id").cloned().unwrap_or(Value::Null),
        "code": event.get("code"),
        "timestamp": timestamp,
        "properties": event.get("properties").cloned().unwrap_or_else(|| json!({})),
        "precise_total_amount_cents": event.get("precise_total_amount_cents").cloned().unwrap_or(Value::Null),
        "created_at": now,
    })
}

/// One Lago event (`{"event": {...}}`), stored like any other once durable.
#[utoipa::path(post, path = "/lago/api/v1/events", tag = "compat",
    request_body(content = Object, description = "{event: {transaction_id, external_subscription_id, code, timestamp, properties}}"),
    responses((status = 200, description = "{event: ...} once durable"), (status = 400), (status = 401), (status = 404, description = "subscription_not_found")))]
async fn create_event(
    State(state): State<AppState>,
    principal: Principal,
    request: axum::extract::Request,
) -> Result<Json<Value>, Response> {
    let body = ingest_body(&principal, request).await.map_err(lago_error)?;
    let event = body
        .get("event")
        .ok_or_else(|| lago_error(ApiError::InvalidRequest("event: required".into())))?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let mapped = to_event(&catalog, None, event).map_err(lago_error)?;
    submit_events(&state, &principal, std::slice::from_ref(&mapped))
        .await
        .map_err(lago_error)?;
    Ok(Json(json!({"event": echo(event, &mapped)})))
}

/// A batch of Lago events (`{"events": [...]}`): all stored, or none.
#[utoipa::path(post, path = "/lago/api/v1/events/batch", tag = "compat",
    request_body(content = Object, description = "{events: [...]}"),
    responses((status = 200, description = "{events: [...]} once durable"), (status = 400), (status = 401), (status = 404, description = "subscription_not_found")))]
async fn create_events(
    State(state): State<AppState>,
    principal: Principal,
    request: axum::extract::Request,
) -> Result<Json<Value>, Response> {
    let body = ingest_body(&principal, request).await.map_err(lago_error)?;
    let events = events_of(&body).map_err(lago_error)?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let mapped = events
        .iter()
        .enumerate()
        .map(|(i, e)| to_event(&catalog, Some(i), e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(lago_error)?;
    submit_events(&state, &principal, &mapped)
        .await
        .map_err(lago_error)?;
    let echoed: Vec<Value> = events
        .iter()
        .zip(&mapped)
        .map(|(e, m)| echo(e, m))
        .collect();
    Ok(Json(json!({ "events": echoed })))
}
