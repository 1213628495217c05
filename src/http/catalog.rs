//! Catalog routes (API.md "Catalog"): meters, plans, customers, subscriptions. `POST` creates
//! (409 if the key exists), `PUT /{key}` replaces, `GET` lists or reads; subscriptions also
//! `cancel` and `change_plan`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, AppState};
use crate::auth::{Principal, Role};
use crate::billing::period::Timeline;
use crate::catalog::subscription::{SubscriptionInput, effective_at};
use crate::catalog::{CatalogError, Customer, Item, Meter, Plan, Subscription, TenantCatalog};
use crate::error::ApiError;
use crate::store::StoreError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/meters", get(list::<Meter>).post(create::<Meter>))
        .route("/v1/meters/{key}", get(read::<Meter>).put(replace::<Meter>))
        .route("/v1/plans", get(list::<Plan>).post(create::<Plan>))
        .route("/v1/plans/{key}", get(read::<Plan>).put(replace::<Plan>))
        .route(
            "/v1/customers",
            get(list::<Customer>).post(create::<Customer>),
        )
        .route(
            "/v1/customers/{key}",
            get(read_customer).put(replace::<Customer>),
        )
        .route(
            "/v1/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route(
            "/v1/subscriptions/{key}",
            get(read_subscription).put(replace_subscription),
        )
        .route("/v1/subscriptions/{key}/cancel", post(cancel))
        .route("/v1/subscriptions/{key}/change_plan", post(change_plan))
}

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::Invalid(message) => ApiError::InvalidRequest(message),
            CatalogError::Conflict(message) => ApiError::Conflict(message),
            CatalogError::NotFound { kind, message } => {
                ApiError::not_found(kind.not_found_code(), message)
            }
            CatalogError::Store(StoreError::Unavailable(_)) => {
                ApiError::Unavailable { retry_after_s: 1 }
            }
            CatalogError::Store(StoreError::Rejected(detail)) => ApiError::Internal(detail),
        }
    }
}

const READERS: &[Role] = &[Role::Admin, Role::Read];

fn missing<T: Item>(key: &str) -> ApiError {
    ApiError::not_found(
        T::KIND.not_found_code(),
        format!("no {} '{key}' in this tenant", T::KIND.as_str()),
    )
}

async fn list<T: Item>(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS, "list the catalog")?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let items: Vec<&T> = T::map(&catalog).values().collect();
    Ok(Json(json!({ "data": items })))
}

async fn read<T: Item>(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
) -> Result<Json<T>, ApiError> {
    principal.require(READERS, "read the catalog")?;
    let catalog = state.catalog.tenant(&principal.tenant);
    catalog
        .get::<T>(&key)
        .cloned()
        .map(Json)
        .ok_or_else(|| missing::<T>(&key))
}

async fn create<T: Item>(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(item): ApiJson<T>,
) -> Result<(StatusCode, Json<T>), ApiError> {
    principal.require(&[Role::Admin], "change the catalog")?;
    let item = state.catalog.create(&principal.tenant, item).await?;
    Ok((StatusCode::CREATED, Json(item)))
}

async fn replace<T: Item>(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    ApiJson(item): ApiJson<T>,
) -> Result<Json<T>, ApiError> {
    principal.require(&[Role::Admin], "change the catalog")?;
    if item.key() != key {
        return Err(ApiError::InvalidRequest(format!(
            "the body's key '{}' differs from the path's '{key}'",
            item.key()
        )));
    }
    Ok(Json(state.catalog.replace(&principal.tenant, item).await?))
}

async fn read_customer(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    principal.may_read_customer(&key)?;
    let catalog = state.catalog.tenant(&principal.tenant);
    catalog
        .get::<Customer>(&key)
        .cloned()
        .map(Json)
        .ok_or_else(|| missing::<Customer>(&key))
}

/// A subscription with what is derived from it now: status, current period, next invoice.
fn subscription_view(
    catalog: &TenantCatalog,
    subscription: &Subscription,
) -> Result<Value, ApiError> {
    let mut view =
        serde_json::to_value(subscription).map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = Utc::now();
    let timeline = timeline_of(catalog, subscription)?;
    let period = timeline
        .period_at(now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    view["status"] = json!(timeline.status_at(now));
    view["current_plan"] = json!(subscription.plan_at(now));
    view["trial_end"] = json!(timeline.trial_end);
    view["current_period"] =
        json!(period.map(|p| json!({"from": p.window.from, "to": p.window.to, "trial": p.trial})));
    view["next_invoice_date"] = json!(
        timeline
            .next_invoice_date(now)
            .map_err(|e| ApiError::Internal(e.to_string()))?
    );
    Ok(view)
}

async fn list_subscriptions(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS, "list the catalog")?;
    let catalog = state.catalog.tenant(&principal.tenant);
    let views = catalog
        .subscriptions
        .values()
        .map(|s| subscription_view(&catalog, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "data": views })))
}

async fn read_subscription(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state.catalog.tenant(&principal.tenant);
    let subscription = catalog
        .get::<Subscription>(&key)
        .ok_or_else(|| missing::<Subscription>(&key))?;
    principal
        .may_read_customer(&subscription.customer)
        .map_err(|_| missing::<Subscription>(&key))?;
    let mut view = subscription_view(&catalog, subscription)?;
    let figures = super::usage::current_figures(&state, &principal, &catalog, subscription).await?;
    view["estimated_next_invoice_amount"] = json!(figures.as_ref().map(|f| f.0));
    view["usage"] = json!(figures.map(|f| f.1).unwrap_or_default());
    Ok(Json(view))
}

async fn create_subscription(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<SubscriptionInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(&[Role::Admin], "change the catalog")?;
    input.validate().map_err(ApiError::InvalidRequest)?;
    let created = state
        .catalog
        .create(&principal.tenant, input.into_subscription(Utc::now()))
        .await?;
    let catalog = state.catalog.tenant(&principal.tenant);
    Ok((
        StatusCode::CREATED,
        Json(subscription_view(&catalog, &created)?),
    ))
}

async fn replace_subscription(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    ApiJson(input): ApiJson<SubscriptionInput>,
) -> Result<Json<Value>, ApiError> {
    principal.require(&[Role::Admin], "change the catalog")?;
    input.validate().map_err(ApiError::InvalidRequest)?;
    if input.external_id != key {
        return Err(ApiError::InvalidRequest(format!(
            "the body's key '{}' differs from the path's '{key}'",
            input.external_id
        )));
    }
    let replaced = state
        .catalog
        .replace(&principal.tenant, input.into_subscription(Utc::now()))
        .await?;
    let catalog = state.catalog.tenant(&principal.tenant);
    Ok(Json(subscription_view(&catalog, &replaced)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    #[serde(default = "period_end")]
    at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePlanRequest {
    plan: String,
    #[serde(default = "period_end")]
    at: String,
}

fn period_end() -> String {
    "period_end".into()
}

fn timeline_of(catalog: &TenantCatalog, subscription: &Subscription) -> Result<Timeline, ApiError> {
    let customer = catalog
        .get::<Customer>(&subscription.customer)
        .ok_or_else(|| missing::<Customer>(&subscription.customer))?;
    subscription
        .timeline(customer, |code| catalog.get::<Plan>(code))
        .map_err(ApiError::Internal)
}

/// Applies `action` to subscription `key` at the instant `at` names, stores and returns it.
async fn act(
    state: &AppState,
    principal: &Principal,
    key: &str,
    at: &str,
    action: impl FnOnce(&mut Subscription, DateTime<Utc>),
) -> Result<Json<Value>, ApiError> {
    let catalog = state.catalog.tenant(&principal.tenant);
    let mut subscription = catalog
        .get::<Subscription>(key)
        .cloned()
        .ok_or_else(|| missing::<Subscription>(key))?;
    if subscription.ends_at.is_some_and(|end| end <= Utc::now()) {
        return Err(ApiError::Conflict(format!(
            "subscription '{key}' has already ended"
        )));
    }
    let timeline = timeline_of(&catalog, &subscription)?;
    let at = effective_at(at, Utc::now(), &timeline).map_err(ApiError::InvalidRequest)?;
    action(&mut subscription, at);
    let saved = state
        .catalog
        .replace(&principal.tenant, subscription)
        .await?;
    Ok(Json(subscription_view(
        &state.catalog.tenant(&principal.tenant),
        &saved,
    )?))
}

async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<CancelRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require(&[Role::Admin], "cancel subscriptions")?;
    act(&state, &principal, &key, &request.at, |s, at| s.cancel(at)).await
}

async fn change_plan(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<ChangePlanRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require(&[Role::Admin], "change plans")?;
    if request.at != "now" && request.at != "period_end" {
        return Err(ApiError::InvalidRequest("at: 'now' or 'period_end'".into()));
    }
    // An unknown plan is refused by the catalog as plan_not_found.
    act(&state, &principal, &key, &request.at, |s, at| {
        s.change_plan(&request.plan, at)
    })
    .await
}
