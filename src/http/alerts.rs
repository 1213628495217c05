//! Usage alerts (admin): `POST /v1/alerts` watches a subscription, or every subscription of a
//! plan; `GET /v1/alerts`, `GET` and `DELETE /v1/alerts/{code}`. What fires is sent to the
//! webhook endpoints (`webhooks`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, ApiPath, AppState};
use crate::auth::{Principal, Role};
use crate::domain::Alert;
use crate::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts, create_alert))
        .routes(routes!(read_alert, delete_alert))
}

#[utoipa::path(post, path = "/v1/alerts", tag = "alerts", request_body = Alert,
    responses((status = 201, body = Alert, description = "The alert, its metric resolved; it fires `alert.triggered` once per subscription and billing period when the value reaches the threshold"),
              (status = 400, description = "invalid_request, naming the field"),
              (status = 404, description = "subscription_not_found or plan_not_found"),
              (status = 409, description = "conflict: the code exists")))]
async fn create_alert(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(mut alert): ApiJson<Alert>,
) -> Result<(StatusCode, Json<Alert>), ApiError> {
    principal.require(&[Role::Admin], "manage alerts")?;
    alert.metric = Some(alert.metric());
    alert.created_at = Some(chrono::Utc::now());
    let alert = state.catalog.create(&principal.tenant, alert).await?;
    Ok((StatusCode::CREATED, Json(alert)))
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts",
    responses((status = 200, description = "Every alert: {\"data\": [...]}"), (status = 403)))]
async fn list_alerts(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    principal.require(&[Role::Admin], "manage alerts")?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let alerts: Vec<&Alert> = catalog.alerts.values().collect();
    Ok(Json(json!({ "data": alerts })))
}

#[utoipa::path(get, path = "/v1/alerts/{code}", tag = "alerts", params(("code" = String, Path)),
    responses((status = 200, body = Alert), (status = 404, description = "alert_not_found")))]
async fn read_alert(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(code): ApiPath<String>,
) -> Result<Json<Alert>, ApiError> {
    principal.require(&[Role::Admin], "manage alerts")?;
    let catalog = state.catalog.tenant(&principal.tenant);
    catalog
        .alerts
        .get(&code)
        .cloned()
        .map(Json)
        .ok_or_else(|| missing(&code))
}

#[utoipa::path(delete, path = "/v1/alerts/{code}", tag = "alerts", params(("code" = String, Path)),
    responses((status = 204, description = "Deleted: it fires no more"), (status = 404, description = "alert_not_found")))]
async fn delete_alert(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(code): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(&[Role::Admin], "manage alerts")?;
    match state
        .catalog
        .delete::<Alert>(&principal.tenant, &code)
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(crate::catalog::CatalogError::NotFound { .. }) => Err(missing(&code)),
        Err(e) => Err(e.into()),
    }
}

fn missing(code: &str) -> ApiError {
    ApiError::not_found(
        "alert_not_found",
        format!("no alert '{code}' in this tenant"),
    )
}
