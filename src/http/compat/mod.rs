//! Vendor-shaped endpoints (docs/api.md "Seed-compatible shapes"): each module maps meterhouse's own
//! catalog, reports and ingest path onto one vendor's JSON, so that vendor's official client
//! works with its base URL set to `http://HOST/<prefix>`. No module here measures usage or
//! prices anything: quantities and amounts come from `account`, `usage` and `billing::money`.

mod diga;
mod flexprice;
mod flowglad;
mod lago;
mod lark;
mod openmeter;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::ingest::Ack;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(lark::router())
        .merge(lago::router())
        .merge(flowglad::router())
        .merge(flexprice::router())
        .merge(diga::router())
        .merge(openmeter::router())
}

/// A decimal as an exact JSON number (`12.50` stays `12.50`, never a binary float).
fn number(value: Decimal) -> Value {
    serde_json::from_str(&value.to_string()).unwrap_or(Value::Null)
}

/// A decimal cut to a whole number, for shapes that count in integers.
fn whole(value: Decimal) -> i64 {
    use rust_decimal::prelude::ToPrimitive;
    value.trunc().to_i64().unwrap_or(i64::MAX)
}

/// Epoch milliseconds.
fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Sends vendor events, already rewritten into meterhouse's event shape, through the one
/// ingest path (validation, dedup, group commit).
async fn submit_events(
    state: &AppState,
    principal: &Principal,
    events: &[Value],
) -> Result<Ack, ApiError> {
    let body = serde_json::to_vec(events).map_err(|e| ApiError::Internal(e.to_string()))?;
    super::events::submit(state, principal, &body, false).await
}

/// The JSON body of a vendor ingest request, once the caller is known to send events;
/// malformed JSON is `400 invalid_request` naming the problem.
async fn ingest_body(
    principal: &Principal,
    request: axum::extract::Request,
) -> Result<Value, ApiError> {
    principal.require(crate::auth::INGESTERS, "send events")?;
    let (parts, body) = request.into_parts();
    let bytes =
        super::events::read_body(&parts.headers, body, super::events::Encodings::Gzip).await?;
    // A key given twice would lose one of its values in the parse below: refused first.
    if let Some(path) = std::str::from_utf8(&bytes)
        .ok()
        .and_then(crate::ingest::samples::first_duplicate_key)
    {
        return Err(ApiError::InvalidRequest(format!(
            "{path}: {}",
            crate::ingest::samples::DUPLICATE_KEY
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

/// The `events` array of a batch body.
fn events_of(body: &Value) -> Result<&Vec<Value>, ApiError> {
    body.get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::InvalidRequest("events: an array is required".into()))
}
