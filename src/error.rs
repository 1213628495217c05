//! The one error type of the HTTP edge and its mapping to docs/api.md's error body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One problem with one event of an ingest request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    /// Position of the event in the request (0-based; for NDJSON, the line's event index).
    pub index: usize,
    /// The field at fault, e.g. `timestamp` or `properties.tokens`.
    pub field: String,
    pub message: String,
}

/// Every error a handler can answer with. Mapped once, in [`IntoResponse`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown API key: send `Authorization: Bearer <key>` or `x-api-key`")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit exceeded for this API key; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{} event(s) are invalid; nothing was written", distinct_indices(.0))]
    InvalidEvents(Vec<EventError>),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// Well-formed but not possible now (e.g. `no_active_subscription`).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the event store is unavailable; nothing from this request was acknowledged, retry after {retry_after_s} s"
    )]
    Unavailable { retry_after_s: u64 },
    /// The request itself, at the HTTP level: a method the route does not take (`405
    /// method_not_allowed`), a body that does not arrive in time (`408 request_timeout`), a
    /// content type or encoding a route does not read (`415 unsupported_media_type`), an
    /// address or headers too long (`414`, `431`).
    #[error("{message}")]
    Http {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

fn distinct_indices(errors: &[EventError]) -> usize {
    let mut indices: Vec<usize> = errors.iter().map(|e| e.index).collect();
    indices.dedup();
    indices.len()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error: &'a str,
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [EventError]>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidRequest(_) | Self::InvalidEvents(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Http { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of docs/api.md.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidEvents(_) => "invalid_events",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::NotFound { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::Http { code, .. } => code,
            Self::Conflict(_) => "conflict",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_s } | Self::Unavailable { retry_after_s } => {
                Some(*retry_after_s)
            }
            _ => None,
        }
    }

    pub fn http(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Http {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let body = ErrorBody {
            status: status.as_u16(),
            error: status.canonical_reason().unwrap_or("Error"),
            code: self.code(),
            message: self.to_string(),
            errors: match &self {
                Self::InvalidEvents(errors) => Some(errors),
                _ => None,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}
