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
use crate::ingest::cloudevents;
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
    let ack = ingest_body(&state, &principal, &headers, body).await?;
    Ok((StatusCode::ACCEPTED, Json(ack)))
}

/// How an ingest body is written, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Json,
    Ndjson,
    CloudEvent,
    CloudEventBatch,
}

fn form(headers: &HeaderMap) -> Result<Form, ApiError> {
    Ok(match media_type(headers).as_deref() {
        None | Some("application/json") => Form::Json,
        Some("application/x-ndjson" | "application/jsonlines" | "application/jsonl") => {
            Form::Ndjson
        }
        Some("application/cloudevents+json") => Form::CloudEvent,
        Some("application/cloudevents-batch+json") => Form::CloudEventBatch,
        Some(other) => {
            return Err(unsupported(format!(
                "Content-Type '{other}': send application/json, application/x-ndjson, \
                 application/cloudevents+json or application/cloudevents-batch+json"
            )));
        }
    })
}

/// Reads an ingest body in any of its forms and submits its events.
pub(crate) async fn ingest_body(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
) -> Result<Ack, ApiError> {
    let form = form(headers)?;
    let bytes = read_body(headers, body, Encodings::Gzip).await?;
    match form {
        Form::Json => submit(state, principal, &bytes, false).await,
        Form::Ndjson => submit(state, principal, &bytes, true).await,
        Form::CloudEvent | Form::CloudEventBatch => {
            let events = cloudevents::to_events(&bytes, form == Form::CloudEventBatch)?;
            submit(state, principal, &events, false).await
        }
    }
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

/// The content encodings a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encodings {
    Identity,
    /// `Content-Encoding: gzip` too (the ingest routes).
    Gzip,
}

/// The media type of `Content-Type`, lower-cased and without parameters; `None` without one.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .unwrap_or("invalid");
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

pub fn unsupported(message: String) -> ApiError {
    ApiError::http(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "request body is over {MAX_BODY_BYTES} bytes (10 MiB)"
    ))
}

/// Reads a request body of at most `MAX_BODY_BYTES`, decoded: a declared `Content-Length`
/// past it is `413` before anything is read, a body that stops arriving is `408` (the server's
/// body timeout), an encoding the route does not read is `415`, and a gzip body is inflated to
/// at most `MAX_BODY_BYTES` (a bomb is `413`).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    encodings: Encodings,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("invalid").trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") if encodings == Encodings::Gzip => true,
        Some(other) => {
            let accepted = match encodings {
                Encodings::Gzip => "send it uncompressed or with Content-Encoding: gzip",
                Encodings::Identity => "this route reads uncompressed bodies only",
            };
            return Err(unsupported(format!(
                "Content-Encoding '{other}': {accepted}"
            )));
        }
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let caused_by = |is: fn(&(dyn std::error::Error + 'static)) -> bool| {
                std::iter::successors(std::error::Error::source(&e), |s| s.source()).any(is)
            };
            if caused_by(|s| s.is::<http_body_util::LengthLimitError>()) {
                too_large()
            } else if caused_by(|s| s.is::<tower_http::timeout::TimeoutError>()) {
                ApiError::http(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body stopped arriving; send it again",
                )
            } else {
                ApiError::InvalidRequest(format!("could not read the request body: {e}"))
            }
        })?;
    if !gzip {
        return Ok(bytes);
    }
    let mut inflated = Vec::with_capacity(bytes.len().saturating_mul(4).min(MAX_BODY_BYTES));
    let mut decoder = std::io::Read::take(
        flate2::read::MultiGzDecoder::new(&bytes[..]),
        MAX_BODY_BYTES as u64 + 1,
    );
    std::io::Read::read_to_end(&mut decoder, &mut inflated).map_err(|e| {
        ApiError::InvalidRequest(format!("Content-Encoding gzip: the body is not gzip ({e})"))
    })?;
    if inflated.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(inflated.into())
}
