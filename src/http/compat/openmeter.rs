//! OpenMeter's event ingest (`POST /openmeter/api/v1/events`): CloudEvents, one
//! (`application/cloudevents+json`) or a batch (`application/cloudevents-batch+json`), answered
//! `204` once durable, so OpenMeter's SDK event client can send to meterhouse with its base URL
//! set to `http://HOST/openmeter`. The events go through the one ingest path
//! (`ingest::cloudevents`, then validation, dedup and group commit).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::events::{Encodings, media_type, read_body, submit, unsupported};
use crate::ingest::cloudevents;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest_events))
}

/// CloudEvents in, `204` once they are durable. `application/json` is read as CloudEvents too:
/// one event or, for an array, a batch.
#[utoipa::path(post, path = "/openmeter/api/v1/events", tag = "compat",
    request_body(content = Object, description = "A CloudEvent (application/cloudevents+json) or an array of them (application/cloudevents-batch+json): subject → customer, type, time, data → properties, source/id → the event id"),
    responses((status = 204, description = "Stored in ClickHouse"), (status = 400), (status = 401), (status = 415)))]
async fn ingest_events(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    principal.require(crate::auth::INGESTERS, "send events")?;
    let batch = match media_type(&headers).as_deref() {
        Some("application/cloudevents+json") => Some(false),
        Some("application/cloudevents-batch+json") => Some(true),
        None | Some("application/json") => None,
        Some(other) => {
            return Err(unsupported(format!(
                "Content-Type '{other}': send application/cloudevents+json or \
                 application/cloudevents-batch+json"
            )));
        }
    };
    let bytes = read_body(&headers, body, Encodings::Gzip).await?;
    let batch = batch.unwrap_or_else(|| bytes.trim_ascii_start().starts_with(b"["));
    let events = cloudevents::to_events(&bytes, batch)?;
    submit(&state, &principal, &events, false).await?;
    Ok(StatusCode::NO_CONTENT)
}
