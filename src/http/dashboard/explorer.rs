//! `/dashboard/meters/{slug}`: the meter explorer. A form over the parameters of
//! `GET /v1/meters/{slug}/query` (window size, time zone, customer, `group_by`, filters), its
//! answer as a chart and a table, and the same answer as CSV.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};

use super::chart::{self, ChartSpec};
use super::view::{self, href, number};
use super::{PageError, Viewer};
use crate::domain::Meter;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::{MeterSeries, meter_series};

/// Rows shown in the page's table, at most (the CSV has them all).
const TABLE_ROWS: usize = 500;

/// The meter query's parameters from the page's: empty fields and the token left out, a
/// window of the last 24 hours by default.
fn query_params(page: &[(String, String)], tz: Tz) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = page
        .iter()
        .filter(|(k, v)| k != "token" && !v.trim().is_empty())
        .map(|(k, v)| (k.clone(), v.trim().to_owned()))
        .collect();
    let has = |params: &[(String, String)], name: &str| params.iter().any(|(k, _)| k == name);
    if !has(&params, "from") && !has(&params, "to") {
        let to = super::next_hour(Utc::now());
        params.push(("from".into(), (to - TimeDelta::hours(24)).to_rfc3339()));
        params.push(("to".into(), to.to_rfc3339()));
    }
    for (name, value) in params.iter_mut() {
        if (name == "from" || name == "to")
            && let Ok(at) = super::instant(name, value, tz)
        {
            *value = at.to_rfc3339();
        }
    }
    params
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> &'p str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(slug): Path<String>,
    Query(page): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let catalog = state.catalog.tenant(&viewer.tenant);
    let meter = catalog.get::<Meter>(&slug).ok_or_else(|| {
        PageError::from(ApiError::not_found(
            "meter_not_found",
            format!("no meter '{slug}' in this tenant"),
        ))
    })?;
    let tz = super::zone(Some(param(&page, "timezone")).filter(|t| !t.is_empty()))?;
    let params = query_params(&page, tz);
    let group_keys: Vec<String> = catalog
        .meters_for(&meter.event_type)
        .iter()
        .find(|e| e.meter.slug == slug)
        .map(|e| e.group_keys.to_vec())
        .unwrap_or_default();
    let answer = meter_series(&state, &viewer.principal(), &slug, &params).await;
    let (status, result) = match answer {
        Ok(series) => (
            StatusCode::OK,
            results(&viewer, meter, &series, &params, tz),
        ),
        Err(err @ (ApiError::InvalidRequest(_) | ApiError::Unprocessable { .. })) => (
            err.status(),
            html! { p.error role="alert" { (err.to_string()) } },
        ),
        Err(err) => return Err(err.into()),
    };
    let value = |name: &str| param(&params, name).to_owned();
    let body = html! {
        form.explorer method="get" action=(view::meter_path(&slug)) {
            label { "From " input type="text" name="from" value=(value("from")); }
            label { "To " input type="text" name="to" value=(value("to")); }
            label { "Window " select name="window_size" {
                @for size in ["minute", "hour", "day"] {
                    option value=(size) selected[param(&params, "window_size") == size || (size == "hour" && param(&params, "window_size").is_empty())] { (size) }
                }
            } }
            label { "Time zone " input type="text" name="timezone" value=(tz.name()); }
            @if viewer.customer.is_none() {
                label { "Customer " input type="text" name="customer" value=(value("customer")); }
            }
            label { "Group by " input type="text" name="group_by" placeholder=(group_keys.join(",")) value=(value("group_by")); }
            @for key in &group_keys {
                @let name = format!("filter[{key}]");
                label { "Filter " (key) " " input type="text" name=(name) value=(value(&name)); }
            }
            @if let Some(token) = &viewer.embedded_token { input type="hidden" name="token" value=(token); }
            button type="submit" { "Query" }
        }
        (result)
    };
    let title = format!("Meter {} ({})", meter.name, meter.slug);
    Ok((status, view::page(Some(&viewer), &title, body)).into_response())
}

fn results(
    viewer: &Viewer,
    meter: &Meter,
    series: &MeterSeries,
    params: &[(String, String)],
    tz: Tz,
) -> Markup {
    let by_customer = viewer.customer.is_none();
    let from = chrono::DateTime::parse_from_rfc3339(param(params, "from"))
        .map(|t| t.timestamp())
        .unwrap_or(0);
    let to = chrono::DateTime::parse_from_rfc3339(param(params, "to"))
        .map(|t| t.timestamp())
        .unwrap_or(from + 1);
    let title = format!("{} per {:?}", meter.name, series.window_size).to_lowercase();
    let spec = ChartSpec {
        title: &title,
        unit: &meter.name,
        tz,
        from,
        to,
    };
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let csv = href(
        viewer,
        &format!("{}/csv", view::meter_path(&meter.slug)),
        &pairs,
    );
    html! {
        (view::svg(chart::time_series(&spec, &chart::lines(series, by_customer))))
        p { a.download href=(csv) download { "Download CSV" } " · " (series.rows.len()) " rows" }
        table #series {
            thead { tr {
                th { "Window start" } th { "Window end" } th { "Customer" }
                @for key in &series.group_by { th { (key) } }
                th.num { "Value" }
            } }
            tbody {
                @for row in series.rows.iter().take(TABLE_ROWS) {
                    tr {
                        td { (view::local_time(row.window_start, tz)) }
                        td { (view::local_time(row.window_end, tz)) }
                        td { (row.customer) }
                        @for key in &series.group_by { td { (row.group.get(key).and_then(|v| v.as_str()).unwrap_or("")) } }
                        td.num data-value=(row.value) { (number(row.value)) }
                    }
                }
            }
        }
        @if series.rows.len() > TABLE_ROWS { p.note { "The first " (TABLE_ROWS) " rows; the CSV has them all." } }
    }
}

/// The meter query's answer as CSV: `window_start,window_end,customer,<group keys>,value`,
/// times in RFC 3339 UTC, values as the API writes them.
pub(super) async fn csv(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(slug): Path<String>,
    Query(page): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let tz = super::zone(Some(param(&page, "timezone")).filter(|t| !t.is_empty()))?;
    let params = query_params(&page, tz);
    let series = meter_series(&state, &viewer.principal(), &slug, &params).await?;
    let mut out = String::new();
    let mut header_row = vec![
        "window_start".to_owned(),
        "window_end".into(),
        "customer".into(),
    ];
    header_row.extend(series.group_by.iter().cloned());
    header_row.push("value".into());
    push_record(&mut out, &header_row);
    for row in &series.rows {
        let mut record = vec![
            row.window_start.to_rfc3339(),
            row.window_end.to_rfc3339(),
            row.customer.clone(),
        ];
        record.extend(series.group_by.iter().map(|k| {
            row.group
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        }));
        record.push(row.value.to_string());
        push_record(&mut out, &record);
    }
    let disposition = format!("attachment; filename=\"{}.csv\"", view::path_segment(&slug));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        out,
    )
        .into_response())
}

/// One CSV record (RFC 4180): fields with a comma, quote or line break are quoted; a field
/// starting with `=`, `+`, `-` or `@` that is not a number is prefixed with `'` so that a
/// spreadsheet does not run it as a formula.
fn push_record(out: &mut String, fields: &[String]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let formula = field.starts_with(['=', '+', '-', '@'])
            && field.parse::<rust_decimal::Decimal>().is_err();
        let field = if formula {
            format!("'{field}")
        } else {
            field.clone()
        };
        if field.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&field);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        let mut out = String::new();
        push_record(
            &mut out,
            &[
                "a,b".into(),
                "say \"hi\"".into(),
                "=SUM(A1)".into(),
                "-1.5".into(),
            ],
        );
        assert_eq!(out, "\"a,b\",\"say \"\"hi\"\"\",'=SUM(A1),-1.5\r\n");
    }
}
