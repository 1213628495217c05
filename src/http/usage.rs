//! Usage and charges (docs/api.md "Usage and charges"): a subscription's or a customer's usage for
//! the current period or any window, and a customer's billing state.

use std::borrow::Cow;

use crate::http::{ApiPath as Path, ApiQuery as Query};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use chrono::{Offset, TimeZone};
use chrono_tz::Tz;

use crate::auth::{Principal, Role};
use crate::billing::period::PeriodError;
use crate::billing::period::{Anchor, Cadence, Interval};
use crate::catalog::TenantCatalog;
use crate::domain::{Aggregation, Meter};
use crate::domain::{Customer, Subscription};
use crate::error::ApiError;
use crate::ingest::parse::parse_instant;
use crate::readmodel::UsageReader;
use crate::readmodel::report::{ResolvedSubscription, UsageError, UsageReport, report};
use crate::readmodel::{account, weighted};
use crate::store::as_of_sql::late_events_of_meter;
use crate::store::series_sql::{SeriesQuery, WindowSize};
use crate::store::usage_sql::Scope;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(subscription_usage))
        .routes(routes!(customer_usage))
        .routes(routes!(billing_state))
        .routes(routes!(meter_query))
}

impl From<UsageError> for ApiError {
    fn from(err: UsageError) -> Self {
        match err {
            UsageError::Store(err) => err.into(),
            UsageError::Period(PeriodError::TooManyPeriods(n)) => ApiError::InvalidRequest(
                format!("the window spans more than {n} billing periods; ask for a shorter one"),
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct WindowParams {
    from: Option<String>,
    to: Option<String>,
    subscription: Option<String>,
    as_of: Option<String>,
}

/// The query of a read that takes only `as_of`.
#[derive(Deserialize)]
pub(crate) struct AsOfParams {
    pub(crate) as_of: Option<String>,
}

/// The moment of an `as_of` parameter: a past (or present) instant.
pub(crate) fn as_of(text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let at = parse_instant(text)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "as_of: '{text}' is not a timestamp; give an RFC 3339 timestamp \
                 (2026-11-21T10:00:00Z) or Unix seconds/milliseconds"
            ))
        })?;
    let now = Utc::now();
    if at > now {
        return Err(ApiError::InvalidRequest(format!(
            "as_of: {} is in the future (now is {}); give a moment up to now",
            at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(Some(at))
}

/// The reader of a request: the shared one (through memory), or one as of `at`.
pub(crate) fn reader_at(state: &AppState, at: Option<DateTime<Utc>>) -> Cow<'_, UsageReader> {
    match at {
        Some(at) => Cow::Owned(state.usage.as_of(at)),
        None => Cow::Borrowed(&state.usage),
    }
}

pub(crate) fn instant(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    parse_instant(text)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "{name}: an RFC 3339 timestamp or Unix seconds/milliseconds"
            ))
        })
}

/// The report for `params`' window, or the current period's (at `as_of`, if given).
async fn usage_for(
    state: &AppState,
    principal: &Principal,
    catalog: &TenantCatalog,
    subscription: &Subscription,
    params: &WindowParams,
    at: Option<DateTime<Utc>>,
) -> Result<UsageReport, ApiError> {
    let reader = reader_at(state, at);
    let (from, to) = match (&params.from, &params.to) {
        (Some(from), Some(to)) => (instant("from", from)?, instant("to", to)?),
        (None, None) => {
            return current_report(&reader, principal, catalog, subscription, at)
                .await?
                .ok_or_else(|| no_current_period(subscription));
        }
        _ => {
            return Err(ApiError::InvalidRequest(
                "from and to: give both, or neither for the current period".into(),
            ));
        }
    };
    if from >= to {
        return Err(ApiError::InvalidRequest("from: must be before to".into()));
    }
    let resolved = ResolvedSubscription::new(&principal.tenant, catalog, subscription)?;
    Ok(report(&reader, &resolved, from, to).await?)
}

/// The report for the subscription's billing period at `at` (default now); `None` when it has
/// none.
async fn current_report(
    reader: &UsageReader,
    principal: &Principal,
    catalog: &TenantCatalog,
    subscription: &Subscription,
    at: Option<DateTime<Utc>>,
) -> Result<Option<UsageReport>, ApiError> {
    Ok(account::current_report(
        reader,
        &principal.tenant,
        catalog,
        subscription,
        at.unwrap_or_else(Utc::now),
    )
    .await?)
}

fn no_current_period(subscription: &Subscription) -> ApiError {
    ApiError::Unprocessable {
        code: "no_active_subscription",
        message: format!(
            "subscription '{}' has no current billing period; pass from and to",
            subscription.external_id
        ),
    }
}

#[utoipa::path(get, path = "/v1/subscriptions/{key}/usage", tag = "usage",
    params(("key" = String, Path), ("from" = Option<String>, Query, description = "RFC 3339 or Unix s/ms; with `to`"), ("to" = Option<String>, Query), ("as_of" = Option<String>, Query, description = "RFC 3339 or Unix s/ms, not in the future: the figures with the events ingested up to then; adds `late_events`")),
    responses((status = 200, body = UsageReport), (status = 400), (status = 404, description = "subscription_not_found"),
              (status = 422, description = "no_active_subscription: no current period; pass from and to")))]
async fn subscription_usage(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    Query(params): Query<WindowParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let catalog = state.catalog.tenant(&principal.tenant);
    let missing = || {
        ApiError::not_found(
            "subscription_not_found",
            format!("no subscription '{key}' in this tenant"),
        )
    };
    let subscription = catalog.get::<Subscription>(&key).ok_or_else(missing)?;
    principal.may_read_subscription(&subscription.customer, missing)?;
    let at = as_of(params.as_of.as_deref())?;
    Ok(Json(
        usage_for(&state, &principal, &catalog, subscription, &params, at).await?,
    ))
}

/// The tenant's catalog, once `key` is known to be a customer this caller may read.
pub(crate) fn readable_customer(
    state: &AppState,
    principal: &Principal,
    key: &str,
) -> Result<std::sync::Arc<TenantCatalog>, ApiError> {
    principal.may_read_customer(key)?;
    let catalog = state.catalog.tenant(&principal.tenant);
    if catalog.get::<Customer>(key).is_none() {
        return Err(ApiError::not_found(
            "customer_not_found",
            format!("no customer '{key}' in this tenant"),
        ));
    }
    Ok(catalog)
}

#[utoipa::path(get, path = "/v1/customers/{key}/usage", tag = "usage",
    params(("key" = String, Path), ("subscription" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("as_of" = Option<String>, Query, description = "RFC 3339 or Unix s/ms, not in the future: the figures with the events ingested up to then; adds `late_events`")),
    responses((status = 200, body = UsageReport), (status = 404, description = "customer_not_found or subscription_not_found"),
              (status = 422, description = "no_active_subscription")))]
async fn customer_usage(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    Query(params): Query<WindowParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let catalog = readable_customer(&state, &principal, &key)?;
    let at = as_of(params.as_of.as_deref())?;
    let subscription = match &params.subscription {
        Some(id) => catalog
            .get::<Subscription>(id)
            .filter(|s| s.customer == key)
            .ok_or_else(|| {
                ApiError::not_found(
                    "subscription_not_found",
                    format!("subscription: customer '{key}' has no subscription '{id}'"),
                )
            })?,
        None => account::active_subscriptions(&catalog, &key, at.unwrap_or_else(Utc::now))
            .first()
            .map(|(s, _)| *s)
            .ok_or_else(|| ApiError::Unprocessable {
                code: "no_active_subscription",
                message: match at {
                    Some(_) => format!("customer '{key}' had no active subscription at as_of"),
                    None => format!("customer '{key}' has no active subscription"),
                },
            })?,
    };
    Ok(Json(
        usage_for(&state, &principal, &catalog, subscription, &params, at).await?,
    ))
}

#[utoipa::path(get, path = "/v1/customers/{key}/billing_state", tag = "usage", params(("key" = String, Path), ("as_of" = Option<String>, Query, description = "RFC 3339 or Unix s/ms, not in the future: the figures with the events ingested up to then; adds `late_events`")),
    responses((status = 200, description = "has_active_subscription, active_subscriptions, has_overage, and per usage price included_units, used_units and remaining_units; with as_of, as_of and late_events"),
              (status = 400, description = "invalid_request: as_of unparsable or in the future"), (status = 404, description = "customer_not_found")))]
async fn billing_state(
    State(state): State<AppState>,
    principal: Principal,
    Path(key): Path<String>,
    Query(params): Query<AsOfParams>,
) -> Result<Json<Value>, ApiError> {
    let catalog = readable_customer(&state, &principal, &key)?;
    let at = as_of(params.as_of.as_deref())?;
    let reader = reader_at(&state, at);
    let now = at.unwrap_or_else(Utc::now);
    let current =
        account::current_subscriptions(&reader, &principal.tenant, &catalog, &key, now).await?;
    let subscriptions: Vec<Value> = current
        .iter()
        .map(|c| json!({"subscription": c.subscription.external_id, "plan": c.report.plan, "status": c.status,
                        "current_period": {"from": c.report.from, "to": c.report.to}}))
        .collect();
    let usage: Vec<&account::UsageLine> = current.iter().flat_map(|c| &c.usage).collect();
    let mut body = json!({
        "customer": key,
        "has_active_subscription": !subscriptions.is_empty(),
        "active_subscriptions": subscriptions,
        "has_overage": usage.iter().any(|u| u.overage),
        "usage": usage,
    });
    if let Some(at) = at {
        let late: u64 = current.iter().filter_map(|c| c.report.late_events).sum();
        body["as_of"] = json!(at);
        body["late_events"] = json!(late);
    }
    Ok(Json(body))
}

/// Current-period figures of a subscription (at `at`, default now, as of then).
pub(crate) struct CurrentFigures {
    /// The estimated amount of the next invoice: what the period owes so far.
    pub(crate) amount: Decimal,
    /// Per usage price, the units used.
    pub(crate) usage: Vec<account::UsageLine>,
    /// With `at`: the period's events ingested after it.
    pub(crate) late_events: Option<u64>,
}

/// Current-period figures for `GET /v1/subscriptions/{id}`; `None` without a current period.
pub(crate) async fn current_figures(
    state: &AppState,
    principal: &Principal,
    catalog: &TenantCatalog,
    subscription: &Subscription,
    at: Option<DateTime<Utc>>,
) -> Result<Option<CurrentFigures>, ApiError> {
    let reader = reader_at(state, at);
    let report = current_report(&reader, principal, catalog, subscription, at).await?;
    Ok(report.map(|r| CurrentFigures {
        amount: r.total,
        usage: account::usage_lines(catalog, &r),
        late_events: r.late_events,
    }))
}

/// At most this many windows in one series.
const MAX_WINDOWS: i64 = 50_000;

/// At most this many keys in `group_by`, and values in one `filter[prop]`.
const MAX_GROUP_BY: usize = 8;
const MAX_FILTER_VALUES: usize = 100;

/// The query parameters of `GET /v1/meters/{slug}/query` besides `filter[prop]`.
const SERIES_PARAMS: [&str; 7] = [
    "from",
    "to",
    "window_size",
    "customer",
    "group_by",
    "timezone",
    "as_of",
];

/// The property of a `filter[prop]` parameter name.
fn filter_key(name: &str) -> Option<&str> {
    name.strip_prefix("filter[")?.strip_suffix(']')
}

/// Every parameter known and given once (each `filter[prop]` once per property), so that a
/// typo or a malformed filter is an error rather than an unfiltered answer.
fn check_query_params(params: &[(String, String)]) -> Result<(), ApiError> {
    for (i, (name, _)) in params.iter().enumerate() {
        let known = SERIES_PARAMS.contains(&name.as_str())
            || filter_key(name).is_some_and(|k| !k.is_empty());
        if !known {
            return Err(ApiError::InvalidRequest(format!(
                "{name}: not a parameter of this route (from, to, window_size, customer, group_by, \
                 timezone, as_of, filter[prop])"
            )));
        }
        if params[..i].iter().any(|(seen, _)| seen == name) {
            return Err(ApiError::InvalidRequest(format!(
                "{name}: given more than once; list values comma-separated in one"
            )));
        }
    }
    Ok(())
}

/// A comma-separated list without repeats; at most `cap` entries, each at most the length a
/// group value may have. Group keys are trimmed and empty ones dropped; filter values are kept
/// as written (an empty one matches events without the property).
fn distinct_list(field: &str, text: &str, cap: usize) -> Result<Vec<String>, ApiError> {
    let keys = field == "group_by";
    let mut items: Vec<String> = Vec::new();
    let split = text.split(',').map(|i| if keys { i.trim() } else { i });
    for item in split.filter(|i| !(keys && i.is_empty())) {
        if item.len() > crate::ingest::MAX_GROUP_VALUE_BYTES {
            return Err(ApiError::InvalidRequest(format!(
                "{field}: values are at most {} bytes",
                crate::ingest::MAX_GROUP_VALUE_BYTES
            )));
        }
        if !items.iter().any(|seen| seen == item) {
            items.push(item.to_owned());
        }
    }
    if items.len() > cap {
        return Err(ApiError::InvalidRequest(format!(
            "{field}: at most {cap} distinct entries"
        )));
    }
    Ok(items)
}

/// `GET /v1/meters/{slug}/query`: a meter's usage per window (minute, hour or day in a
/// timezone), per customer and group, with filters on group properties.
#[utoipa::path(get, path = "/v1/meters/{key}/query", tag = "usage",
    params(("key" = String, Path, description = "meter slug"), ("from" = String, Query), ("to" = String, Query),
           ("window_size" = Option<String>, Query, description = "minute, hour (default) or day"), ("customer" = Option<String>, Query),
           ("group_by" = Option<String>, Query, description = "comma-separated group properties"),
           ("timezone" = Option<String>, Query, description = "IANA name, default UTC"),
           ("as_of" = Option<String>, Query, description = "RFC 3339 or Unix s/ms, not in the future: the figures with the events ingested up to then; adds `late_events`"),
           ("filter[prop]" = Option<String>, Query, description = "comma-separated values of a group property")),
    responses((status = 200, description = "{meter, window_size, timezone, data: [{window_start, window_end, customer, group, value}]}; with as_of, as_of and late_events"),
              (status = 400), (status = 404, description = "meter_not_found")))]
async fn meter_query(
    State(state): State<AppState>,
    principal: Principal,
    Path(slug): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let series = meter_series(&state, &principal, &slug, &params).await?;
    let data: Vec<Value> = series
        .rows
        .iter()
        .map(|row| {
            json!({
                "window_start": row.window_start,
                "window_end": row.window_end,
                "customer": row.customer,
                "group": row.group,
                "value": row.value,
            })
        })
        .collect();
    let mut body = json!({"meter": series.meter, "window_size": series.window_size,
                          "timezone": series.timezone, "data": data});
    if let Some((at, late)) = series.as_of {
        body["as_of"] = json!(at);
        body["late_events"] = json!(late);
    }
    Ok(Json(body))
}

/// A meter's series as `GET /v1/meters/{slug}/query` answers it.
#[derive(Debug, Clone)]
pub(crate) struct MeterSeries {
    pub(crate) meter: String,
    pub(crate) window_size: WindowSize,
    pub(crate) timezone: String,
    /// The `group_by` keys, in the order asked.
    pub(crate) group_by: Vec<String>,
    pub(crate) rows: Vec<SeriesRow>,
    /// With `as_of`: that moment, and the window's events ingested after it.
    pub(crate) as_of: Option<(DateTime<Utc>, u64)>,
}

/// One window of one customer and group.
#[derive(Debug, Clone)]
pub(crate) struct SeriesRow {
    pub(crate) window_start: DateTime<Utc>,
    pub(crate) window_end: DateTime<Utc>,
    pub(crate) customer: String,
    pub(crate) group: serde_json::Map<String, Value>,
    pub(crate) value: Decimal,
}

/// The series of `GET /v1/meters/{slug}/query` for `params` (that route's query parameters),
/// as `principal` may see it: a customer's key sees its own customer only.
pub(crate) async fn meter_series(
    state: &AppState,
    principal: &Principal,
    slug: &str,
    params: &[(String, String)],
) -> Result<MeterSeries, ApiError> {
    let slug = slug.to_owned();
    check_query_params(params)?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let customer = match (&principal.role, param("customer")) {
        (Role::Customer, _) => principal.customer.as_deref(),
        (_, customer) => {
            principal.require(&[Role::Admin, Role::Read], "query meters")?;
            customer
        }
    };
    let catalog = state.catalog.tenant(&principal.tenant);
    let meter = catalog.get::<Meter>(&slug).ok_or_else(|| {
        ApiError::not_found(
            "meter_not_found",
            format!("no meter '{slug}' in this tenant"),
        )
    })?;
    let (Some(from), Some(to)) = (param("from"), param("to")) else {
        return Err(ApiError::InvalidRequest(
            "from and to: both are required".into(),
        ));
    };
    let (from, to) = (instant("from", from)?, instant("to", to)?);
    if from >= to {
        return Err(ApiError::InvalidRequest("from: must be before to".into()));
    }
    let at = as_of(param("as_of"))?;
    let window_size = match param("window_size").unwrap_or("hour") {
        "minute" => WindowSize::Minute,
        "hour" => WindowSize::Hour,
        "day" => WindowSize::Day,
        _ => {
            return Err(ApiError::InvalidRequest(
                "window_size: minute, hour or day".into(),
            ));
        }
    };
    let window_seconds = match window_size {
        WindowSize::Minute => 60,
        WindowSize::Hour => 3600,
        WindowSize::Day => 86_400,
    };
    if (to - from).num_seconds() / window_seconds > MAX_WINDOWS {
        return Err(ApiError::InvalidRequest(format!(
            "the range holds more than {MAX_WINDOWS} windows; use a larger window_size"
        )));
    }
    let timezone = param("timezone").unwrap_or("UTC");
    let tz: Tz = timezone.parse().map_err(|_| {
        ApiError::InvalidRequest(format!("timezone: '{timezone}' is not an IANA timezone"))
    })?;
    let known = catalog
        .meters_for(&meter.event_type)
        .iter()
        .find(|e| e.meter.slug == slug)
        .map(|e| e.group_keys.clone())
        .unwrap_or_default();
    let check_key = |field: &str, key: &str| {
        if known.iter().any(|k| k == key) {
            Ok(())
        } else {
            Err(ApiError::InvalidRequest(format!(
                "{field}: '{key}' is not a group property of meter '{slug}' (known: {})",
                known.join(", ")
            )))
        }
    };
    let group_by = distinct_list("group_by", param("group_by").unwrap_or(""), MAX_GROUP_BY)?;
    for key in &group_by {
        check_key("group_by", key)?;
    }
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in params {
        if let Some(key) = filter_key(name) {
            check_key(name, key)?;
            filters.push((
                key.to_owned(),
                distinct_list(name, value, MAX_FILTER_VALUES)?,
            ));
        }
    }
    // Days of the series are the day grain's UTC days only where the zone keeps UTC's offset.
    fn utc_throughout(tz: &chrono_tz::Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let days = (to - from).num_days();
        days <= 3_700
            && (0..=days + 1).all(|d| {
                let t = (from + chrono::TimeDelta::days(d)).min(to);
                offset(t).local_minus_utc() == 0
            })
    }
    let whole_hours = |t: DateTime<Utc>| {
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
            % 3600
            == 0
    };
    let query = SeriesQuery {
        scope: Scope {
            tenant: &principal.tenant,
            meter: &slug,
            customer,
            filters: &filters,
            as_of_ms: at.map(|at| at.timestamp_millis()),
        },
        aggregation: meter.aggregation,
        from_ms: from.timestamp_millis(),
        to_ms: to.timestamp_millis(),
        window_size,
        timezone,
        hours_align: whole_hours(from) && whole_hours(to),
        utc_days: utc_throughout(&tz, from, to),
        group_by: &group_by,
    };
    let points = match (meter.aggregation, meter.weight_unit) {
        // A weighted sum's windows are integrated from its samples (docs/concepts.md).
        (Aggregation::WeightedSum, Some(unit)) => {
            let windows = weighted::series_windows((from, to), window_size, tz)?;
            weighted::weighted_series(&state.usage, &query, &meter.group_by, unit, &windows).await?
        }
        _ => state.usage.series(&query).await.map_err(UsageError::from)?,
    };
    let late_events = match at {
        Some(_) => {
            let statement = late_events_of_meter(&query.scope, (query.from_ms, query.to_ms));
            let mut late = 0;
            for store in state
                .usage
                .stores_for(query.scope.tenant, query.scope.customer)
            {
                late += store
                    .late_events(&statement)
                    .await
                    .map_err(UsageError::from)?;
            }
            Some(late)
        }
        None => None,
    };
    let mut data = Vec::with_capacity(points.len());
    for point in points {
        let start = DateTime::from_timestamp(point.window, 0).unwrap_or(from);
        let end = match window_size {
            WindowSize::Minute | WindowSize::Hour => {
                start + chrono::TimeDelta::seconds(window_seconds)
            }
            WindowSize::Day => {
                let day = Cadence {
                    interval: Interval::Day,
                    count: 1,
                    anchor: Anchor::Calendar,
                    tz,
                    origin: start,
                };
                day.boundary(1).map_err(UsageError::from)?
            }
        };
        let group: serde_json::Map<String, Value> = group_by
            .iter()
            .cloned()
            .zip(point.usage.group.iter().map(|v| json!(v)))
            .collect();
        data.push(SeriesRow {
            window_start: start.max(from),
            window_end: end.min(to),
            customer: point.customer,
            group,
            value: point.usage.value,
        });
    }
    Ok(MeterSeries {
        meter: slug,
        window_size,
        timezone: timezone.to_owned(),
        group_by,
        rows: data,
        as_of: at.zip(late_events),
    })
}
