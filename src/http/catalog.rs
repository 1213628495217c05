//! Catalog routes (docs/api.md "Catalog"): meters, plans, customers, subscriptions. `POST` creates
//! (409 if the key exists), `PUT /{key}` replaces, `GET` lists or reads; subscriptions also
//! `cancel` and `change_plan`.

use crate::http::{ApiPath as Path, ApiQuery as Query};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, AppState};
use crate::auth::{Principal, Role};
use crate::billing::period::Timeline;
use crate::catalog::{CatalogError, Item, TenantCatalog};
use crate::domain::subscription::{SubscriptionInput, effective_at};
use crate::domain::{Customer, Meter, Plan, Subscription};
use crate::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_meters, create_meter))
        .routes(routes!(read_meter, replace_meter))
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(read_plan, replace_plan))
        .routes(routes!(list_customers, create_customer))
        .routes(routes!(read_customer, replace_customer))
        .routes(routes!(list_subscriptions, create_subscription))
        .routes(routes!(read_subscription, replace_subscription))
        .routes(routes!(cancel))
        .routes(routes!(change_plan))
}

/// Concrete, documented handlers for one catalog kind over the generic ones below.
macro_rules! catalog_kind {
    ($kind:ident, $tag:literal, $collection:literal, $item:literal, $list:ident, $create:ident, $replace:ident) => {
        #[utoipa::path(get, path = $collection, tag = $tag,
            responses((status = 200, description = "Every item: {\"data\": [...]}"), (status = 401), (status = 403)))]
        async fn $list(state: State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
            list::<$kind>(state, principal).await
        }

        #[utoipa::path(post, path = $collection, tag = $tag, request_body = $kind,
            responses((status = 201, body = $kind), (status = 400, description = "invalid_request, naming the field"),
                      (status = 404, description = "a referenced item does not exist"), (status = 409, description = "conflict: the key exists")))]
        async fn $create(state: State<AppState>, principal: Principal, body: ApiJson<$kind>) -> Result<(StatusCode, Json<$kind>), ApiError> {
            create::<$kind>(state, principal, body).await
        }

        #[utoipa::path(put, path = $item, tag = $tag, request_body = $kind, params(("key" = String, Path)),
            responses((status = 200, body = $kind), (status = 400), (status = 404)))]
        async fn $replace(state: State<AppState>, principal: Principal, key: Path<String>, body: ApiJson<$kind>) -> Result<Json<$kind>, ApiError> {
            replace::<$kind>(state, principal, key, body).await
        }
    };
}

catalog_kind!(
    Meter,
    "meters",
    "/v1/meters",
    "/v1/meters/{key}",
    list_meters,
    create_meter,
    replace_meter
);
catalog_kind!(
    Plan,
    "plans",
    "/v1/plans",
    "/v1/plans/{key}",
    list_plans,
    create_plan,
    replace_plan
);
catalog_kind!(
    Customer,
    "customers",
    "/v1/customers",
    "/v1/customers/{key}",
    list_customers,
    create_customer,
    replace_customer
);

#[utoipa::path(get, path = "/v1/meters/{key}", tag = "meters", params(("key" = String, Path)),
    responses((status = 200, body = Meter), (status = 404, description = "meter_not_found")))]
async fn read_meter(
    state: State<AppState>,
    principal: Principal,
    key: Path<String>,
) -> Result<Json<Meter>, ApiError> {
    read::<Meter>(state, principal, key).await
}

#[utoipa::path(get, path = "/v1/plans/{key}", tag = "plans", params(("key" = String, Path)),
    responses((status = 200, body = Plan), (status = 404, description = "plan_not_found")))]
async fn read_plan(
    state: State<AppState>,
    principal: Principal,
    key: Path<String>,
) -> Result<Json<Plan>, ApiError> {
    read::<Plan>(state, principal, key).await
}

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::Invalid(message) => ApiError::InvalidRequest(message),
            CatalogError::Conflict(message) => ApiError::Conflict(message),
            CatalogError::NotFound { kind, message } => {
                ApiError::not_found(kind.not_found_code(), message)
            }
            CatalogError::Store(err) => err.into(),
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

#[utoipa::path(get, path = "/v1/customers/{key}", tag = "customers", params(("key" = String, Path)),
    responses((status = 200, body = Customer), (status = 404, description = "customer_not_found")))]
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
    // `plan` is the plan in force now (the first one before the start, the last one after the
    // end); `phases` keeps every plan with the instant it took effect.
    view["plan"] = json!(subscription.plan_at(now));
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

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions",
    responses((status = 200, description = "Every subscription with status, current period and next invoice date")))]
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

#[utoipa::path(get, path = "/v1/subscriptions/{key}", tag = "subscriptions",
    params(("key" = String, Path), ("as_of" = Option<String>, Query, description = "RFC 3339 or Unix s/ms, not in the future: estimated_next_invoice_amount and usage of the period current then, with the events ingested up to then; adds `as_of` and `late_events`")),
    responses((status = 200, description = "The subscription with status, current_period, next_invoice_date, estimated_next_invoice_amount and units used per usage price"),
              (status = 400, description = "invalid_request: as_of unparsable or in the future"),
              (status = 404, description = "subscription_not_found")))]
async fn read_subscription(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    Query(params): Query<super::usage::AsOfParams>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state.catalog.tenant(&principal.tenant);
    let subscription = catalog
        .get::<Subscription>(&key)
        .ok_or_else(|| missing::<Subscription>(&key))?;
    principal.may_read_subscription(&subscription.customer, || missing::<Subscription>(&key))?;
    let at = super::usage::as_of(params.as_of.as_deref())?;
    let mut view = subscription_view(&catalog, subscription)?;
    let figures =
        super::usage::current_figures(&state, &principal, &catalog, subscription, at).await?;
    if let Some(at) = at {
        view["as_of"] = json!(at);
        view["late_events"] = json!(figures.as_ref().and_then(|f| f.late_events).unwrap_or(0));
    }
    view["estimated_next_invoice_amount"] = json!(figures.as_ref().map(|f| f.amount));
    view["usage"] = json!(figures.map(|f| f.usage).unwrap_or_default());
    Ok(Json(view))
}

#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionInput,
    responses((status = 201, description = "The subscription as stored, with status and periods"), (status = 400), (status = 404), (status = 409)))]
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

#[utoipa::path(put, path = "/v1/subscriptions/{key}", tag = "subscriptions", request_body = SubscriptionInput, params(("key" = String, Path)),
    responses((status = 200), (status = 400), (status = 404)))]
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

#[utoipa::path(post, path = "/v1/subscriptions/{key}/cancel", tag = "subscriptions", params(("key" = String, Path)),
    request_body(content = Object, description = "{\"at\": \"period_end\" | \"now\" | \"<RFC 3339>\"} (default period_end)"),
    responses((status = 200), (status = 404), (status = 409, description = "the subscription has already ended")))]
async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<CancelRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require(&[Role::Admin], "cancel subscriptions")?;
    act(&state, &principal, &key, &request.at, |s, at| s.cancel(at)).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{key}/change_plan", tag = "subscriptions", params(("key" = String, Path)),
    request_body(content = Object, description = "{\"plan\": \"<code>\", \"at\": \"now\" | \"period_end\"}"),
    responses((status = 200), (status = 404, description = "subscription_not_found or plan_not_found"), (status = 409)))]
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
