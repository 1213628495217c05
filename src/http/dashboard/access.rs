//! Who is looking at a page: a link's token (exchanged for a session cookie, or kept by a
//! framed page) or the session cookie; and the pages' errors, in plain words.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::links::{Grant, GrantKind, LinkError};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::http::AppState;

/// The session cookie's name; it is sent to `/dashboard` paths only.
const COOKIE: &str = "meterhouse_dashboard";

/// The holder of a dashboard link or session.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub tenant: Arc<str>,
    /// Set for a customer's link: that customer's pages only.
    pub customer: Option<String>,
    /// The link's token when the page is framed (no cookie reaches it): every address the
    /// page links to carries it.
    pub embedded_token: Option<String>,
}

impl Viewer {
    /// The API's caller for this viewer: a read key of the tenant, or the customer's key.
    pub fn principal(&self) -> Principal {
        Principal {
            tenant: self.tenant.clone(),
            role: if self.customer.is_some() {
                Role::Customer
            } else {
                Role::Read
            },
            customer: self.customer.clone(),
            key_id: 0,
        }
    }

    /// `403` unless this viewer may see the tenant's pages.
    pub fn require_tenant(&self) -> Result<(), PageError> {
        match &self.customer {
            None => Ok(()),
            Some(_) => Err(PageError::forbidden()),
        }
    }

    /// `403` unless this viewer may see `customer`'s pages.
    pub fn require_customer(&self, customer: &str) -> Result<(), PageError> {
        match &self.customer {
            Some(own) if own != customer => Err(PageError::forbidden()),
            _ => Ok(()),
        }
    }
}

/// A page's failure: a short page in plain words, with the status of the API's error.
#[derive(Debug)]
pub enum PageError {
    Api(ApiError),
    Link(LinkError),
    /// No link or session.
    NoSession,
    /// A link opened at the top level: its token becomes the session cookie, the address
    /// loses the token.
    Exchange {
        location: String,
        cookie: String,
    },
}

impl PageError {
    pub fn forbidden() -> Self {
        Self::Api(ApiError::Forbidden(
            "this link shows one customer's pages only; this page is not one of them".into(),
        ))
    }
}

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(err: crate::store::StoreError) -> Self {
        Self::Api(err.into())
    }
}

impl From<crate::readmodel::report::UsageError> for PageError {
    fn from(err: crate::readmodel::report::UsageError) -> Self {
        Self::Api(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            Self::Exchange { location, cookie } => {
                let mut response = StatusCode::SEE_OTHER.into_response();
                let headers = response.headers_mut();
                if let Ok(location) = HeaderValue::from_str(&location) {
                    headers.insert(header::LOCATION, location);
                }
                if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                    headers.insert(header::SET_COOKIE, cookie);
                }
                return response;
            }
            Self::Link(LinkError::Invalid) => (
                StatusCode::UNAUTHORIZED,
                "This link is not valid",
                "The dashboard link was changed or was not made by this service. Ask for a new \
                 link."
                    .to_owned(),
            ),
            Self::Link(LinkError::Expired { expires_at }) => (
                StatusCode::GONE,
                "This link has expired",
                format!(
                    "The dashboard link expired on {} UTC. Ask for a new link.",
                    chrono::DateTime::from_timestamp(expires_at, 0)
                        .unwrap_or_default()
                        .format("%Y-%m-%d %H:%M")
                ),
            ),
            Self::NoSession => (
                StatusCode::UNAUTHORIZED,
                "Open the dashboard through a link",
                "This page needs a dashboard link (POST /v1/dashboard/links) or a session that \
                 one opened in this browser."
                    .to_owned(),
            ),
            Self::Api(err) => {
                let status = err.status();
                if let ApiError::Internal(detail) = &err {
                    tracing::error!(error = %detail, "internal error");
                }
                let title = match status {
                    StatusCode::FORBIDDEN => "Not available with this link",
                    StatusCode::NOT_FOUND => "Not found",
                    s if s.is_client_error() => "This request cannot be answered",
                    _ => "The dashboard is unavailable",
                };
                (status, title, err.to_string())
            }
        };
        let body = super::view::message_page(title, &message);
        (status, body).into_response()
    }
}

/// The value of cookie `name` among the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `token` parameter of a query string.
fn token_param(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "token")
        .map(|(_, value)| value)
}

/// The query string without its `token` parameter.
fn without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.starts_with("token=") && !pair.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether the browser loads this as the page of a frame or a script's request (no cookie
/// of ours arrives there), not as the top-level document.
fn loaded_inside_a_page(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-dest")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|dest| dest != "document")
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let keys = &state.dashboard.keys;
        let query = parts.uri.query().unwrap_or("");
        if let Some(token) = token_param(query) {
            let grant = keys
                .verify(token, GrantKind::Link)
                .await
                .map_err(PageError::Link)?;
            if loaded_inside_a_page(&parts.headers) {
                return Ok(viewer(grant, Some(token.to_owned())));
            }
            let session = keys.sign(&Grant {
                kind: GrantKind::Session,
                ..grant.clone()
            });
            let max_age = grant.expires_at - chrono::Utc::now().timestamp();
            let secure = parts
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v == "https");
            let cookie = format!(
                "{COOKIE}={session}; Path=/dashboard; Max-Age={max_age}; HttpOnly; \
                 SameSite=Strict{}",
                if secure { "; Secure" } else { "" }
            );
            let rest = without_token(query);
            let path = parts.uri.path();
            let location = if rest.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{rest}")
            };
            return Err(PageError::Exchange { location, cookie });
        }
        let session = cookie(&parts.headers, COOKIE).ok_or(PageError::NoSession)?;
        let grant = keys
            .verify(session, GrantKind::Session)
            .await
            .map_err(PageError::Link)?;
        Ok(viewer(grant, None))
    }
}

fn viewer(grant: Grant, embedded_token: Option<String>) -> Viewer {
    Viewer {
        tenant: grant.tenant.into(),
        customer: grant.customer,
        embedded_token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_taken_out_of_the_query_and_the_rest_kept() {
        let query = "from=1&token=l.2.ab.cd.ef&to=3";
        assert_eq!(token_param(query), Some("l.2.ab.cd.ef"));
        assert_eq!(without_token(query), "from=1&to=3");
        assert_eq!(without_token("token=x"), "");
        assert_eq!(token_param("tokens=1"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; meterhouse_dashboard=s.x; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("s.x"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
