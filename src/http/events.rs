//! `POST /v1/events`: validate the whole request, then wait for its batch to be durable.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};

use super::AppState;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::ingest::parse::{self, Context};
use crate::ingest::{Ack, IngestError, MAX_BODY_BYTES};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", post(ingest))
}

async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    principal.require(&[Role::Admin, Role::Ingest], "send events")?;
    let bytes = read_body(body).await?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson") || v.contains("jsonlines"));
    let catalog = state.catalog.tenant(&principal.tenant);
    let ctx = Context {
        tenant: &principal.tenant,
        catalog: &catalog,
        now_ms: chrono::Utc::now().timestamp_millis(),
    };
    let validated = parse::decode(&bytes, ndjson, &ctx).inspect_err(|e| {
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
    let ack = state
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
        })?;
    Ok((StatusCode::ACCEPTED, Json(ack)))
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
