//! Liveness, readiness and metrics.

use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// ClickHouse answers, migrations are done (they run before the server accepts requests), and
/// with shared dedup, Redis answers and holds the accepted ids.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200), (status = 503, description = "ClickHouse or Redis does not answer, or Redis is being loaded")))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::debug!(error = %e, "not ready");
        ApiError::Unavailable { retry_after_s: 1 }
    })?;
    if let Some(redis) = &state.redis
        && !crate::ingest::shared::ready(&mut redis.clone(), state.store.database()).await
    {
        tracing::debug!("not ready: redis does not answer or holds no accepted ids");
        return Err(ApiError::Unavailable { retry_after_s: 1 });
    }
    let dedup = if state.redis.is_some() {
        "shared"
    } else {
        "embedded"
    };
    Ok(Json(
        json!({"status": "ready", "clickhouse": "ok", "migrations": "done", "dedup": dedup}),
    ))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .queue_events
        .store(state.ingestor.queued_events() as u64, Relaxed);
    let cache = state.usage.cache();
    let poll_age = cache.poll_age().map_or(0, |age| age.as_millis() as u64);
    state
        .metrics
        .usage_changes_poll_age_ms
        .store(poll_age, Relaxed);
    for (to, from) in [
        (&state.metrics.usage_cache_hits, &cache.hits),
        (&state.metrics.usage_cache_misses, &cache.misses),
        (&state.metrics.usage_cache_loaded, &cache.loaded),
    ] {
        to.store(from.load(Relaxed), Relaxed);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
