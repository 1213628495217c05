//! API keys of the caller's tenant (admin): `POST /v1/api-keys` makes one, shown once
//! (ClickHouse keeps only its digest); `GET /v1/api-keys` lists them, configured ones included,
//! never a key or its digest; `DELETE /v1/api-keys/{id}` revokes a stored one. Every process
//! picks up new and revoked keys within a second.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, AppState};
use crate::auth::stored::{key_id, parsed, stored_and_revoked};
use crate::auth::{Principal, Role, hash_key};
use crate::error::ApiError;
use crate::store::keys::{Revocation, StoredKey};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
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
    state.store.insert_revocation(&row).await?;
    state.keys.remove(&hash);
    tracing::info!(tenant = %principal.tenant, key = %id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
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
    state.store.insert_key(&row).await?;
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
