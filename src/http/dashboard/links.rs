//! `POST /v1/dashboard/links`: a signed link to the tenant's dashboard or one customer's page.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::links::{Grant, GrantKind};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::http::usage::readable_customer;
use crate::http::{ApiJson, AppState};

/// How long a link lasts when `ttl_s` is not given, and at most (seconds).
pub(crate) const DEFAULT_TTL_S: u64 = 3600;
pub(crate) const MAX_TTL_S: u64 = 7 * 86_400;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_link))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkRequest {
    /// A customer's external id: the link shows that customer's pages only. Absent: the
    /// tenant's dashboard (a `customer` key always gets its own customer's).
    #[serde(default)]
    customer: Option<String>,
    /// Seconds the link (and the session opened with it) lasts; default 3600, at most 604800.
    #[serde(default)]
    ttl_s: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DashboardLink {
    /// A path on this service; open it in a browser.
    url: String,
    expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/v1/dashboard/links", tag = "dashboard", request_body = LinkRequest,
    responses((status = 201, body = DashboardLink), (status = 400, description = "ttl_s out of range"),
              (status = 403, description = "an ingest key"), (status = 404, description = "customer_not_found")))]
async fn create_link(
    State(state): State<AppState>,
    principal: Principal,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<DashboardLink>), ApiError> {
    use axum::extract::FromRequest as _;
    let headers = request.headers();
    let no_body = !headers.contains_key(header::CONTENT_TYPE)
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length == "0");
    let request = if no_body {
        LinkRequest::default()
    } else {
        ApiJson::<LinkRequest>::from_request(request, &state)
            .await?
            .0
    };
    let ttl_s = request.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl_s) {
        return Err(ApiError::InvalidRequest(format!(
            "ttl_s: between 1 and {MAX_TTL_S} seconds (7 days)"
        )));
    }
    let customer = match (principal.role, request.customer) {
        (Role::Customer, None) => principal.customer.clone(),
        (_, customer) => customer,
    };
    match &customer {
        Some(customer) => {
            readable_customer(&state, &principal, customer)?;
        }
        None => principal.require(&[Role::Admin, Role::Read], "open the tenant's dashboard")?,
    }
    let expires_at = Utc::now() + chrono::TimeDelta::seconds(ttl_s as i64);
    let token = state.dashboard.keys.sign(&Grant {
        kind: GrantKind::Link,
        tenant: principal.tenant.to_string(),
        customer: customer.clone(),
        expires_at: expires_at.timestamp(),
    });
    let path = match &customer {
        Some(customer) => format!(
            "/dashboard/customers/{}",
            super::view::path_segment(customer)
        ),
        None => "/dashboard".to_owned(),
    };
    let expires_at = DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at);
    tracing::info!(
        customer = customer.as_deref().unwrap_or(""),
        ttl_s,
        "dashboard link made"
    );
    Ok((
        StatusCode::CREATED,
        Json(DashboardLink {
            url: format!("{path}?token={token}"),
            expires_at,
        }),
    ))
}
