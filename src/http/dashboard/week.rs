//! The overview's 7-day sections: events per hour (from the raw events) and each meter's
//! volume and top customers (the meter query's daily series over every customer). They cost
//! a read of every customer's week, so the overview keeps them a minute (`DashboardSettings`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};
use rust_decimal::Decimal;

use super::chart::{self, ChartSpec, Series};
use super::view::{self, href, number};
use super::{PageError, Viewer};
use crate::catalog::TenantCatalog;
use crate::domain::{Aggregation, Meter};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::usage::meter_series;

/// Which overview's 7-day sections: a tenant's, in a zone, up to an hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WeekKey {
    pub(super) tenant: String,
    pub(super) tz: String,
    /// The hour the week ends at, epoch seconds.
    pub(super) to: i64,
}

/// The overview's 7-day sections, rendered.
#[derive(Debug)]
pub(super) struct WeekSections {
    pub(super) events: String,
    pub(super) meters: String,
}

/// Events per hour and the meters' volumes over `[from, to)`, read at once.
pub(super) async fn week_sections(
    state: &AppState,
    viewer: &Viewer,
    catalog: &TenantCatalog,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
) -> Result<WeekSections, PageError> {
    let (hours, meters) = tokio::join!(
        state
            .store
            .events_per_hour(&viewer.tenant, from.timestamp(), to.timestamp()),
        meter_volumes(state, viewer, catalog, from, to, tz),
    );
    let (hours, meters) = (hours?, meters?);
    let events = Series {
        name: "events".into(),
        points: hours
            .iter()
            .map(|h| chart::Point {
                start: h.hour,
                end: h.hour + 3600,
                value: Decimal::from(h.events),
            })
            .collect(),
    };
    let spec = ChartSpec {
        title: "Events per hour, last 7 days",
        unit: "events",
        tz,
        from: from.timestamp(),
        to: to.timestamp(),
    };
    let total_events: u64 = hours.iter().map(|h| h.events).sum();
    let events = html! {
        section {
            h2 { "Events" }
            p { (number(Decimal::from(total_events))) " events in the last 7 days (event time), as of " (view::local_time(Utc::now(), tz)) "." }
            (view::svg(chart::time_series(&spec, &[events])))
        }
    };
    let meters = html! {
        section {
            h2 { "Meters, last 7 days" }
            (meters)
        }
    };
    Ok(WeekSections {
        events: events.into_string(),
        meters: meters.into_string(),
    })
}

/// Each meter's volume over `[from, to)` and its top customers, from the meter query.
async fn meter_volumes(
    state: &AppState,
    viewer: &Viewer,
    catalog: &TenantCatalog,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
) -> Result<Markup, PageError> {
    let params = super::params(&[
        ("from", &from.to_rfc3339()),
        ("to", &to.to_rfc3339()),
        ("window_size", "day"),
        ("timezone", tz.name()),
    ]);
    // One read per meter, all at once.
    let mut reads = tokio::task::JoinSet::new();
    for slug in catalog.meters.keys() {
        let (state, principal, slug, params) = (
            state.clone(),
            viewer.principal(),
            slug.clone(),
            params.clone(),
        );
        reads.spawn(async move {
            let series = meter_series(&state, &principal, &slug, &params).await;
            (slug, series)
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(answer) = reads.join_next().await {
        let (slug, series) =
            answer.map_err(|e| ApiError::Internal(format!("a meter read failed: {e}")))?;
        answers.insert(slug, series?);
    }
    let mut rows = Vec::new();
    for meter in catalog.meters.values() {
        let Some(series) = answers.get(&meter.slug) else {
            continue;
        };
        // Counts, sums and integrals over time add up across days.
        let additive = matches!(
            meter.aggregation,
            Aggregation::Count | Aggregation::Sum | Aggregation::WeightedSum
        );
        let mut per_customer: BTreeMap<&str, Decimal> = BTreeMap::new();
        for row in &series.rows {
            let value = per_customer.entry(row.customer.as_str()).or_default();
            *value = if additive {
                *value + row.value
            } else {
                (*value).max(row.value)
            };
        }
        let volume = if additive {
            per_customer.values().copied().sum::<Decimal>()
        } else {
            per_customer.values().copied().max().unwrap_or_default()
        };
        let mut top: Vec<(&str, Decimal)> = per_customer.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(5);
        rows.push(html! {
            tr data-meter=(meter.slug) {
                td { a href=(href(viewer, &view::meter_path(&meter.slug), &[])) { (meter.name) } br; small { (meter.slug) } }
                td { (aggregation_label(meter)) }
                td.num data-volume=(volume) { (number(volume)) }
                td {
                    @for (customer, value) in &top {
                        a href=(href(viewer, &view::customer_path(customer), &[])) { (customer) }
                        " " (number(*value)) br;
                    }
                }
            }
        });
    }
    Ok(html! {
        table #meters {
            thead { tr { th { "Meter" } th { "Aggregation" } th.num { "Volume" } th { "Top customers" } } }
            tbody { @for row in rows { (row) } }
        }
        p.note { "Volume: the sum over the days for count, sum and weighted-sum meters, the largest day otherwise." }
    })
}

fn aggregation_label(meter: &Meter) -> &'static str {
    match meter.aggregation {
        Aggregation::Count => "count",
        Aggregation::Sum => "sum",
        Aggregation::Max => "max",
        Aggregation::Min => "min",
        Aggregation::UniqueCount => "unique count",
        Aggregation::Latest => "latest",
        Aggregation::WeightedSum => "weighted sum",
    }
}
