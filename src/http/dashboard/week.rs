//! The overview's 7-day sections: events per hour (from the raw events) and each meter's
//! volume and top customers, over the week of the page's zone: today and the six days before,
//! from that midnight to the next hour. The meters are read in one statement over every
//! customer (`store::dashboard::week_volumes_statement`; one per shard in cluster mode): whole
//! sealed UTC days from the day grain, the other hours from the hour rollup, folded per
//! customer in the store. The overview keeps a week it read and reads it again in the
//! background once it is a minute old or a new hour began, so that only the first render of a
//! tenant and zone waits for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveTime, Offset as _, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};
use rust_decimal::Decimal;

use super::chart::{self, ChartSpec, Series};
use super::view::{self, href, number};
use super::{PageError, Viewer};
use crate::catalog::TenantCatalog;
use crate::domain::{Aggregation, Meter};
use crate::http::AppState;
use crate::http::usage::meter_series;
use crate::readmodel::window;
use crate::store::dashboard::{
    CustomerVolume, HourlyEvents, WeekMeter, adds_up_over_days, week_volumes_statement,
};

/// A week is read again once it is this old (or a new hour began).
const FRESH_FOR: TimeDelta = TimeDelta::seconds(60);
/// Customers listed as a meter's top ones.
const TOP: usize = 5;

/// Which overview's week: a tenant's, in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WeekKey {
    pub(super) tenant: Arc<str>,
    pub(super) tz: Tz,
}

/// The overview's week as read: the figures its sections show (rendered for each viewer, whose
/// links may carry its own token).
#[derive(Debug, Clone)]
pub(super) struct Week {
    pub(super) from: DateTime<Utc>,
    pub(super) to: DateTime<Utc>,
    /// When it was read.
    pub(super) read_at: DateTime<Utc>,
    hours: Vec<HourlyEvents>,
    meters: Vec<MeterVolume>,
}

/// One meter's volume over the week and its top customers.
#[derive(Debug, Clone, PartialEq)]
struct MeterVolume {
    slug: String,
    volume: Decimal,
    top: Vec<CustomerVolume>,
}

impl Week {
    /// Whether it is to be read again at `now`: it is over a minute old, or ends before the
    /// next hour.
    pub(super) fn stale(&self, now: DateTime<Utc>) -> bool {
        now - self.read_at >= FRESH_FOR || self.to < super::next_hour(now)
    }
}

/// The week of `tz` at `now`: from the midnight six days before today's to the next hour.
pub(super) fn bounds(now: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let to = super::next_hour(now);
    let first_day = now.with_timezone(&tz).date_naive() - TimeDelta::days(6);
    // Midnight, or the first instant of the day where a change of offset skips midnight.
    let from = (0..=24)
        .find_map(|hour| {
            let local = first_day.and_time(NaiveTime::MIN) + TimeDelta::hours(hour);
            tz.from_local_datetime(&local).earliest()
        })
        .map_or(to - TimeDelta::days(7), |at| at.with_timezone(&Utc));
    (from, to)
}

/// Reads the tenant's week in `tz` at `now`: events per hour and the meters' volumes, at once.
pub(super) async fn read(
    state: &AppState,
    tenant: &Arc<str>,
    catalog: &TenantCatalog,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<Week, PageError> {
    let (from, to) = bounds(now, tz);
    let started = std::time::Instant::now();
    let (hours, meters) = tokio::join!(
        state
            .store
            .events_per_hour(tenant, from.timestamp(), to.timestamp()),
        meter_volumes(state, tenant, catalog, (from, to), tz),
    );
    let (hours, meters) = (hours?, meters?);
    tracing::debug!(
        tenant = %tenant,
        tz = tz.name(),
        read_ms = started.elapsed().as_millis() as u64,
        "overview week read"
    );
    Ok(Week {
        from,
        to,
        read_at: now,
        hours,
        meters,
    })
}

/// The week's two sections for `viewer`: events per hour, and the meters.
pub(super) fn sections(
    viewer: &Viewer,
    catalog: &TenantCatalog,
    week: &Week,
    tz: Tz,
) -> (Markup, Markup) {
    let events = Series {
        name: "events".into(),
        points: week
            .hours
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
        from: week.from.timestamp(),
        to: week.to.timestamp(),
    };
    let total_events: u64 = week.hours.iter().map(|h| h.events).sum();
    let events = html! {
        section #events data-from=(week.from.timestamp()) data-to=(week.to.timestamp()) data-events=(total_events) {
            h2 { "Events" }
            p {
                (number(Decimal::from(total_events))) " events since " (view::local_time(week.from, tz))
                " (today and the 6 days before, event time), as of " (view::local_time(week.read_at, tz)) "."
            }
            (view::svg(chart::time_series(&spec, &[events])))
        }
    };
    let meters = html! {
        section {
            h2 { "Meters, last 7 days" }
            table #meters data-from=(week.from.timestamp()) data-to=(week.to.timestamp()) {
                thead { tr { th { "Meter" } th { "Aggregation" } th.num { "Volume" } th { "Top customers" } } }
                tbody {
                    @for (meter, volume) in week.meters.iter().filter_map(|v| catalog.meters.get(&v.slug).map(|m| (m, v))) {
                        tr data-meter=(meter.slug) {
                            td { a href=(href(viewer, &view::meter_path(&meter.slug), &[])) { (meter.name) } br; small { (meter.slug) } }
                            td { (aggregation_label(meter)) }
                            td.num data-volume=(volume.volume) { (number(volume.volume)) }
                            td {
                                @for top in &volume.top {
                                    a href=(href(viewer, &view::customer_path(&top.customer), &[])) data-customer=(top.customer) data-value=(top.value) { (top.customer) }
                                    " " (number(top.value)) br;
                                }
                            }
                        }
                    }
                }
            }
            p.note { "Volume: the sum over the days for count, sum and weighted-sum meters, the largest day otherwise." }
        }
    };
    (events, meters)
}

/// Whether a meter's windows are integrated from its samples (a weighted sum with a unit):
/// read through the meter query, not the week's statement.
fn integrated(meter: &Meter) -> bool {
    meter.aggregation == Aggregation::WeightedSum && meter.weight_unit.is_some()
}

/// Whether every instant of `[from, to)` is at UTC's offset in `tz`, so that its days are the
/// day grain's UTC days (as the meter query decides).
fn utc_throughout(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let days = (to - from).num_days();
    (0..=days + 1).all(|d| {
        let t = (from + TimeDelta::days(d)).min(to);
        offset(t).local_minus_utc() == 0
    })
}

/// Whether `tz` is a whole number of hours from UTC at `t` (as the meter query decides).
fn whole_hours(tz: Tz, t: DateTime<Utc>) -> bool {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
        % 3600
        == 0
}

/// Each meter's volume over `[from, to)` and its top customers: the meter query's daily
/// series over every customer, folded per customer.
async fn meter_volumes(
    state: &AppState,
    tenant: &Arc<str>,
    catalog: &TenantCatalog,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    tz: Tz,
) -> Result<Vec<MeterVolume>, PageError> {
    let bounds_ms = (from.timestamp_millis(), to.timestamp_millis());
    let flags = (
        whole_hours(tz, from) && whole_hours(tz, to),
        utc_throughout(tz, from, to),
    );
    let mut volumes: Vec<CustomerVolume> = Vec::new();
    for meter in catalog.meters.values().filter(|m| integrated(m)) {
        volumes.extend(integrated_volumes(state, tenant, &meter.slug, (from, to), tz).await?);
    }
    // In cluster mode from every shard at once (one on one server), each with its own day
    // grain: a customer's rows are on one shard only, so each customer's volume is whole.
    let shards = state.store.shards();
    let reads = shards.iter().map(|shard| async move {
        let mut read = Vec::new();
        for meter in catalog.meters.values().filter(|m| !integrated(m)) {
            let parts =
                window::parts_of(shard, (tenant, &meter.slug, None), bounds_ms, flags).await?;
            read.push(WeekMeter {
                slug: &meter.slug,
                aggregation: meter.aggregation,
                parts,
            });
        }
        let statement = week_volumes_statement(tenant, tz.name(), &read);
        shard.week_volumes(&statement).await
    });
    for read in futures_util::future::join_all(reads).await {
        volumes.extend(read?);
    }
    let mut per_meter: BTreeMap<String, Vec<CustomerVolume>> = BTreeMap::new();
    for volume in volumes {
        per_meter
            .entry(volume.meter.clone())
            .or_default()
            .push(volume);
    }
    Ok(catalog
        .meters
        .values()
        .map(|meter| {
            let customers = per_meter.remove(&meter.slug).unwrap_or_default();
            fold(meter, customers)
        })
        .collect())
}

/// A meter's volume (the sum of its customers' for values that add up, the largest
/// otherwise) and its top customers, largest first, ties by customer.
fn fold(meter: &Meter, mut customers: Vec<CustomerVolume>) -> MeterVolume {
    let values = customers.iter().map(|c| c.value);
    let volume = if adds_up_over_days(meter.aggregation) {
        values.sum()
    } else {
        values.max().unwrap_or_default()
    };
    customers.sort_by(|a, b| b.value.cmp(&a.value).then(a.customer.cmp(&b.customer)));
    customers.truncate(TOP);
    MeterVolume {
        slug: meter.slug.clone(),
        volume,
        top: customers,
    }
}

/// A weighted sum's volumes per customer: its daily integrals through the meter query, added.
async fn integrated_volumes(
    state: &AppState,
    tenant: &Arc<str>,
    slug: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    tz: Tz,
) -> Result<Vec<CustomerVolume>, PageError> {
    let params = super::params(&[
        ("from", &from.to_rfc3339()),
        ("to", &to.to_rfc3339()),
        ("window_size", "day"),
        ("timezone", tz.name()),
    ]);
    let viewer = Viewer {
        tenant: tenant.clone(),
        customer: None,
        embedded_token: None,
    };
    let series = meter_series(state, &viewer.principal(), slug, &params).await?;
    let mut per_customer: BTreeMap<String, Decimal> = BTreeMap::new();
    for row in series.rows {
        *per_customer.entry(row.customer).or_default() += row.value;
    }
    Ok(per_customer
        .into_iter()
        .map(|(customer, value)| CustomerVolume {
            meter: slug.to_owned(),
            customer,
            value,
        })
        .collect())
}

/// The overview's week for a tenant and zone: the one kept if still fresh; a stale one while
/// it is read again in the background (once at a time); read now only when none is kept.
pub(super) async fn kept_or_read(
    state: &AppState,
    tenant: &Arc<str>,
    catalog: &Arc<TenantCatalog>,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<Arc<Week>, PageError> {
    let key = WeekKey {
        tenant: tenant.clone(),
        tz,
    };
    let settings = &state.dashboard;
    if let Some(week) = settings.week.get(&key) {
        let refreshing = week
            .stale(now)
            .then(|| settings.start_refresh(&key))
            .flatten();
        if let Some(refreshing) = refreshing {
            let (state, tenant, catalog) = (state.clone(), tenant.clone(), catalog.clone());
            tokio::spawn(async move {
                match read(&state, &tenant, &catalog, tz, Utc::now()).await {
                    Ok(week) => state.dashboard.week.insert(key, Arc::new(week)),
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, error = ?e, "overview week not read again");
                    }
                }
                drop(refreshing);
            });
        }
        return Ok(week);
    }
    let week = Arc::new(read(state, tenant, catalog, tz, now).await?);
    settings.week.insert(key, week.clone());
    Ok(week)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_week_runs_from_midnight_six_days_ago_in_the_zone_to_the_next_hour() {
        let now = at("2026-12-02T07:29:41Z");
        assert_eq!(
            bounds(now, chrono_tz::UTC),
            (at("2026-11-26T00:00:00Z"), at("2026-12-02T08:00:00Z"))
        );
        // Paris is at UTC+1 in winter: its midnight is 23:00 UTC the day before.
        assert_eq!(
            bounds(now, chrono_tz::Europe::Paris),
            (at("2026-11-25T23:00:00Z"), at("2026-12-02T08:00:00Z"))
        );
        // Already the 2nd in Tokyo (UTC+9) at 16:29.
        assert_eq!(
            bounds(now, chrono_tz::Asia::Tokyo).0,
            at("2026-11-25T15:00:00Z")
        );
    }

    #[test]
    fn a_week_skipping_its_first_midnight_starts_at_the_first_hour_of_that_day() {
        // Santiago moved its clocks from 00:00 to 01:00 on 2026-09-06.
        let now = at("2026-09-12T12:00:00Z");
        let (from, _) = bounds(now, chrono_tz::America::Santiago);
        assert_eq!(from, at("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn a_week_is_read_again_after_a_minute_or_once_a_new_hour_began() {
        let now = at("2026-12-02T07:10:00Z");
        let (from, to) = bounds(now, chrono_tz::UTC);
        let week = Week {
            from,
            to,
            read_at: now,
            hours: vec![],
            meters: vec![],
        };
        assert!(!week.stale(now + TimeDelta::seconds(59)));
        assert!(week.stale(now + TimeDelta::seconds(60)));
        let late = Week {
            read_at: at("2026-12-02T07:59:50Z"),
            ..week
        };
        assert!(late.stale(at("2026-12-02T08:00:01Z")));
    }

    #[test]
    fn a_meters_volume_adds_up_counts_and_takes_the_largest_otherwise() {
        let meter = |aggregation| {
            Meter {
            aggregation,
            ..serde_json::from_value(serde_json::json!({"slug": "m", "name": "M", "event_type": "t", "aggregation": "count"})).unwrap()
        }
        };
        let customers = |values: &[(&str, i64)]| {
            values
                .iter()
                .map(|(customer, value)| CustomerVolume {
                    meter: "m".into(),
                    customer: (*customer).into(),
                    value: Decimal::from(*value),
                })
                .collect::<Vec<_>>()
        };
        let many = [("a", 3), ("b", 9), ("c", 3), ("d", 1), ("e", 7), ("f", 2)];
        let count = fold(&meter(Aggregation::Count), customers(&many));
        assert_eq!(count.volume, Decimal::from(25));
        let top: Vec<&str> = count.top.iter().map(|c| c.customer.as_str()).collect();
        assert_eq!(
            top,
            ["b", "e", "a", "c", "f"],
            "largest first, ties by customer"
        );
        let max = fold(&meter(Aggregation::Max), customers(&many));
        assert_eq!(max.volume, Decimal::from(9));
        assert_eq!(
            fold(&meter(Aggregation::Latest), vec![]).volume,
            Decimal::ZERO
        );
    }
}
