//! Liveness, readiness and metrics.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// ClickHouse answers and migrations are done (they run before the server accepts requests).
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::debug!(error = %e, "not ready");
        ApiError::Unavailable { retry_after_s: 1 }
    })?;
    Ok(Json(
        json!({"status": "ready", "clickhouse": "ok", "migrations": "done"}),
    ))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .queue_events
        .store(state.ingestor.queued_events() as u64, Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
