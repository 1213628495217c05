//! The HTTP API: shared state, the router, and one module per resource.

pub mod alerts;
pub mod catalog;
pub mod compat;
pub mod dashboard;
pub mod events;
pub mod keys;
pub mod openapi;
pub mod ops;
pub mod usage;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;

use crate::auth::KeyRing;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::ingest::Ingestor;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::readmodel::UsageReader;
use crate::store::{Store, StoreError};

/// A store error as the API answers it, the one mapping for every route: down is `503` with
/// `Retry-After`, a read past its budget `422 query_too_large` (logged in the request's span,
/// which names route and tenant), a refused statement an internal error.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => ApiError::Unavailable { retry_after_s: 1 },
            StoreError::OverBudget(detail) => {
                tracing::warn!(detail = %detail, "a read exceeded its query budget");
                ApiError::Unprocessable {
                    code: "query_too_large",
                    message: "the request would exceed the per-query time or memory budget; \
                              narrow it (a shorter window, fewer group_by keys or customers)"
                        .into(),
                }
            }
            StoreError::Rejected(_) => ApiError::Internal(err.to_string()),
        }
    }
}

/// Cheap handles shared by every handler.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: Store,
    /// Redis, when accepted ids are shared (`--redis-url`).
    pub redis: Option<redis::aio::ConnectionManager>,
    /// Usage reads, through the answers kept in memory.
    pub usage: UsageReader,
    pub ingestor: Ingestor,
    pub catalog: Catalog,
    pub keys: KeyRing,
    pub limits: RateLimits,
    pub metrics: Arc<Metrics>,
    /// The webhook sender (retries asked for through the API go to it).
    pub outbox: crate::alerts::outbox::Outbox,
    /// What signs dashboard links and sessions, and which origins may frame the pages.
    pub dashboard: dashboard::DashboardSettings,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "meterhouse", description = "Usage metering and rating for usage-based billing. Money and quantities are decimal strings."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("API key"))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every route of the service, and the OpenAPI document generated from their annotations.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(events::router())
        .merge(catalog::router())
        .merge(usage::router())
        .merge(keys::router())
        .merge(alerts::router())
        .merge(webhooks::router())
        .merge(ops::router())
        .merge(compat::router())
        .merge(dashboard::router())
        .split_for_parts()
}

/// The service's router, `GET /openapi.json` included.
pub fn router(state: AppState) -> Router {
    let (routes, generated) = routes();
    let document = std::sync::Arc::new(openapi::document(generated));
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(document.as_ref().clone()) }),
        )
        .route_layer(axum::middleware::from_fn(request_span))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            dashboard::security_headers,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(limit_head))
        .with_state(state)
}

/// Each request runs in a span naming its method, route and (once authenticated) tenant, so
/// whatever a handler logs says which request it was about.
async fn request_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    let span = tracing::info_span!("request", method = %request.method(), route = %route,
        tenant = tracing::field::Empty);
    next.run(request).instrument(span).await
}

/// The longest request target, and the most header bytes, a request may have.
const MAX_URI_BYTES: usize = 16 * 1024;
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Requests whose target or headers are past their bound, answered in the error shape.
async fn limit_head(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::http(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is over {MAX_URI_BYTES} bytes; send long lists in a body"),
        )
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::http(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are over {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route; see GET /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method; see GET /openapi.json",
    )
}

/// An axum extractor whose rejection is answered in the error shape, as `400
/// invalid_request` naming the part of the request at fault.
macro_rules! in_error_shape {
    ($(#[$doc:meta])* $name:ident wraps $inner:ident, $part:literal) => {
        $(#[$doc])*
        pub struct $name<T>(pub T);

        impl<S, T> axum::extract::FromRequestParts<S> for $name<T>
        where
            T: serde::de::DeserializeOwned + Send,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                axum::extract::$inner::<T>::from_request_parts(parts, state)
                    .await
                    .map(|extracted| $name(extracted.0))
                    .map_err(|e| {
                        ApiError::InvalidRequest(format!(concat!($part, ": {}"), e.body_text()))
                    })
            }
        }
    };
}

in_error_shape!(
    /// `axum::extract::Query` with a malformed query string answered in the error shape.
    ApiQuery wraps Query, "query string"
);
in_error_shape!(
    /// `axum::extract::Path` with an undecodable segment answered in the error shape.
    ApiPath wraps Path, "path"
);

/// `axum::Json` with malformed bodies answered in docs/api.md's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match events::media_type(req.headers()).as_deref() {
            None | Some("application/json") => {}
            Some(other) if other.starts_with("application/") && other.ends_with("+json") => {}
            Some(other) => {
                return Err(events::unsupported(format!(
                    "Content-Type '{other}': this route reads application/json"
                )));
            }
        }
        let (parts, body) = req.into_parts();
        let bytes = events::read_body(&parts.headers, body, events::Encodings::Identity).await?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(deserializer)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                match path.as_str() {
                    "." | "" => ApiError::InvalidRequest(format!("invalid JSON body: {inner}")),
                    _ => ApiError::InvalidRequest(format!("{path}: {inner}")),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_are_documented_as_strings() {
        let (_, doc) = super::routes();
        let doc = serde_json::to_value(&doc).unwrap();
        let tier = &doc["components"]["schemas"]["Tier"]["properties"];
        assert_eq!(tier["unit_amount"]["type"], "string", "{tier}");
    }
}
