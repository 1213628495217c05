//! Dashboards in a browser (docs/api.md "Dashboard"): `POST /v1/dashboard/links` mints a
//! signed, expiring link; opening it exchanges the token for an `HttpOnly`, `SameSite=Strict`
//! session cookie and redirects to the clean address (`access`). The pages (`tenant` with its
//! 7-day sections in `week`, `customer`, `explorer`) are rendered here from the API's own
//! reads, with charts (`chart`), formatting for people (`view`) and figures that refresh
//! themselves (`live`).
//!
//! Embedding: `SameSite=Strict` cookies are not sent to a page framed by another site, so a
//! page loaded in an `<iframe>` (`Sec-Fetch-Dest: iframe`) is authorised by the link's token
//! itself, kept in the frame's own addresses (its links, forms and refresh requests) and never
//! shown in an address bar. Only origins listed in `--dashboard-frame-ancestors` may frame a
//! page; by default none may.

mod access;
mod chart;
mod customer;
mod explorer;
mod links;
mod live;
mod tenant;
mod view;
mod week;

use axum::http::{HeaderValue, header};
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use crate::auth::links::DashboardKeys;

pub use access::{PageError, Viewer};

/// The dashboards' share of the application state.
#[derive(Clone)]
pub struct DashboardSettings {
    pub keys: DashboardKeys,
    /// `Content-Security-Policy` of every page, `frame-ancestors` included.
    policy: HeaderValue,
    /// Whether `X-Frame-Options: DENY` goes along (no embedding origin configured).
    deny_frames: bool,
    /// The overview's week (events per hour, meters' volumes) by tenant and zone, as last
    /// read: read again in the background once a minute old (`week::kept_or_read`), dropped
    /// after an hour nobody looked.
    week: moka::sync::Cache<week::WeekKey, std::sync::Arc<week::Week>>,
    /// The weeks being read again in the background: one read at a time per tenant and zone.
    refreshing: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<week::WeekKey>>>,
}

/// A week being read again in the background; dropping it (the read ended, or its task
/// failed) lets the next stale render start another.
struct Refreshing {
    key: week::WeekKey,
    refreshing: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<week::WeekKey>>>,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.remove(&self.key);
    }
}

impl DashboardSettings {
    /// `frame_ancestors`: origins (`scheme://host[:port]`) that may frame the pages.
    pub fn new(keys: DashboardKeys, frame_ancestors: &[String]) -> anyhow::Result<Self> {
        let origins: Vec<&str> = frame_ancestors
            .iter()
            .map(|o| o.trim().trim_end_matches('/'))
            .filter(|o| !o.is_empty())
            .collect();
        for origin in &origins {
            let well_formed = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.contains([' ', ';', ',', '\'', '"']);
            if !well_formed {
                anyhow::bail!(
                    "--dashboard-frame-ancestors: '{origin}' is not an origin (https://host[:port])"
                );
            }
        }
        let ancestors = if origins.is_empty() {
            "'none'".to_owned()
        } else {
            origins.join(" ")
        };
        let policy = format!(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
             frame-ancestors {ancestors}"
        );
        Ok(Self {
            keys,
            policy: HeaderValue::from_str(&policy)?,
            deny_frames: origins.is_empty(),
            week: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_idle(std::time::Duration::from_secs(3_600))
                .build(),
            refreshing: std::sync::Arc::default(),
        })
    }

    /// Forgets every overview's week kept: the next render of each reads it from storage
    /// (how `readbench --pages` times that read).
    pub fn forget_weeks(&self) {
        self.week.invalidate_all();
    }

    /// Marks `key`'s week as being read again, unless it already is.
    fn start_refresh(&self, key: &week::WeekKey) -> Option<Refreshing> {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        refreshing.insert(key.clone()).then(|| Refreshing {
            key: key.clone(),
            refreshing: self.refreshing.clone(),
        })
    }
}

/// `POST /v1/dashboard/links` (documented), and the pages (not part of the JSON API).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    use axum::routing::get;
    let pages = axum::Router::new()
        .route("/dashboard", get(tenant::page))
        .route("/dashboard/live", get(tenant::live))
        .route("/dashboard/customers/{external_id}", get(customer::page))
        .route(
            "/dashboard/customers/{external_id}/live",
            get(customer::live),
        )
        .route("/dashboard/meters/{slug}", get(explorer::page))
        .route("/dashboard/meters/{slug}/csv", get(explorer::csv))
        .route("/dashboard/assets/style.css", get(style))
        .route("/dashboard/assets/live.js", get(script));
    links::router().merge(OpenApiRouter::from(pages))
}

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/live.js");

async fn style() -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn script() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// Every page and asset (paths under `/dashboard`): the content policy (scripts and styles
/// from the service only, framing as configured), no caching, no referrer leaving with a token.
pub(crate) async fn security_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let page = request.uri().path().starts_with("/dashboard");
    let mut response = next.run(request).await;
    if !page {
        return response;
    }
    let settings = &state.dashboard;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, settings.policy.clone());
    if settings.deny_frames {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The zone of a page: an IANA name, UTC when not given.
fn zone(name: Option<&str>) -> Result<chrono_tz::Tz, PageError> {
    let name = name.unwrap_or("UTC");
    name.parse().map_err(|_| {
        PageError::Api(crate::error::ApiError::InvalidRequest(format!(
            "tz: '{name}' is not an IANA time zone"
        )))
    })
}

/// An instant typed into a page: RFC 3339 or Unix seconds/milliseconds as the API reads them,
/// or a date (`2026-01-31`, midnight in `tz`).
fn instant(
    name: &str,
    text: &str,
    tz: chrono_tz::Tz,
) -> Result<chrono::DateTime<chrono::Utc>, PageError> {
    use chrono::TimeZone as _;
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        if let Some(local) = tz.from_local_datetime(&midnight).earliest() {
            return Ok(local.with_timezone(&chrono::Utc));
        }
    }
    Ok(super::usage::instant(name, text.trim())?)
}

/// The start of the hour after `at`.
fn next_hour(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let seconds = at.timestamp();
    chrono::DateTime::from_timestamp(seconds - seconds.rem_euclid(3600) + 3600, 0).unwrap_or(at)
}

/// Query parameters for the API's reads, empty values left out.
fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
