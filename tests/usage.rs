//! Exact usage for any window against a real ClickHouse: every aggregation, groups, windows
//! aligned and ragged, compared with values computed here from the events sent.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::spawn_app;
use meterhouse::domain::Aggregation;
use meterhouse::readmodel::report::groups_of_price;
use meterhouse::readmodel::{UsageQuery, UsageReader};
use meterhouse::store::usage_sql::{GroupUsage, MeterGroupUsage};
use rust_decimal::Decimal;
use serde_json::json;

/// Customer c1's ungrouped usage of `meter` in acme over `[from, to)`.
async fn total(
    store: &meterhouse::store::Store,
    meter: &str,
    aggregation: Aggregation,
    from: i64,
    to: i64,
) -> Option<GroupUsage> {
    let q = UsageQuery {
        tenant: "acme",
        meter,
        aggregation,
        customer: "c1",
        from_ms: from,
        to_ms: to,
        group_by: &[],
    };
    reader(store).of_meter(&q).await.unwrap().into_iter().next()
}

/// Reads of `store` that keep nothing in memory.
fn reader(store: &meterhouse::store::Store) -> UsageReader {
    UsageReader::uncached(store.clone())
}

/// Rows of a combined read in one order.
fn sorted(mut rows: Vec<MeterGroupUsage>) -> Vec<MeterGroupUsage> {
    rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
    rows
}

struct Sent {
    ts_ms: i64,
    value: Decimal,
    user: u32,
    model: &'static str,
}

/// A deterministic spread of events over the 3 hours before `end_ms`.
fn events(end_ms: i64) -> Vec<Sent> {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    (0..600)
        .map(|_| Sent {
            ts_ms: end_ms - (next() % (3 * 3_600_000)) as i64,
            value: Decimal::new((next() % 100_000) as i64 - 20_000, 3),
            user: (next() % 37) as u32,
            model: ["gpt-x", "small"][(next() % 2) as usize],
        })
        .collect()
}

#[tokio::test]
async fn every_aggregate_is_exact_for_aligned_and_ragged_windows() {
    let app = spawn_app("usage_exact").await;
    let meter = json!({"slug": "v", "name": "V", "event_type": "measure", "aggregation": "sum", "value_property": "v", "group_by": ["model"]});
    assert_eq!(
        app.post_raw(
            "/v1/meters",
            "admin_key_a",
            "application/json",
            meter.to_string()
        )
        .await
        .0,
        201
    );
    let distinct = json!({"slug": "users", "name": "U", "event_type": "measure", "aggregation": "unique_count", "value_property": "user"});
    assert_eq!(
        app.post_raw(
            "/v1/meters",
            "admin_key_a",
            "application/json",
            distinct.to_string()
        )
        .await
        .0,
        201
    );

    let hour = 3_600_000;
    let end_ms = (chrono::Utc::now().timestamp_millis() / hour) * hour - 1_234;
    let sent = events(end_ms);
    let body: Vec<_> = sent.iter().enumerate()
        .map(|(i, e)| json!({"id": format!("u{i}"), "customer": "c1", "type": "measure", "timestamp": e.ts_ms,
                             "properties": {"v": e.value.to_string(), "user": e.user, "model": e.model}}))
        .collect();
    let (status, ack) = app.post_events("ingest_key_a", &json!(body)).await;
    assert_eq!(status, 202, "{ack}");

    let store = app.store().await;
    let start = end_ms - 3 * hour;
    let windows = [
        (start - hour, end_ms + hour),                       // everything
        ((start / hour + 1) * hour, (end_ms / hour) * hour), // whole hours only
        (start + 61_500, end_ms - 59_999),                   // ragged at both ends
        (start + 3_600_500, start + 3_600_500 + 45_000),     // inside one minute or two
        (end_ms - 2 * hour - 7, end_ms - hour + 7),          // an hour plus a few ms
    ];
    let group_by = vec!["model".to_string()];
    for (from, to) in windows {
        let inside: Vec<&Sent> = sent
            .iter()
            .filter(|e| e.ts_ms >= from && e.ts_ms < to)
            .collect();
        let mut expected: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
        for e in &inside {
            expected.entry(e.model).or_default().push(e);
        }
        let values = |es: &Vec<&Sent>| es.iter().map(|e| e.value).collect::<Vec<_>>();
        for aggregation in [
            Aggregation::Sum,
            Aggregation::Count,
            Aggregation::Min,
            Aggregation::Max,
            Aggregation::Latest,
        ] {
            let q = UsageQuery {
                tenant: "acme",
                meter: "v",
                aggregation,
                customer: "c1",
                from_ms: from,
                to_ms: to,
                group_by: &group_by,
            };
            let got = reader(&store).of_meter(&q).await.unwrap();
            assert_eq!(got.len(), expected.len(), "groups in [{from}, {to})");
            for (g, (model, es)) in got.iter().zip(&expected) {
                assert_eq!(g.group, vec![model.to_string()]);
                assert_eq!(g.count, es.len() as u64, "events {model}");
                let want = match aggregation {
                    Aggregation::Sum => values(es).into_iter().sum::<Decimal>(),
                    Aggregation::Count => Decimal::from(es.len()),
                    Aggregation::Min => values(es).into_iter().min().unwrap(),
                    Aggregation::Max => values(es).into_iter().max().unwrap(),
                    _ => {
                        let latest_ts = es.iter().map(|e| e.ts_ms).max().unwrap();
                        let latest: BTreeSet<Decimal> = es
                            .iter()
                            .filter(|e| e.ts_ms == latest_ts)
                            .map(|e| e.value)
                            .collect();
                        assert!(latest.contains(&g.value), "latest {model}");
                        g.value
                    }
                };
                assert_eq!(g.value, want, "{aggregation:?} {model} [{from}, {to})");
            }
            // The combined read of a subscription's meters gives the same groups, and the
            // same total where the groups' values can be merged.
            let meters = [("v", aggregation), ("users", Aggregation::UniqueCount)];
            let planned = reader(&store);
            let rows = planned
                .of_meters_from_store("acme", "c1", (from, to), &meters, false)
                .await
                .unwrap()
                .expect("nothing marked dirty");
            // Read again by the same reader, which now knows the customer is light: from its
            // samples alone (a window of over an hour), the same rows.
            let again = planned
                .of_meters_from_store("acme", "c1", (from, to), &meters, false)
                .await
                .unwrap()
                .expect("nothing marked dirty");
            assert_eq!(
                sorted(again),
                sorted(rows.clone()),
                "second read {aggregation:?} [{from}, {to})"
            );
            let of = |meter: &str| rows.iter().filter(|r| r.meter == meter).collect::<Vec<_>>();
            assert_eq!(
                groups_of_price(&of("v"), &group_by, aggregation),
                Some(got),
                "combined {aggregation:?} [{from}, {to})"
            );
            let whole = groups_of_price(&of("v"), &[], aggregation);
            if aggregation == Aggregation::Latest {
                assert_eq!(whole, None, "latest values of two groups do not merge");
            } else {
                let alone = total(&store, "v", aggregation, from, to).await;
                assert_eq!(
                    whole,
                    Some(alone.into_iter().collect()),
                    "{aggregation:?} total"
                );
            }
            let users = groups_of_price(&of("users"), &[], Aggregation::UniqueCount).unwrap();
            let alone = total(&store, "users", Aggregation::UniqueCount, from, to).await;
            assert_eq!(
                users,
                alone.into_iter().collect::<Vec<_>>(),
                "combined distinct"
            );
        }
        let q = UsageQuery {
            tenant: "acme",
            meter: "users",
            aggregation: Aggregation::UniqueCount,
            customer: "c1",
            from_ms: from,
            to_ms: to,
            group_by: &[],
        };
        let users = reader(&store).of_meter(&q).await.unwrap();
        let expected_users: BTreeSet<u32> = inside.iter().map(|e| e.user).collect();
        assert_eq!(
            users.first().map_or(Decimal::ZERO, |u| u.value),
            Decimal::from(expected_users.len()),
            "distinct users [{from}, {to})"
        );
    }
    // Another customer or tenant sees nothing.
    let q = UsageQuery {
        tenant: "beta",
        meter: "v",
        aggregation: Aggregation::Sum,
        customer: "c1",
        from_ms: start - hour,
        to_ms: end_ms + hour,
        group_by: &group_by,
    };
    assert!(reader(&store).of_meter(&q).await.unwrap().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_late_event_changes_its_own_window_only() {
    let app = spawn_app("usage_late").await;
    let hour = 3_600_000;
    let now = chrono::Utc::now().timestamp_millis();
    let past = (now / hour - 5) * hour;
    let send = |id: &str, ts: i64| json!({"id": id, "customer": "c1", "type": "api_call", "timestamp": ts});
    app.post_events(
        "ingest_key_a",
        &json!([send("a", past + 10), send("b", past + hour + 10)]),
    )
    .await;
    let store = app.store().await;
    let count = |from: i64, to: i64| {
        let store = store.clone();
        async move {
            total(&store, "calls", Aggregation::Count, from, to)
                .await
                .map_or(0, |g| g.count)
        }
    };
    assert_eq!(
        (
            count(past, past + hour).await,
            count(past + hour, past + 2 * hour).await
        ),
        (1, 1)
    );
    app.post_events("ingest_key_a", &json!([send("late", past + 1_800_000)]))
        .await;
    assert_eq!(
        count(past, past + hour).await,
        2,
        "the late event lands in its own window"
    );
    assert_eq!(
        count(past + hour, past + 2 * hour).await,
        1,
        "and nowhere else"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn meter_series_split_by_window_customer_and_group() {
    let app = spawn_app("usage_series").await;
    let hour = 3_600_000i64;
    // Local midnight in Paris between two events, 3 days ago (well inside the 35-day window).
    use chrono::TimeZone;
    let paris = chrono_tz::Europe::Paris;
    let date = (chrono::Utc::now() - chrono::TimeDelta::days(3))
        .with_timezone(&paris)
        .date_naive();
    let midnight_paris = paris
        .from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .timestamp_millis();
    let events = [
        ("e1", "c1", midnight_paris - 30_000, "gpt-x", 5), // 23:59:30 Paris, previous local day
        ("e2", "c1", midnight_paris + 30_000, "gpt-x", 7), // 00:00:30 Paris
        ("e3", "c1", midnight_paris + 90_000, "small", 11),
        ("e4", "c2", midnight_paris + hour + 1, "gpt-x", 13),
        ("e5", "c1", midnight_paris + 2 * hour + 59_999, "gpt-x", 17),
    ];
    let body: Vec<_> = events.iter()
        .map(|(id, customer, ts, model, tokens)| json!({"id": id, "customer": customer, "type": "llm_call", "timestamp": ts,
                                                        "properties": {"tokens": tokens, "model": model}}))
        .collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(body)).await.0, 202);
    let get = |path: String| {
        let app = &app;
        async move {
            let response = app.get(&path, Some("read_key_a")).await;
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (from, to) = (midnight_paris - hour, midnight_paris + 3 * hour + 1_234);

    let (status, hourly) = get(format!(
        "/v1/meters/tokens/query?from={from}&to={to}&window_size=hour&group_by=model&customer=c1"
    ))
    .await;
    assert_eq!(status, 200, "{hourly}");
    let points: Vec<(i64, String, String)> = hourly["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                chrono::DateTime::parse_from_rfc3339(p["window_start"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis(),
                p["group"]["model"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        points,
        vec![
            (midnight_paris - hour, "gpt-x".into(), "5".into()),
            (midnight_paris, "gpt-x".into(), "7".into()),
            (midnight_paris, "small".into(), "11".into()),
            (midnight_paris + 2 * hour, "gpt-x".into(), "17".into()),
        ]
    );

    let (_, daily) = get(format!(
        "/v1/meters/tokens/query?from={from}&to={to}&window_size=day&timezone=Europe/Paris"
    ))
    .await;
    let days: Vec<(String, String, String)> = daily["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["window_start"].as_str().unwrap().to_owned(),
                p["customer"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    assert_eq!(
        days,
        vec![
            (at(from), "c1".into(), "5".into()),
            (at(midnight_paris), "c1".into(), "35".into()),
            (at(midnight_paris), "c2".into(), "13".into()),
        ],
        "the first window starts at `from`; Paris days split at local midnight"
    );
    assert_eq!(
        daily["data"][1]["window_end"].as_str().unwrap(),
        at(to),
        "the last window ends at `to`"
    );

    let (_, filtered) = get(format!(
        "/v1/meters/tokens/query?from={from}&to={to}&window_size=day&filter[model]=small"
    ))
    .await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["data"][0]["value"], "11");

    for (path, status, code) in [
        (
            format!("/v1/meters/nope/query?from={from}&to={to}"),
            404,
            "meter_not_found",
        ),
        (
            format!("/v1/meters/tokens/query?from={from}&to={to}&group_by=region"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/meters/tokens/query?from={from}&to={to}&timezone=Mars/Base"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/meters/tokens/query?from={to}&to={from}"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/meters/tokens/query?from=0&to={to}&window_size=minute"),
            400,
            "invalid_request",
        ),
    ] {
        let (got, body) = get(path.clone()).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    // A customer key sees only its own customer, whatever it asks for.
    let own = app
        .get(
            &format!("/v1/meters/tokens/query?from={from}&to={to}&window_size=day&customer=c2"),
            Some("cust_key_a"),
        )
        .await;
    let own: serde_json::Value = own.json().await.unwrap();
    assert!(
        own["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["customer"] == "c1"),
        "{own}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn backfill_counts_events_that_predate_their_meter_exactly_once() {
    let app = spawn_app("usage_backfill").await;
    let hour = 3_600_000i64;
    let base = (chrono::Utc::now().timestamp_millis() / hour - 4) * hour;
    let upload = |id: &str, ts: i64, gb: &str| json!({"id": id, "customer": "c1", "type": "upload", "timestamp": ts, "properties": {"size": {"gb": gb}}});
    let before = json!([upload("b1", base + 10, "1.25"), upload("b2", base + hour + 5, "2"), upload("b3", base + 2 * hour, "0.5"),
                        {"id": "b4", "customer": "c1", "type": "upload", "timestamp": base + 20, "properties": {}}]);
    assert_eq!(app.post_events("ingest_key_a", &before).await.0, 202);
    let meter = json!({"slug": "gb", "name": "GB", "event_type": "upload", "aggregation": "sum", "value_property": "size.gb"});
    assert_eq!(
        app.post_raw(
            "/v1/meters",
            "admin_key_a",
            "application/json",
            meter.to_string()
        )
        .await
        .0,
        201
    );
    let after = json!([upload("a1", base + 3 * hour, "10")]);
    assert_eq!(app.post_events("ingest_key_a", &after).await.0, 202);

    let store = app.store().await;
    let sum = |from: i64, to: i64| {
        let store = store.clone();
        async move {
            total(&store, "gb", Aggregation::Sum, from, to)
                .await
                .map_or(Decimal::ZERO, |g| g.value)
        }
    };
    assert_eq!(
        sum(base, base + 4 * hour).await,
        Decimal::from(10),
        "only the event after the meter counts so far"
    );

    let catalog = meterhouse::catalog::Catalog::open(store.clone())
        .await
        .unwrap();
    let from = chrono::DateTime::from_timestamp_millis(base).unwrap();
    let to = chrono::DateTime::from_timestamp_millis(base + 4 * hour).unwrap();
    let outcome = meterhouse::backfill::run(&store, &catalog, "acme", "gb", from, to)
        .await
        .unwrap();
    assert_eq!(
        (
            outcome.events,
            outcome.already_sampled,
            outcome.samples_written,
            outcome.skipped
        ),
        (5, 1, 3, 1)
    );
    let expected: Decimal = ["1.25", "2", "0.5", "10"]
        .iter()
        .map(|v| v.parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(
        sum(base, base + 4 * hour).await,
        expected,
        "whole hours: from the hour rollup"
    );
    assert_eq!(
        sum(base + 5, base + 4 * hour - 1).await,
        expected,
        "ragged: minutes and samples"
    );

    let again = meterhouse::backfill::run(&store, &catalog, "acme", "gb", from, to)
        .await
        .unwrap();
    assert_eq!(again.samples_written, 0, "a second run adds nothing");
    assert_eq!(sum(base, base + 4 * hour).await, expected);
    assert_eq!(
        app.scalar("SELECT count() FROM events WHERE event_type = 'upload'")
            .await,
        5,
        "events stay as received"
    );
    app.shutdown().await;
}

/// Two `calls` samples of c1 in `hour` (5 s in), of batch `batch`, written to `usage_samples`
/// alone: the hour rollup lacks them.
async fn samples_behind_the_rollup(store: &meterhouse::store::Store, hour: i64, batch: u64) {
    store
        .client()
        .query(
            "INSERT INTO usage_samples (tenant, meter, customer, group_keys, group_values, ts_ms, ts, value, value_str, event_id, ingested_ms, batch_id) \
             SELECT 'acme', 'calls', 'c1', [], [], toInt64(?) + number, toDateTime(intDiv(toInt64(?) + number, 1000)), toDecimal128(1, 12), '', concat('behind-', toString(?), '-', toString(number)), toInt64(?), ? FROM numbers(2)",
        )
        .bind(hour + 5000)
        .bind(hour + 5000)
        .bind(batch)
        .bind(hour)
        .bind(batch)
        .execute()
        .await
        .unwrap();
}

/// A batch whose insert stopped after its samples but before the hour rollup's view leaves the
/// rollup short. Once its hours are marked (as settling an in-doubt batch does), reads take
/// those hours from the samples and count every event; unmarked hours keep using the rollup.
#[tokio::test]
async fn hours_marked_dirty_are_read_from_samples() {
    let app = spawn_app("usage_dirty").await;
    let hour = (chrono::Utc::now().timestamp_millis() / 3_600_000 - 2) * 3_600_000;
    let events: Vec<_> = (0..3)
        .map(|i| json!({"id": format!("ok-{i}"), "customer": "c1", "type": "api_call", "timestamp": hour + 1000 * i}))
        .collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(events)).await.0, 202);
    let store = app.store().await;
    // Two samples of batch 77 that reached usage_samples but never the rollup.
    samples_behind_the_rollup(&store, hour, 77).await;
    let (from, to) = (hour - 3_600_000, hour + 2 * 3_600_000);
    let count = |u: Option<GroupUsage>| u.map_or(0, |u| u.count);
    assert_eq!(
        count(total(&store, "calls", Aggregation::Count, from, to).await),
        3,
        "the rollup lacks the batch"
    );

    meterhouse::store::queries::mark_dirty_hours(hour - 1, &[77])
        .query(store.client())
        .execute()
        .await
        .unwrap();
    let meters = [("calls", Aggregation::Count)];
    let combined = reader(&store)
        .of_meters_from_store("acme", "c1", (from, to), &meters, false)
        .await;
    assert_eq!(combined.unwrap().unwrap()[0].count, 3, "nothing marked yet");
    // Another process learns of marks within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        count(total(&store, "calls", Aggregation::Count, from, to).await),
        5
    );
    // The combined read of a subscription's meters gives way to the per-meter read, which
    // takes the marked hour from samples.
    let combined = reader(&store)
        .of_meters_from_store("acme", "c1", (from, to), &meters, false)
        .await;
    assert_eq!(combined.unwrap(), None);
    let other_customer = reader(&store)
        .of_meters_from_store("acme", "c2", (from, to), &meters, false)
        .await;
    assert_eq!(
        other_customer.unwrap(),
        Some(vec![]),
        "c2 has no marked hour"
    );
    // The API agrees: the series over those hours counts all five in the marked hour.
    let path = format!("/v1/meters/calls/query?from={from}&to={to}&customer=c1&window_size=hour");
    let series: serde_json::Value = app
        .get(&path, Some("read_key_a"))
        .await
        .json()
        .await
        .unwrap();
    let values: Vec<(i64, String)> = series["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                chrono::DateTime::parse_from_rfc3339(p["window_start"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(values, vec![(hour, "5".to_owned())], "{series}");
}

#[tokio::test]
async fn a_light_customers_reads_after_its_first_come_from_its_samples_alone() {
    let app = spawn_app("usage_plan").await;
    let hour = (chrono::Utc::now().timestamp_millis() / 3_600_000 - 3) * 3_600_000;
    let events: Vec<_> = (0..3)
        .map(|i| json!({"id": format!("p-{i}"), "customer": "c1", "type": "api_call", "timestamp": hour + 1000 * i}))
        .collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(events)).await.0, 202);
    let store = app.store().await;
    // Two samples that are not in the rollup (nothing marks their hour): which part of the
    // store a read took shows in its count.
    samples_behind_the_rollup(&store, hour, 78).await;
    // The service's default bound is the read model's.
    assert_eq!(
        app.config.light_read_samples,
        meterhouse::readmodel::plan::LIGHT_SAMPLES
    );
    let meters = [("calls", Aggregation::Count)];
    let count = |rows: Option<Vec<MeterGroupUsage>>| rows.unwrap()[0].count;
    let planned = reader(&store);
    let read = |window| {
        let planned = planned.clone();
        async move {
            planned
                .of_meters_from_store("acme", "c1", window, &meters, false)
                .await
                .unwrap()
        }
    };
    // A day with ragged edges: the rollups' statement would read edges, hours (and days).
    let day = (hour - 10 * 3_600_000 - 1_234, hour + 14 * 3_600_000 + 77);
    assert_eq!(count(read(day).await), 3, "unknown customer: the rollups");
    assert_eq!(count(read(day).await), 5, "light: its samples alone");
    // Whole hours are one part of the rollups, read as such.
    let whole = (hour - 10 * 3_600_000, hour + 14 * 3_600_000);
    assert_eq!(count(read(whole).await), 3, "whole hours: the rollups");
    // A month of it is light too; a fresh reader knows nothing of it.
    let month = (day.0 - 29 * 86_400_000, day.1);
    assert_eq!(count(read(month).await), 5);
    let fresh = reader(&store)
        .of_meters_from_store("acme", "c1", month, &meters, false)
        .await
        .unwrap();
    assert_eq!(count(fresh), 3);
    // A customer seen dense reads the rollups: c2 with more samples in the day than a light
    // read holds.
    let n = meterhouse::readmodel::plan::LIGHT_SAMPLES as i64 + 1_000;
    let dense: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("d-{i}"), "customer": "c2", "type": "api_call", "timestamp": hour + i}))
        .collect();
    for chunk in dense.chunks(10_000) {
        assert_eq!(app.post_events("ingest_key_a", &json!(chunk)).await.0, 202);
    }
    let of_c2 = |planned: UsageReader| async move {
        planned
            .of_meters_from_store("acme", "c2", day, &meters, false)
            .await
            .unwrap()
    };
    assert_eq!(count(of_c2(planned.clone()).await), n as u64);
    let of =
        |customer| meterhouse::readmodel::plan::Reads::of("acme", customer, ["calls"].into_iter());
    let past = (day.0, chrono::Utc::now().timestamp_millis());
    assert!(
        !planned.densities().light(&of("c2"), past),
        "{n} samples a day is not light"
    );
    assert!(planned.densities().light(&of("c1"), past));
    app.shutdown().await;
}

#[tokio::test]
async fn a_store_of_the_meter_keyed_layout_is_copied_into_the_customer_keyed_one() {
    // A store as release 0007 left it: samples and rollup keyed by meter first.
    let config = common::test_config("usage_upgrade", &common::clickhouse_url());
    let store = common::empty_database(&config).await;
    assert_eq!(
        meterhouse::store::migrate::run_until(&store, 7)
            .await
            .unwrap(),
        7
    );
    let hour = (chrono::Utc::now().timestamp_millis() / 3_600_000 - 2) * 3_600_000;
    store
        .client()
        .query(
            "INSERT INTO events (tenant, id, customer, event_type, ts_ms, ts, properties, ingested_ms, ingested_at, batch_id, \
             sample_meter, sample_value, sample_value_str, sample_group_keys, sample_group_values) \
             SELECT 'acme', concat('old-', toString(number)), 'c1', 'api_call', toInt64(?) + number * 1000, \
             toDateTime(intDiv(toInt64(?) + number * 1000, 1000)), '{}', toInt64(?), toDateTime(intDiv(toInt64(?), 1000)), 5, \
             ['calls'], [toDecimal128(1, 12)], [''], [emptyArrayString()], [emptyArrayString()] FROM numbers(3)",
        )
        .bind(hour + 1500)
        .bind(hour + 1500)
        .bind(hour)
        .bind(hour)
        .execute()
        .await
        .unwrap();

    // The service upgrades the store at start; then one more event arrives through the API.
    let app = common::spawn_with(config, false).await;
    let tables = app
        .scalar("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name IN \
                 ('meter_samples', 'meter_rollup_hour', 'events_to_meter_samples', 'events_to_rollup_hour')")
        .await;
    assert_eq!(tables, 0, "the meter-keyed tables and their views are gone");
    let late =
        json!([{"id": "new-1", "customer": "c1", "type": "api_call", "timestamp": hour + 9_000}]);
    assert_eq!(app.post_events("ingest_key_a", &late).await.0, 202);
    assert_eq!(app.scalar("SELECT count() FROM usage_samples").await, 4);
    assert_eq!(
        app.scalar("SELECT countMerge(samples) FROM usage_rollup_hour")
            .await,
        4
    );
    let store = app.store().await;
    let meters = [("calls", Aggregation::Count)];
    let window = (hour - 3_600_000, hour + 2 * 3_600_000);
    let rows = reader(&store)
        .of_meters_from_store("acme", "c1", window, &meters, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rows.len(), rows[0].count), (1, 4));
    app.shutdown().await;
}

/// `usage_change_batches` only serves the last seconds: days before yesterday are dropped,
/// newer ones kept; the change rows its view writes name the customers whose samples arrived
/// and their batches, and a process skips the batches it names as its own.
#[tokio::test]
async fn usage_changes_list_changed_customers_and_old_days_are_dropped() {
    let app = spawn_app("usage_changes").await;
    let events = json!([{"id": "a", "customer": "c1", "type": "api_call"},
                        {"id": "b", "customer": "c2", "type": "api_call"},
                        {"id": "c", "customer": "c3", "type": "no_meter_matches_this"}]);
    assert_eq!(app.post_events("ingest_key_a", &events).await.0, 202);
    let store = app.store().await;
    let changed = |own: Vec<u64>| {
        let store = store.clone();
        async move {
            let rows = store.usage_changed_since(0, &own).await.unwrap();
            rows.into_iter()
                .map(|(t, c)| format!("{t}/{c}"))
                .collect::<BTreeSet<_>>()
        }
    };
    assert_eq!(
        changed(vec![]).await,
        BTreeSet::from(["acme/c1".to_owned(), "acme/c2".to_owned()]),
        "c3's event has no sample"
    );
    let batches: Vec<u64> = store
        .client()
        .query("SELECT DISTINCT batch_id FROM events")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(batches.len(), 1);
    assert!(
        changed(batches.clone()).await.is_empty(),
        "the writer's own batch"
    );
    assert_eq!(
        changed(vec![batches[0] ^ 1]).await.len(),
        2,
        "someone else's"
    );

    // A row naming no batch is anyone's change.
    store
        .client()
        .query("INSERT INTO usage_change_batches (at, tenant, customers, batches) VALUES (now() - 3 * 86400, 'acme', ['old'], []), (now() - 86400, 'acme', ['yesterday'], [])")
        .execute()
        .await
        .unwrap();
    assert!(changed(batches).await.contains("acme/yesterday"));
    store
        .drop_days_before_yesterday("usage_change_batches")
        .await
        .unwrap();
    let left: Vec<String> = store
        .client()
        .query("SELECT arrayJoin(customers) AS c FROM usage_change_batches ORDER BY c")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(left, ["c1", "c2", "yesterday"]);
    app.shutdown().await;
}

/// A migration that copies a table (0016) waits for every writer to stop, and refuses, saying
/// what to do, while one goes on beating: a process ingesting during the copy would lose rows.
#[tokio::test]
async fn a_copying_migration_waits_for_every_writer_to_stop() {
    let config = common::test_config("usage_quiet_migration", &common::clickhouse_url());
    let store = common::empty_database(&config).await;
    meterhouse::store::migrate::run_until(&store, 15)
        .await
        .unwrap();
    let beat = |ago: u32| {
        format!(
            "INSERT INTO ingest_writer_beats VALUES ('other', 'shared', 'elsewhere', 7, now() - {ago}, 0)"
        )
    };
    store.client().query(&beat(0)).execute().await.unwrap();
    let keep_beating = {
        let store = store.clone();
        let beat = beat(0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                store.client().query(&beat).execute().await.unwrap();
            }
        })
    };
    let refused = meterhouse::store::migrate::run(&store).await.unwrap_err();
    keep_beating.abort();
    let message = refused.to_string();
    assert!(
        message.contains("0016") && message.contains("other"),
        "{message}"
    );
    let applied: u64 = store
        .client()
        .query("SELECT count() FROM schema_migrations WHERE version = 16")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(applied, 0);
    // The writer stopped (its last beat now older than three seconds): the migration runs.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let later = meterhouse::store::migrate::MIGRATIONS.len() - 15;
    assert_eq!(
        meterhouse::store::migrate::run(&store).await.unwrap(),
        later
    );
}
