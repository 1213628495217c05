//! `POST /v1/api-keys` (admin): a new key for the caller's tenant. The key is shown once;
//! ClickHouse keeps only its digest, and every process picks it up within seconds.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, AppState};
use crate::auth::{KeyRing, Principal, Role, hash_key};
use crate::error::ApiError;
use crate::store::{Store, StoreError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKey {
    role: Role,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    name: String,
}

#[derive(Serialize)]
struct CreatedKey {
    key: String,
    tenant: String,
    role: Role,
    customer: Option<String>,
    name: String,
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct StoredKey {
    key_hash: String,
    tenant: String,
    role: String,
    customer: String,
    name: String,
    created_at: u32,
    version: u64,
}

#[utoipa::path(post, path = "/v1/api-keys", tag = "auth", request_body = NewKey,
    responses((status = 201, description = "The new key, shown once: {key, tenant, role, customer, name}"), (status = 400), (status = 403)))]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    principal.require(&[Role::Admin], "create API keys")?;
    if (request.role == Role::Customer)
        != request.customer.as_deref().is_some_and(|c| !c.is_empty())
    {
        return Err(ApiError::InvalidRequest(
            "customer: required for role customer, and only for it".into(),
        ));
    }
    let key = format!("mh_{}", hex::encode(rand::random::<[u8; 24]>()));
    let hash = hash_key(&key);
    let now = chrono::Utc::now();
    let row = StoredKey {
        key_hash: hex::encode(hash),
        tenant: principal.tenant.to_string(),
        role: request.role.as_str().into(),
        customer: request.customer.clone().unwrap_or_default(),
        name: request.name.clone(),
        created_at: now.timestamp() as u32,
        version: now.timestamp_micros() as u64,
    };
    store_key(&state.store, &row).await.map_err(|e| match e {
        StoreError::Unavailable(_) => ApiError::Unavailable { retry_after_s: 1 },
        StoreError::Rejected(detail) | StoreError::OverBudget(detail) => ApiError::Internal(detail),
    })?;
    state.keys.insert(
        hash,
        &principal.tenant,
        request.role,
        request.customer.clone(),
    );
    tracing::info!(tenant = %principal.tenant, role = request.role.as_str(), "api key created");
    let created = CreatedKey {
        key,
        tenant: principal.tenant.to_string(),
        role: request.role,
        customer: request.customer,
        name: request.name,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

async fn store_key(store: &Store, row: &StoredKey) -> Result<(), StoreError> {
    let mut insert = store.client().insert::<StoredKey>("api_keys").await?;
    insert.write(row).await?;
    insert.end().await?;
    Ok(())
}

/// Adds every stored key to `ring`.
pub async fn load_stored(store: &Store, ring: &KeyRing) -> Result<usize, StoreError> {
    let rows: Vec<StoredKey> = store
        .client()
        .query(crate::store::queries::STORED_KEYS)
        .fetch_all()
        .await?;
    let mut loaded = 0;
    for row in rows {
        let (Ok(bytes), Some(role)) = (hex::decode(&row.key_hash), Role::parse(&row.role)) else {
            continue;
        };
        let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            continue;
        };
        let customer = (!row.customer.is_empty()).then_some(row.customer);
        ring.insert(hash, &row.tenant, role, customer);
        loaded += 1;
    }
    Ok(loaded)
}

/// Reloads stored keys every `every`, so keys made through another process work here too.
pub fn spawn_refresh(store: Store, ring: KeyRing, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = load_stored(&store, &ring).await {
                tracing::debug!(error = %e, "api key refresh failed");
            }
        }
    })
}
