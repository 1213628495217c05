//! The HTTP API: shared state, the router, and one module per resource.

pub mod catalog;
pub mod events;
pub mod keys;
pub mod ops;
pub mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::auth::KeyRing;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::ingest::Ingestor;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::store::Store;

/// Cheap handles shared by every handler.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: Store,
    pub ingestor: Ingestor,
    pub catalog: Catalog,
    pub keys: KeyRing,
    pub limits: RateLimits,
    pub metrics: Arc<Metrics>,
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(events::router())
        .merge(catalog::router())
        .merge(usage::router())
        .merge(keys::router())
        .merge(ops::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route; see GET /openapi.json")
}

async fn method_not_allowed() -> impl IntoResponse {
    let mut response =
        ApiError::InvalidRequest("method not allowed on this route".into()).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// `axum::Json` with malformed bodies answered in API.md's error shape.
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
        let bytes = events::read_body(req.into_body()).await?;
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
