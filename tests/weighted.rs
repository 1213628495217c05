//! `weighted_sum` meters end to end against a real ClickHouse: the value of each event holds
//! until the next of its customer and group, and a window's quantity is the integral of it.
//! Every expected figure is computed here from what was sent (`integral`), window by window.

mod common;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use common::{TestApp, d, dec, get_json as get, post_ok as post, spawn_app, spawn_backfill_app};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const HOUR_MS: i64 = 3_600_000;

/// One event of meter `storage`: `gb` held from `at` in `region`.
#[derive(Clone, Copy)]
struct Held {
    at: DateTime<Utc>,
    region: &'static str,
    gb: &'static str,
}

/// The integral over `[from, to)` of the values of `region` (all regions: `None`), in GB ×
/// `unit_ms`: each value from its event until the next event of its region, the last one
/// before `from` held from `from`.
fn integral(
    sent: &[Held],
    region: Option<&str>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    unit_ms: i64,
) -> Decimal {
    let mut value_ms = Decimal::ZERO;
    let regions: Vec<&str> = sent.iter().map(|h| h.region).collect();
    let mut seen: Vec<&str> = Vec::new();
    for r in regions {
        if seen.contains(&r) || region.is_some_and(|want| want != r) {
            continue;
        }
        seen.push(r);
        let mut of_region: Vec<&Held> = sent.iter().filter(|h| h.region == r).collect();
        of_region.sort_by_key(|h| h.at);
        for (i, held) in of_region.iter().enumerate() {
            let until = of_region.get(i + 1).map_or(to, |next| next.at.min(to));
            let since = held.at.max(from);
            if until > since {
                value_ms += d(held.gb) * Decimal::from((until - since).num_milliseconds());
            }
        }
    }
    (value_ms / Decimal::from(unit_ms)).normalize()
}

async fn send(app: &TestApp, customer: &str, sent: &[Held]) {
    let events: Vec<Value> = sent
        .iter()
        .enumerate()
        .map(|(i, h)| {
            json!({"id": format!("{customer}-{i}-{}", h.at.timestamp_millis()), "customer": customer,
                   "type": "storage", "timestamp": h.at.timestamp_millis(),
                   "properties": {"gb": h.gb, "region": h.region}})
        })
        .collect();
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
}

fn q(window: (DateTime<Utc>, DateTime<Utc>)) -> String {
    format!(
        "from={}&to={}",
        window.0.timestamp_millis(),
        window.1.timestamp_millis()
    )
}

fn group_quantity(charge: &Value, region: &str) -> Decimal {
    charge["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"]["region"] == region)
        .map_or(Decimal::ZERO, |g| dec(&g["quantity"]))
}

fn charge<'a>(report: &'a Value, price: &str) -> &'a Value {
    report["charges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["price"] == price)
        .unwrap_or_else(|| panic!("no charge {price}: {report}"))
}

/// Plan `store` (monthly, USD): 0.10 per GB-unit per region (`by_region`), and `other`.
fn store_plan(other: Value) -> Value {
    json!({"code": "store", "name": "Store", "currency": "USD", "interval": "month",
           "prices": [{"code": "by_region", "type": "usage", "meter": "storage", "model": "per_unit",
                       "unit_amount": "0.10", "group_by": ["region"]}, other]})
}

async fn storage_catalog(app: &TestApp, unit: &str, customer: Value, plan: Value) {
    post(
        app,
        "/v1/meters",
        json!({"slug": "storage", "name": "Storage", "event_type": "storage",
               "aggregation": "weighted_sum", "value_property": "gb", "weight_unit": unit,
               "group_by": ["region"]}),
    )
    .await;
    post(app, "/v1/plans", plan).await;
    post(app, "/v1/customers", customer).await;
}

#[tokio::test]
async fn a_window_bills_the_value_in_force_cut_at_its_edges_per_group() {
    let app = spawn_app("weighted_windows").await;
    let t0 = (Utc::now() - TimeDelta::days(3))
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    storage_catalog(
        &app,
        "hour",
        json!({"external_id": "c1"}),
        store_plan(
            json!({"code": "total", "type": "usage", "meter": "storage", "model": "graduated",
                          "tiers": [{"up_to": "10", "unit_amount": "0", "flat_amount": "0"},
                                    {"up_to": null, "unit_amount": "0.02", "flat_amount": "0"}]}),
        ),
    )
    .await;
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_1", "customer": "c1", "plan": "store",
        "start_date": (t0 - TimeDelta::days(2)).to_rfc3339()}),
    )
    .await;
    let at = |ms: i64| t0 + TimeDelta::milliseconds(ms);
    let sent = [
        Held {
            at: at(-2 * HOUR_MS),
            region: "eu",
            gb: "10",
        },
        Held {
            at: at(HOUR_MS / 2),
            region: "us",
            gb: "6",
        },
        Held {
            at: at(HOUR_MS + HOUR_MS / 4),
            region: "eu",
            gb: "4",
        },
        Held {
            at: at(2 * HOUR_MS + 40 * 60_000 + 12_345),
            region: "eu",
            gb: "2.5",
        },
    ];
    send(&app, "c1", &sent).await;
    send(
        &app,
        "c2",
        &[Held {
            at: at(0),
            region: "eu",
            gb: "1000",
        }],
    )
    .await;

    // A window cutting values mid-hour, to the millisecond; then one with no event in it.
    for window in [
        (at(HOUR_MS + 450_000), at(2 * HOUR_MS + 50 * 60_000 + 1)),
        (at(5 * HOUR_MS), at(7 * HOUR_MS)),
    ] {
        let (status, report) = get(
            &app,
            &format!("/v1/subscriptions/sub_1/usage?{}", q(window)),
            "read_key_a",
        )
        .await;
        assert_eq!(status, 200, "{report}");
        let by_region = charge(&report, "by_region");
        for region in ["eu", "us"] {
            let expected = integral(&sent, Some(region), window, HOUR_MS);
            assert_eq!(
                group_quantity(by_region, region),
                expected,
                "{region}: {report}"
            );
        }
        // A price by group: its quantity is its groups' (each integrated and divided once).
        let by_groups: Decimal = ["eu", "us"]
            .iter()
            .map(|r| integral(&sent, Some(r), window, HOUR_MS))
            .sum();
        assert_eq!(dec(&by_region["quantity"]), by_groups, "{report}");
        assert_eq!(dec(&by_region["amount"]), by_groups * d("0.10"), "{report}");
        let all = integral(&sent, None, window, HOUR_MS);
        let total = charge(&report, "total");
        assert_eq!(dec(&total["quantity"]), all, "{report}");
        let billable = (all - d("10")).max(Decimal::ZERO);
        assert_eq!(dec(&total["amount"]), billable * d("0.02"), "{report}");
    }
    // The window without events: 2.5 GB in eu and 6 in us held for 2 hours.
    let quiet = (at(5 * HOUR_MS), at(7 * HOUR_MS));
    assert_eq!(integral(&sent, None, quiet, HOUR_MS), d("17"));

    // The series: each hour's integral per region, for one customer.
    let span = (at(0), at(4 * HOUR_MS));
    let (status, series) = get(
        &app,
        &format!(
            "/v1/meters/storage/query?{}&window_size=hour&group_by=region&customer=c1",
            q(span)
        ),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{series}");
    let mut expected = Vec::new();
    for h in 0..4 {
        let window = (at(h * HOUR_MS), at((h + 1) * HOUR_MS));
        for region in ["eu", "us"] {
            // Both regions hold a value from the first hour on (us from 00:30).
            let value = integral(&sent, Some(region), window, HOUR_MS);
            expected.push((window.0.timestamp(), region.to_owned(), value));
        }
    }
    expected.sort();
    let mut got: Vec<(i64, String, Decimal)> = series["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                DateTime::parse_from_rfc3339(p["window_start"].as_str().unwrap())
                    .unwrap()
                    .timestamp(),
                p["group"]["region"].as_str().unwrap().to_owned(),
                dec(&p["value"]),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, expected, "{series}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_plan_change_mid_period_rates_each_part_of_the_held_value_with_its_plan() {
    let app = spawn_app("weighted_change").await;
    // Events keep milliseconds.
    let start =
        DateTime::from_timestamp_millis((Utc::now() - TimeDelta::days(2)).timestamp_millis())
            .unwrap();
    storage_catalog(
        &app,
        "minute",
        json!({"external_id": "c1"}),
        json!({"code": "a", "name": "A", "currency": "USD", "interval": "month",
               "prices": [{"code": "gbm", "type": "usage", "meter": "storage", "model": "per_unit",
                           "unit_amount": "0.001"}]}),
    )
    .await;
    post(&app, "/v1/plans", json!({"code": "b", "name": "B", "currency": "USD", "interval": "month",
        "prices": [{"code": "gbm", "type": "usage", "meter": "storage", "model": "per_unit", "unit_amount": "0.0005"}]})).await;
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_1", "customer": "c1", "plan": "a",
        "start_date": start.to_rfc3339()}),
    )
    .await;
    let sent = [
        Held {
            at: start + TimeDelta::hours(1),
            region: "eu",
            gb: "10",
        },
        Held {
            at: start + TimeDelta::hours(20),
            region: "eu",
            gb: "3",
        },
    ];
    send(&app, "c1", &sent).await;
    post(
        &app,
        "/v1/subscriptions/sub_1/change_plan",
        json!({"plan": "b", "at": "now"}),
    )
    .await;
    let to = Utc::now() + TimeDelta::hours(1);
    let (status, report) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?{}", q((start, to))),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let charges = report["charges"].as_array().unwrap();
    assert_eq!(charges.len(), 2, "{report}");
    // Windows are read to the millisecond.
    let instant = |v: &Value| {
        let t = DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
    };
    for (c, (plan, unit_amount)) in charges.iter().zip([("a", "0.001"), ("b", "0.0005")]) {
        assert_eq!(c["plan"], plan, "{report}");
        let part = (instant(&c["from"]), instant(&c["to"]));
        let expected = integral(&sent, None, part, 60_000);
        assert_eq!(dec(&c["quantity"]), expected, "{plan}: {report}");
        assert_eq!(
            dec(&c["amount"]),
            expected * d(unit_amount),
            "{plan}: {report}"
        );
    }
    assert_eq!(instant(&charges[0]["to"]), instant(&charges[1]["from"]));
    app.shutdown().await;
}

/// Day units are 24 hours of elapsed time: a value held through a 25-hour local day (the end
/// of summer time) counts 25/24 days, through a 23-hour day 23/24, in the usage report and in
/// the series of local days. Dates come from the clock.
#[tokio::test]
async fn day_units_are_elapsed_time_across_a_dst_change() {
    let app = spawn_backfill_app("weighted_dst").await;
    storage_catalog(
        &app,
        "day",
        json!({"external_id": "paris", "timezone": "Europe/Paris"}),
        json!({"code": "daily", "name": "Daily", "currency": "EUR", "interval": "day",
               "prices": [{"code": "gbd", "type": "usage", "meter": "storage", "model": "per_unit",
                           "unit_amount": "1"}]}),
    )
    .await;
    let (_, autumn) = common::latest_paris_day_of(25);
    let (_, spring) = common::latest_paris_day_of(23);
    let start = autumn.min(spring) - TimeDelta::days(3);
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_p", "customer": "paris", "plan": "daily",
        "start_date": start.to_rfc3339(), "billing_anchor": "calendar"}),
    )
    .await;
    for (midnight, hours, held) in [(autumn, 25, "48"), (spring, 23, "24")] {
        let sent = [Held {
            at: midnight - TimeDelta::days(1),
            region: "eu",
            gb: held,
        }];
        send(&app, "paris", &sent).await;
        let day = (midnight, midnight + TimeDelta::hours(hours));
        let (status, report) = get(
            &app,
            &format!("/v1/subscriptions/sub_p/usage?{}", q(day)),
            "read_key_a",
        )
        .await;
        assert_eq!(status, 200, "{report}");
        let expected = integral(&sent, None, day, 86_400_000);
        assert_eq!(expected, d(held) * Decimal::from(hours) / Decimal::from(24));
        assert_eq!(
            dec(&charge(&report, "gbd")["quantity"]),
            expected,
            "{report}"
        );
        let (status, series) = get(
            &app,
            &format!(
                "/v1/meters/storage/query?{}&window_size=day&timezone=Europe/Paris&customer=paris",
                q(day)
            ),
            "read_key_a",
        )
        .await;
        assert_eq!(status, 200, "{series}");
        let data = series["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{series}");
        assert_eq!(dec(&data[0]["value"]), expected, "{series}");
        // Remove this day's value before the next season's: a value of 0 from the day's end.
        send(
            &app,
            "paris",
            &[Held {
                at: day.1,
                region: "eu",
                gb: "0",
            }],
        )
        .await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn weighted_meters_are_validated_field_by_field() {
    let app = spawn_app("weighted_catalog").await;
    for (meter, message) in [
        (
            json!({"slug": "s", "name": "S", "event_type": "e", "aggregation": "weighted_sum",
                   "value_property": "gb"}),
            "weight_unit: required for aggregation weighted_sum",
        ),
        (
            json!({"slug": "s", "name": "S", "event_type": "e", "aggregation": "weighted_sum",
                   "weight_unit": "hour"}),
            "value_property: required for aggregation weighted_sum",
        ),
        (
            json!({"slug": "s", "name": "S", "event_type": "e", "aggregation": "max",
                   "value_property": "gb", "weight_unit": "hour"}),
            "weight_unit: only for aggregation weighted_sum",
        ),
    ] {
        let (status, body) = app
            .post_raw(
                "/v1/meters",
                "admin_key_a",
                "application/json",
                meter.to_string(),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{message}: {body}"
        );
    }
    app.shutdown().await;
}

/// As of a moment, the value carried into a window is the last one ingested by then: an event
/// that arrives later and changes it is told apart (`late_events` counts those inside the
/// window only).
#[tokio::test]
async fn as_of_a_moment_the_value_carried_in_is_the_one_ingested_by_then() {
    let app = spawn_app("weighted_as_of").await;
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    storage_catalog(
        &app,
        "hour",
        json!({"external_id": "c1"}),
        json!({"code": "store", "name": "Store", "currency": "USD", "interval": "month",
               "prices": [{"code": "gbh", "type": "usage", "meter": "storage", "model": "per_unit",
                           "unit_amount": "0.10"}]}),
    )
    .await;
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_1", "customer": "c1", "plan": "store",
        "start_date": (now - TimeDelta::days(1)).to_rfc3339()}),
    )
    .await;
    let first = [Held {
        at: now - TimeDelta::hours(3),
        region: "eu",
        gb: "10",
    }];
    send(&app, "c1", &first).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let as_of = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let late = [Held {
        at: now - TimeDelta::hours(2),
        region: "eu",
        gb: "20",
    }];
    send(&app, "c1", &late).await;
    let window = (now - TimeDelta::hours(1), now);
    let quantity = |report: &Value| dec(&charge(report, "gbh")["quantity"]);
    let path = format!("/v1/subscriptions/sub_1/usage?{}", q(window));
    let (status, then) = get(
        &app,
        &format!("{path}&as_of={}", as_of.timestamp_millis()),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(
        quantity(&then),
        integral(&first, None, window, HOUR_MS),
        "{then}"
    );
    assert_eq!(quantity(&then), d("10"));
    assert_eq!(
        then["late_events"], 0,
        "the late event is before the window: {then}"
    );
    let (status, today) = get(&app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{today}");
    let both = [first[0], late[0]];
    assert_eq!(
        quantity(&today),
        integral(&both, None, window, HOUR_MS),
        "{today}"
    );
    assert_eq!(quantity(&today), d("20"));
    app.shutdown().await;
}

/// Sealed days of a weighted meter are read from its hour grain (`store::weighted_grain`):
/// the same figures as from the samples (`as_of` reads take the samples), windows cut
/// anywhere, per region and per a price's own group; a late event re-opens its day, read from
/// the samples until the maintenance writes it again.
#[tokio::test]
async fn sealed_days_are_read_from_the_weighted_grain_exactly_and_late_events_reopen_them() {
    use meterhouse::store::weighted_grain::WeightedMeter;
    use std::time::Duration;

    let mut config = common::test_config("weighted_grain", &common::store_url());
    config.rollup_maintenance_every_s = 0;
    config.catalog = Some(common::backfill_catalog("catalog-weighted-grain.json"));
    let app = common::spawn_with(config, true).await;
    storage_catalog(
        &app,
        "hour",
        json!({"external_id": "c1"}),
        store_plan(
            json!({"code": "by_tier", "type": "usage", "meter": "storage", "model": "per_unit",
                          "unit_amount": "0.01", "group_by": ["tier"]}),
        ),
    )
    .await;
    // Six whole UTC days before today, and a value of each region carried in before them.
    let now = Utc::now();
    let day_ms = 24 * HOUR_MS;
    let base_ms = (now.timestamp_millis() / day_ms - 6) * day_ms;
    let at = |ms: i64| DateTime::from_timestamp_millis(base_ms + ms).unwrap();
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_g", "customer": "c1", "plan": "store",
               "start_date": at(-3 * day_ms).to_rfc3339()}),
    )
    .await;
    let mut sent = vec![
        Held {
            at: at(-5 * HOUR_MS),
            region: "eu",
            gb: "10",
        },
        Held {
            at: at(-30 * HOUR_MS),
            region: "us",
            gb: "3",
        },
    ];
    for day in 0..6 {
        let gb = ["4", "7.5", "0.25", "12", "2", "9", "1.125"];
        let moments = [
            (2 * HOUR_MS + 5 * 60_000, "eu"),
            (2 * HOUR_MS + 20 * 60_000 + 17, "eu"),
            (2 * HOUR_MS + 47 * 60_000, "eu"),
            (4 * HOUR_MS + 10 * 60_000, "us"),
            (9 * HOUR_MS, "eu"),
            (13 * HOUR_MS + 50 * 60_000 + 999, "us"),
            (17 * HOUR_MS + 30 * 60_000, "eu"),
        ];
        for (i, (offset, region)) in moments.into_iter().enumerate() {
            let k = (day as usize + i) % gb.len();
            sent.push(Held {
                at: at(day * day_ms + offset),
                region,
                gb: gb[k],
            });
        }
    }
    send_tiered(&app, &sent).await;
    // A read before the grain exists: the service learns the meter has no record yet.
    let (status, _) = get(&app, "/v1/subscriptions/sub_g/usage", "read_key_a").await;
    assert_eq!(status, 200);

    let store = app.store().await;
    common::age_reopening_marks(&store).await;
    let patience = Duration::from_secs(60);
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    assert!(round.sealed >= 4, "{round:?}");
    let meters = [WeightedMeter {
        tenant: "acme".into(),
        meter: "storage".into(),
        series_keys: vec!["region".into()],
    }];
    // Meters take turns: with two days to write, each walks back one.
    let other = WeightedMeter {
        tenant: "acme".into(),
        meter: "other".into(),
        series_keys: Vec::new(),
    };
    let both = [meters[0].clone(), other];
    assert_eq!(store.compact_weighted(&both, 2).await.unwrap(), 2);
    let walked: Vec<(String, u32, u32)> = store
        .client()
        .query(
            "SELECT meter, toUInt32(argMax(since, version)), toUInt32(argMax(until, version)) \
             FROM weighted_grain GROUP BY meter ORDER BY meter",
        )
        .fetch_all()
        .await
        .unwrap();
    let (_, since, until) = &walked[0];
    assert_eq!(
        walked[1],
        ("storage".to_owned(), *since, *until),
        "{walked:?}"
    );
    assert_eq!(until - since, 86_400, "{walked:?}");
    let mut written = 2;
    loop {
        let days = store.compact_weighted(&meters, 30).await.unwrap();
        if days == 0 {
            break;
        }
        written += days;
    }
    assert!(written >= 4, "{written} days written");
    let rows = app
        .scalar("SELECT count() FROM usage_weighted_hour WHERE span_s = 3600")
        .await;
    assert!(rows >= 4 * 5, "{rows} weighted hours");
    let days = app
        .scalar("SELECT count() FROM usage_weighted_hour WHERE span_s = 86400")
        .await;
    assert!(days >= 4 * 2, "{days} weighted days");
    let covered = store
        .weighted_grain_hours(
            ("acme", Some("c1"), "storage"),
            &meters[0].series_keys,
            (base_ms - day_ms, base_ms + 6 * day_ms),
        )
        .await
        .unwrap();
    assert_eq!(
        covered.ranges.first().map(|r| r.0),
        Some(base_ms - day_ms),
        "{covered:?}"
    );
    assert!(
        covered.ranges.last().unwrap().1 >= base_ms + 4 * day_ms,
        "{covered:?}"
    );
    // The service reads the day grain's horizon again after a few seconds.
    tokio::time::sleep(Duration::from_millis(5_100)).await;

    let windows = [
        (
            at(HOUR_MS + 13_000),
            at(4 * day_ms + 2 * HOUR_MS + 50 * 60_000),
        ), // ragged days
        (at(2 * day_ms), at(3 * day_ms)), // one whole day
        (at(-2 * day_ms), now),           // everything
        (
            at(day_ms + 2 * HOUR_MS + 10 * 60_000),
            at(day_ms + 2 * HOUR_MS + 30 * 60_000),
        ), // inside an hour
    ];
    let check = |sent: Vec<Held>| {
        let app = &app;
        async move {
            let as_of = Utc::now().timestamp_millis();
            for window in windows {
                let path = format!("/v1/subscriptions/sub_g/usage?{}", q(window));
                let (status, grain) = get(app, &path, "read_key_a").await;
                assert_eq!(status, 200, "{grain}");
                let (status, samples) =
                    get(app, &format!("{path}&as_of={as_of}"), "read_key_a").await;
                assert_eq!(status, 200, "{samples}");
                assert_eq!(grain["charges"], samples["charges"], "{window:?}");
                let by_region = charge(&grain, "by_region");
                let mut regions = Decimal::ZERO;
                for region in ["eu", "us"] {
                    let expected = integral(&sent, Some(region), window, HOUR_MS);
                    assert_eq!(
                        group_quantity(by_region, region),
                        expected,
                        "{region} {window:?}: {grain}"
                    );
                    regions += expected;
                }
                assert_eq!(dec(&by_region["quantity"]), regions, "{window:?}");
                // Each tier's quantity is divided on its own: equal up to the last digit.
                let total = integral(&sent, None, window, HOUR_MS);
                let by_tier = dec(&charge(&grain, "by_tier")["quantity"]);
                assert!(
                    (by_tier - total).abs() < Decimal::new(1, 20),
                    "{by_tier} {total} {window:?}"
                );
            }
            for size in ["hour", "day"] {
                let window = (at(-day_ms), at(5 * day_ms + 30 * 60_000));
                let path = format!(
                    "/v1/meters/storage/query?customer=c1&window_size={size}&group_by=tier&{}",
                    q(window)
                );
                let (status, grain) = get(app, &path, "read_key_a").await;
                assert_eq!(status, 200, "{grain}");
                let (status, samples) =
                    get(app, &format!("{path}&as_of={as_of}"), "read_key_a").await;
                assert_eq!(status, 200, "{samples}");
                assert_eq!(grain["data"], samples["data"], "{size}");
                let sum: Decimal = grain["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| dec(&p["value"]))
                    .sum();
                let total = integral(&sent, None, window, HOUR_MS);
                assert!(
                    (sum - total).abs() < Decimal::new(1, 20),
                    "{sum} {total} {size}"
                );
            }
        }
    };
    check(sent.clone()).await;

    // A late event of day 2, mid-hour: that day is read from the samples at once.
    let late = Held {
        at: at(2 * day_ms + 2 * HOUR_MS + 30 * 60_000),
        region: "eu",
        gb: "1000",
    };
    sent.push(late);
    send_tiered(&app, &sent[sent.len() - 1..]).await;
    check(sent.clone()).await;
    let day2 = (base_ms + 2 * day_ms, base_ms + 3 * day_ms);
    let hours_of_day2 = |store: meterhouse::store::Store| async move {
        store
            .weighted_grain_hours(
                ("acme", Some("c1"), "storage"),
                &["region".to_owned()],
                day2,
            )
            .await
            .unwrap()
            .ranges
    };
    assert_eq!(hours_of_day2(store.clone()).await, vec![]);
    // The maintenance writes the day again (hours included) and clears its mark.
    common::age_reopening_marks(&store).await;
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    assert_eq!(round.resealed, 1, "{round:?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(hours_of_day2(store.clone()).await, vec![day2]);
    check(sent.clone()).await;

    // The reads above took day 3 from the grain (its day row for the whole day, its hour rows
    // for a window that cuts it): rows written over them change both.
    store
        .client()
        .query(
            "INSERT INTO usage_weighted_hour SELECT tenant, meter, customer, series_keys, series, \
             bucket, span_s, part_keys, part_values, arrayMap(v -> '0', part_value_ms), \
             part_samples, first_ms, last_ms, last_value, last_keys, last_values, version + 1 \
             FROM usage_weighted_hour WHERE customer = 'c1' AND bucket >= toDateTime(?) \
             AND bucket < toDateTime(?)",
        )
        .bind((base_ms + 3 * day_ms) / 1000)
        .bind((base_ms + 4 * day_ms) / 1000)
        .execute()
        .await
        .unwrap();
    let day3 = [
        (at(3 * day_ms), at(4 * day_ms)),
        (at(3 * day_ms + HOUR_MS / 2), at(4 * day_ms)),
    ];
    let eu = |window| {
        let app = &app;
        async move {
            let path = format!("/v1/subscriptions/sub_g/usage?{}", q(window));
            let (status, report) = get(app, &path, "read_key_a").await;
            assert_eq!(status, 200, "{report}");
            group_quantity(charge(&report, "by_region"), "eu")
        }
    };
    for window in day3 {
        let (doctored, expected) = (
            eu(window).await,
            integral(&sent, Some("eu"), window, HOUR_MS),
        );
        assert!(doctored < expected, "{doctored} {expected} {window:?}");
    }
    // The meter's record moves (its coverage now starts after that day): the service, which
    // knew the record before, finds out within the same read and takes the day from samples.
    store
        .client()
        .query(
            "INSERT INTO weighted_grain SELECT tenant, meter, series_keys, toDateTime(?), until, \
             version + 1000 FROM weighted_grain WHERE meter = 'storage' ORDER BY version DESC LIMIT 1",
        )
        .bind((base_ms + 4 * day_ms) / 1000)
        .execute()
        .await
        .unwrap();
    for window in day3 {
        assert_eq!(
            eu(window).await,
            integral(&sent, Some("eu"), window, HOUR_MS),
            "{window:?}"
        );
    }
    app.shutdown().await;
}

/// Sends `sent` for customer `c1`, each event's tier by its index (gold, basic, ...).
async fn send_tiered(app: &TestApp, sent: &[Held]) {
    let events: Vec<Value> = sent
        .iter()
        .map(|h| {
            let tier = if h.at.timestamp_millis() / 60_000 % 2 == 0 {
                "gold"
            } else {
                "basic"
            };
            json!({"id": format!("c1-{}-{}", h.region, h.at.timestamp_millis()), "customer": "c1",
                   "type": "storage", "timestamp": h.at.timestamp_millis(),
                   "properties": {"gb": h.gb, "region": h.region, "tier": tier}})
        })
        .collect();
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
}
