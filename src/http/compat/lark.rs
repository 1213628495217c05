//! Lark: `GET /lark/customer-access/{subject_id}/billing-state`. A rate card is a plan, a
//! pricing metric a meter, a subject a customer.

use crate::http::ApiPath as Path;
use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::whole;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::readable_customer;
use crate::readmodel::account;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(billing_state))
}

/// Lark's billing state of a subject (customer): active subscriptions with their rate card
/// (plan), whether usage is past what is included, and per usage price the units used.
#[utoipa::path(get, path = "/lark/customer-access/{subject_id}/billing-state", tag = "compat",
    params(("subject_id" = String, Path, description = "the customer's external id")),
    responses((status = 200, description = "active_subscriptions [{rate_card_id, subscription_id}], has_active_subscription, has_overage_for_usage, usage_data [{included_units, pricing_metric_id, rate_name, used_units}]"),
              (status = 404, description = "customer_not_found")))]
async fn billing_state(
    State(state): State<AppState>,
    principal: Principal,
    Path(subject_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = readable_customer(&state, &principal, &subject_id)?;
    let current = account::current_subscriptions(
        &state.usage,
        &principal.tenant,
        &catalog,
        &subject_id,
        Utc::now(),
    )
    .await?;
    let subscriptions: Vec<Value> = current
        .iter()
        .map(
            |c| json!({"rate_card_id": c.plan.code, "subscription_id": c.subscription.external_id}),
        )
        .collect();
    let usage = current.iter().flat_map(|c| &c.usage);
    let usage_data: Vec<Value> = usage
        .clone()
        .map(|u| {
            json!({
                "included_units": whole(u.included_units),
                "pricing_metric_id": u.meter,
                "rate_name": u.meter_name,
                "used_units": u.used_units.normalize().to_string(),
            })
        })
        .collect();
    Ok(Json(json!({
        "active_subscriptions": subscriptions,
        "has_active_subscription": !current.is_empty(),
        "has_overage_for_usage": usage.clone().any(|u| u.overage),
        "usage_data": usage_data,
    })))
}
