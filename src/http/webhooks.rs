//! Webhook endpoints and deliveries (admin). `POST /v1/webhook_endpoints` registers a
//! receiver and shows its signing secret once; `GET /v1/webhook_endpoints`, `GET` and `DELETE
//! /v1/webhook_endpoints/{id}`. `GET /v1/webhook_deliveries` lists deliveries with their
//! attempts; `POST /v1/webhook_deliveries/{id}/retry` sends an event again.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, ApiPath, ApiQuery, AppState};
use crate::alerts::ALERT_TRIGGERED;
use crate::alerts::outbox::next_version;
use crate::auth::{Principal, Role};
use crate::catalog::CatalogError;
use crate::domain::WebhookEndpoint;
use crate::error::ApiError;
use crate::store::webhooks::{DeliveryRow, ListedAttempt};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(read_endpoint, delete_endpoint))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    /// Where deliveries are POSTed: http:// or https://.
    url: String,
    /// The event types it receives; default `["alert.triggered"]`.
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// An endpoint as shown: its secret only in the answer that created it.
#[derive(Serialize, utoipa::ToSchema)]
struct ShownEndpoint {
    id: String,
    url: String,
    events: Vec<String>,
    created_at: DateTime<Utc>,
    /// Signs every delivery (`Meterhouse-Signature`); shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl ShownEndpoint {
    fn of(endpoint: &WebhookEndpoint, with_secret: bool) -> Self {
        Self {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            events: endpoint.events.clone(),
            created_at: endpoint.created_at,
            secret: with_secret.then(|| endpoint.secret.clone()),
        }
    }
}

const MANAGE: &str = "manage webhooks";

#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks", request_body = NewEndpoint,
    responses((status = 201, body = ShownEndpoint, description = "The endpoint with its secret, shown this once"),
              (status = 400, description = "invalid_request, naming the field"), (status = 403)))]
async fn create_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, Json<ShownEndpoint>), ApiError> {
    principal.require(&[Role::Admin], MANAGE)?;
    let endpoint = WebhookEndpoint {
        id: format!("we_{}", hex::encode(rand::random::<[u8; 8]>())),
        url: request.url.trim().to_owned(),
        events: request
            .events
            .unwrap_or_else(|| vec![ALERT_TRIGGERED.to_owned()]),
        secret: format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>())),
        created_at: Utc::now(),
    };
    if endpoint.url.parse::<hyper::Uri>().is_err() {
        return Err(ApiError::InvalidRequest(format!(
            "url: '{}' is not a valid address",
            endpoint.url
        )));
    }
    let endpoint = state.catalog.create(&principal.tenant, endpoint).await?;
    tracing::info!(tenant = %principal.tenant, endpoint = %endpoint.id, "webhook endpoint created");
    Ok((
        StatusCode::CREATED,
        Json(ShownEndpoint::of(&endpoint, true)),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
struct EndpointList {
    data: Vec<ShownEndpoint>,
}

#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks",
    responses((status = 200, body = EndpointList), (status = 403)))]
async fn list_endpoints(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<EndpointList>, ApiError> {
    principal.require(&[Role::Admin], MANAGE)?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let data = catalog
        .webhook_endpoints
        .values()
        .map(|e| ShownEndpoint::of(e, false))
        .collect();
    Ok(Json(EndpointList { data }))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = ShownEndpoint), (status = 404, description = "webhook_endpoint_not_found")))]
async fn read_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ShownEndpoint>, ApiError> {
    principal.require(&[Role::Admin], MANAGE)?;
    let catalog = state.catalog.tenant(&principal.tenant);
    catalog
        .webhook_endpoints
        .get(&id)
        .map(|e| Json(ShownEndpoint::of(e, false)))
        .ok_or_else(|| endpoint_missing(&id))
}

#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted: its pending deliveries are cancelled, nothing more is sent to it"),
              (status = 404, description = "webhook_endpoint_not_found")))]
async fn delete_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(&[Role::Admin], MANAGE)?;
    match state
        .catalog
        .delete::<WebhookEndpoint>(&principal.tenant, &id)
        .await
    {
        Ok(()) => {}
        Err(CatalogError::NotFound { .. }) => return Err(endpoint_missing(&id)),
        Err(e) => return Err(e.into()),
    }
    // Its pending deliveries are cancelled in the outbox itself, so that no process sends one
    // before it learns of the deletion.
    let cancelled: Vec<DeliveryRow> = state
        .store
        .deliveries(&principal.tenant, None, Some(&id), 100_000)
        .await?
        .into_iter()
        .filter(|row| row.state == "pending")
        .map(|mut row| {
            row.state = "cancelled".into();
            row.last_error = "the endpoint was deleted".into();
            row.version = next_version(row.version);
            row
        })
        .collect();
    state.store.insert_deliveries(&cancelled).await?;
    tracing::info!(tenant = %principal.tenant, endpoint = %id, cancelled = cancelled.len(),
        "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn endpoint_missing(id: &str) -> ApiError {
    ApiError::not_found(
        "webhook_endpoint_not_found",
        format!("no webhook endpoint '{id}' in this tenant"),
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveryFilter {
    /// Only deliveries to this endpoint.
    endpoint: Option<String>,
    /// Only the deliveries of this event.
    id: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<u64>,
}

/// One event to one endpoint, with every attempt.
#[derive(Serialize, utoipa::ToSchema)]
struct Delivery {
    /// The event's id, the same on every attempt.
    id: String,
    endpoint: String,
    #[serde(rename = "type")]
    kind: String,
    /// `pending`, `delivered`, `failed` (no success within 24 hours) or `cancelled` (endpoint
    /// deleted).
    state: String,
    created_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while pending.
    next_attempt_at: Option<DateTime<Utc>>,
    attempts: Vec<Attempt>,
    /// The event as sent.
    #[schema(value_type = Object)]
    event: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Attempt {
    attempt: u32,
    at: Option<DateTime<Utc>>,
    /// The receiver's HTTP status; `null` when it did not answer.
    status: Option<u16>,
    /// Why it failed; empty when delivered.
    error: String,
    duration_ms: u32,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryList {
    data: Vec<Delivery>,
}

#[utoipa::path(get, path = "/v1/webhook_deliveries", tag = "webhooks", params(DeliveryFilter),
    responses((status = 200, body = DeliveryList), (status = 403)))]
async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(filter): ApiQuery<DeliveryFilter>,
) -> Result<Json<DeliveryList>, ApiError> {
    principal.require(&[Role::Admin], MANAGE)?;
    let limit = filter.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest("limit: from 1 to 1000".into()));
    }
    let rows = state
        .store
        .deliveries(
            &principal.tenant,
            filter.id.as_deref(),
            filter.endpoint.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(DeliveryList {
        data: with_attempts(&state, &principal.tenant, rows).await?,
    }))
}

#[utoipa::path(post, path = "/v1/webhook_deliveries/{id}/retry", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 202, body = DeliveryList, description = "Due now: sent again to each endpoint of the event, with the same id"),
              (status = 404, description = "delivery_not_found")))]
async fn retry_delivery(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<DeliveryList>), ApiError> {
    principal.require(&[Role::Admin], MANAGE)?;
    let rows = state
        .store
        .deliveries(&principal.tenant, Some(&id), None, 1000)
        .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(
            "delivery_not_found",
            format!("no webhook delivery of event '{id}' in this tenant"),
        ));
    }
    let now = Utc::now().timestamp_millis();
    let due: Vec<DeliveryRow> = rows
        .into_iter()
        .map(|mut row| {
            row.state = "pending".into();
            row.next_attempt_ms = now;
            // Retried for another 24 hours from now.
            row.created_ms = now;
            row.version = next_version(row.version);
            row
        })
        .collect();
    state.store.insert_deliveries(&due).await?;
    for row in &due {
        state
            .outbox
            .wake((row.tenant.clone(), row.id.clone(), row.endpoint.clone()));
    }
    let data = with_attempts(&state, &principal.tenant, due).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryList { data })))
}

async fn with_attempts(
    state: &AppState,
    tenant: &str,
    rows: Vec<DeliveryRow>,
) -> Result<Vec<Delivery>, ApiError> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let attempts = state.store.attempts(tenant, &ids).await?;
    let at = DateTime::<Utc>::from_timestamp_millis;
    Ok(rows
        .into_iter()
        .map(|row| {
            let of_row = |a: &&ListedAttempt| a.id == row.id && a.endpoint == row.endpoint;
            Delivery {
                attempts: attempts
                    .iter()
                    .filter(of_row)
                    .map(|a| Attempt {
                        attempt: a.attempt,
                        at: at(a.at_ms),
                        status: (a.status != 0).then_some(a.status),
                        error: a.error.clone(),
                        duration_ms: a.duration_ms,
                    })
                    .collect(),
                next_attempt_at: (row.state == "pending")
                    .then(|| at(row.next_attempt_ms))
                    .flatten(),
                created_at: at(row.created_ms),
                event: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
                id: row.id,
                endpoint: row.endpoint,
                kind: row.kind,
                state: row.state,
            }
        })
        .collect())
}
