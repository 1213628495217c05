//! `POST /v1/events`: validate the whole request, then wait for its batch to be durable.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::auth::{INGESTERS, Principal};
use crate::error::ApiError;
use crate::ingest::parse::{self, Context};
use crate::ingest::{Ack, IngestError, MAX_BODY_BYTES};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// Ingest events: one object, an array, `{"events": [...]}`, or NDJSON
/// (`Content-Type: application/x-ndjson`). 202 once they are durable.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = Object, description = "An event, an array of events, {\"events\": [...]}, or NDJSON; at most 10,000 events and 10 MiB"),
    responses((status = 202, body = Ack), (status = 400, description = "invalid_events, with errors by index and field"),
              (status = 401), (status = 403), (status = 413, description = "payload_too_large"), (status = 429, description = "rate_limited"),
              (status = 503, description = "unavailable: nothing acknowledged, retry after Retry-After")))]
async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    // Checked before the body is read, so a wrong key never uploads 10 MiB for nothing.
    principal.require(INGESTERS, "send events")?;
    let bytes = read_body(body).await?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson") || v.contains("jsonlines"));
    let ack = submit(&state, &principal, &bytes, ndjson).await?;
    Ok((StatusCode::ACCEPTED, Json(ack)))
}

/// Validates a body of events for `principal`'s tenant and waits until they are durable. The
/// one ingest path: `/v1/events` and the vendor-shaped ingest routes end here.
pub(crate) async fn submit(
    state: &AppState,
    principal: &Principal,
    bytes: &[u8],
    ndjson: bool,
) -> Result<Ack, ApiError> {
    principal.require(INGESTERS, "send events")?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let ctx = Context {
        tenant: &principal.tenant,
        catalog: &catalog,
        now_ms: chrono::Utc::now().timestamp_millis(),
    };
    let validated = parse::decode(bytes, ndjson, &ctx).inspect_err(|e| {
        if let ApiError::InvalidEvents(errors) = e {
            state
                .metrics
                .events_rejected
                .fetch_add(errors.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    })?;
    state
        .limits
        .check_events(principal.key_id, validated.rows.len())?;
    state
        .ingestor
        .submit(validated.rows, validated.keys)
        .await
        .map_err(|e| {
            state
                .metrics
                .requests_unavailable
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match e {
                IngestError::Unavailable => ApiError::Unavailable { retry_after_s: 1 },
                IngestError::Overloaded => ApiError::Unavailable { retry_after_s: 1 },
                IngestError::Rejected(detail) => ApiError::Internal(detail),
            }
        })
}

/// Reads at most `MAX_BODY_BYTES`; more is `413 payload_too_large`.
pub async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge(format!(
                    "request body is over {MAX_BODY_BYTES} bytes (10 MiB)"
                ))
            } else {
                ApiError::InvalidRequest(format!("could not read the request body: {e}"))
            }
        })
}
