//! API keys of the caller's tenant (admin): `POST /v1/api-keys` makes one, shown once
//! (ClickHouse keeps only its digest); `GET /v1/api-keys` lists them, configured ones included,
//! never a key or its digest; `DELETE /v1/api-keys/{id}` revokes a stored one. Every process
//! picks up new and revoked keys within a second.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, AppState};
use std::collections::HashSet;

use sha2::{Digest as _, Sha256};

use crate::auth::{KeyHash, KeyRing, Principal, Role, hash_key};
use crate::error::ApiError;
use crate::store::{Store, StoreError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// How often every process reloads stored and revoked keys.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// A key's public id: derived from its digest, from which neither the digest nor the key can
/// be recovered.
pub fn key_id(hash: &KeyHash) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"meterhouse api key id\0");
    hasher.update(hash);
    format!("key_{}", hex::encode(&hasher.finalize()[..12]))
}

/// One key as listed.
#[derive(Serialize, utoipa::ToSchema)]
struct ListedKey {
    id: String,
    role: Role,
    customer: Option<String>,
    name: String,
    /// `null` for a configured key.
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `api` (made through `POST /v1/api-keys`, revocable) or `configuration`.
    source: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
struct KeyList {
    data: Vec<ListedKey>,
}

#[utoipa::path(get, path = "/v1/api-keys", tag = "auth",
    responses((status = 200, body = KeyList), (status = 403)))]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<KeyList>, ApiError> {
    principal.require(&[Role::Admin], "list API keys")?;
    let mut data: Vec<ListedKey> = state
        .keys
        .configured_of(&principal.tenant)
        .into_iter()
        .map(|(hash, p)| ListedKey {
            id: key_id(&hash),
            role: p.role,
            customer: p.customer,
            name: String::new(),
            created_at: None,
            source: "configuration",
        })
        .collect();
    let (stored, revoked) = stored_and_revoked(&state.store).await?;
    for row in stored {
        let Some((hash, role)) = parsed(&row) else {
            continue;
        };
        if row.tenant != *principal.tenant || revoked.contains(&hash) {
            continue;
        }
        data.push(ListedKey {
            id: key_id(&hash),
            role,
            customer: (!row.customer.is_empty()).then_some(row.customer),
            name: row.name,
            created_at: chrono::DateTime::from_timestamp(i64::from(row.created_at), 0),
            source: "api",
        });
    }
    Ok(Json(KeyList { data }))
}

#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked: refused with 401 by every process within a second"),
              (status = 403), (status = 404, description = "api_key_not_found"),
              (status = 409, description = "conflict: a configured key, removed from the configuration only")))]
async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    super::ApiPath(id): super::ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(&[Role::Admin], "revoke API keys")?;
    if state
        .keys
        .configured_of(&principal.tenant)
        .iter()
        .any(|(hash, _)| key_id(hash) == id)
    {
        return Err(ApiError::Conflict(format!(
            "key '{id}' comes from the configuration (METERHOUSE_API_KEYS): remove it there"
        )));
    }
    let (stored, revoked) = stored_and_revoked(&state.store).await?;
    let hash = stored
        .iter()
        .filter(|row| row.tenant == *principal.tenant)
        .filter_map(parsed)
        .map(|(hash, _)| hash)
        .find(|hash| key_id(hash) == id && !revoked.contains(hash))
        .ok_or_else(|| {
            ApiError::not_found(
                "api_key_not_found",
                format!("no API key '{id}' in this tenant"),
            )
        })?;
    let row = Revocation {
        key_hash: hex::encode(hash),
        tenant: principal.tenant.to_string(),
        revoked_at: chrono::Utc::now().timestamp() as u32,
    };
    insert_revocation(&state.store, &row).await?;
    state.keys.remove(&hash);
    tracing::info!(tenant = %principal.tenant, key = %id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(clickhouse::Row, Serialize)]
struct Revocation {
    key_hash: String,
    tenant: String,
    revoked_at: u32,
}

async fn insert_revocation(store: &Store, row: &Revocation) -> Result<(), StoreError> {
    let mut insert = store
        .client()
        .insert::<Revocation>("api_key_revocations")
        .await?;
    insert.write(row).await?;
    insert.end().await?;
    Ok(())
}

/// A stored row's digest and role, if both are well-formed.
fn parsed(row: &StoredKey) -> Option<(KeyHash, Role)> {
    let bytes = hex::decode(&row.key_hash).ok()?;
    Some((
        <[u8; 32]>::try_from(bytes.as_slice()).ok()?,
        Role::parse(&row.role)?,
    ))
}

/// Every stored key, and the digests of the revoked ones.
async fn stored_and_revoked(
    store: &Store,
) -> Result<(Vec<StoredKey>, HashSet<KeyHash>), StoreError> {
    let stored: Vec<StoredKey> = store
        .client()
        .query(crate::store::queries::STORED_KEYS)
        .fetch_all()
        .await?;
    let revoked: Vec<String> = store
        .client()
        .query(crate::store::queries::REVOKED_KEYS)
        .fetch_all()
        .await?;
    let revoked = revoked
        .iter()
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .collect();
    Ok((stored, revoked))
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
    id: String,
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
    if let Some(customer) = &request.customer {
        let catalog = state.catalog.tenant(&principal.tenant);
        if catalog.get::<crate::domain::Customer>(customer).is_none() {
            return Err(ApiError::not_found(
                "customer_not_found",
                format!("customer: no customer '{customer}' in this tenant; create it first"),
            ));
        }
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
    store_key(&state.store, &row).await?;
    state.keys.insert(
        hash,
        &principal.tenant,
        request.role,
        request.customer.clone(),
    );
    tracing::info!(tenant = %principal.tenant, role = request.role.as_str(), "api key created");
    let created = CreatedKey {
        id: key_id(&hash),
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

/// Adds every stored key to `ring` and drops the revoked ones.
pub async fn load_stored(store: &Store, ring: &KeyRing) -> Result<usize, StoreError> {
    let (rows, revoked) = stored_and_revoked(store).await?;
    let mut loaded = 0;
    for row in rows {
        let Some((hash, role)) = parsed(&row) else {
            continue;
        };
        if revoked.contains(&hash) {
            continue;
        }
        let customer = (!row.customer.is_empty()).then_some(row.customer);
        ring.insert(hash, &row.tenant, role, customer);
        loaded += 1;
    }
    for hash in &revoked {
        ring.remove(hash);
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
