//! The day grain (sql/0015): closed UTC days compacted from the hour rollup answer reads exactly
//! as the hours and samples do (sums, counts, extremes, distinct counts and latest values across
//! grains, by group), a late event re-opens its customer's day at once, and a later round
//! writes it again.

mod common;

use std::time::Duration;

use common::{get_json, post_ok, spawn_with, test_config};
use meterhouse::domain::Aggregation;
use meterhouse::readmodel::window::{self, DAY_MS, HOUR_MS};
use meterhouse::readmodel::{UsageQuery, UsageReader};
use meterhouse::store::combined_sql::combined_statement;
use meterhouse::store::series_sql::{SeriesQuery, WindowSize, series_statement};
use meterhouse::store::to_date_sql::ToDate;
use meterhouse::store::usage_sql::{GroupUsage, MeterGroupUsage, Part, Scope, usage_statement};
use meterhouse::store::{Compacted, Store};
use serde_json::json;

const METERS: [(&str, Aggregation, &str); 3] = [
    ("v", Aggregation::Sum, "sum"),
    ("users", Aggregation::UniqueCount, "unique_count"),
    ("last", Aggregation::Latest, "latest"),
];

/// A service on a database of its own with the three meters, each grouped by model, and no
/// maintenance behind the test's back.
async fn app_with_meters(test: &str) -> common::TestApp {
    let mut config = test_config(test, &common::clickhouse_url());
    config.rollup_maintenance_every_s = 0;
    config.catalog = Some(common::backfill_catalog("catalog-days.json"));
    let app = spawn_with(config, true).await;
    for (slug, _, aggregation) in METERS {
        let property = match slug {
            "v" => "v",
            "users" => "user",
            _ => "load",
        };
        post_ok(
            &app,
            "/v1/meters",
            json!({"slug": slug, "name": slug, "event_type": "measure",
            "aggregation": aggregation, "value_property": property, "group_by": ["model"]}),
        )
        .await;
    }
    app
}

/// Through the read path under test: days from the grain where it may.
async fn with_grain(
    store: &Store,
    meter: &str,
    aggregation: Aggregation,
    customer: &str,
    (from, to): (i64, i64),
    group_by: &[String],
) -> Vec<GroupUsage> {
    let q = UsageQuery {
        tenant: "acme",
        meter,
        aggregation,
        customer,
        from_ms: from,
        to_ms: to,
        group_by,
    };
    UsageReader::uncached(store.clone())
        .of_meter(&q)
        .await
        .unwrap()
}

/// The same from hours and samples only, as before the grain.
async fn without_grain(
    store: &Store,
    meter: &str,
    aggregation: Aggregation,
    customer: &str,
    (from, to): (i64, i64),
    group_by: &[String],
) -> Vec<GroupUsage> {
    let scope = Scope {
        tenant: "acme",
        meter,
        customer: Some(customer),
        filters: &[],
        as_of_ms: None,
    };
    let parts = window::split(from, to, true);
    store
        .usage(&usage_statement(&parts, aggregation, group_by, &scope))
        .await
        .unwrap()
}

async fn parts(store: &Store, customer: &str, window: (i64, i64)) -> Vec<Part> {
    window::parts_of(store, ("acme", "v", Some(customer)), window, (true, true))
        .await
        .unwrap()
}

async fn assert_same(store: &Store, windows: &[(i64, i64)]) {
    let by_model = ["model".to_owned()];
    for &window in windows {
        for customer in ["c1", "c2"] {
            for (meter, aggregation, _) in METERS {
                for group_by in [&[][..], &by_model[..]] {
                    let got =
                        with_grain(store, meter, aggregation, customer, window, group_by).await;
                    let want =
                        without_grain(store, meter, aggregation, customer, window, group_by).await;
                    assert_eq!(
                        got, want,
                        "{meter} of {customer} over {window:?} by {group_by:?}"
                    );
                }
            }
        }
    }
}

/// A subscription's read of all three meters at once (one statement: the day grain, the hour
/// rollup and the samples, the distinct counts' rows read apart from the others') gives what
/// the hours and samples alone give.
async fn assert_same_combined(store: &Store, windows: &[(i64, i64)]) {
    let meters: Vec<(&str, Aggregation)> = METERS.iter().map(|&(m, a, _)| (m, a)).collect();
    let sorted = |mut rows: Vec<MeterGroupUsage>| {
        rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
        rows
    };
    for &window in windows {
        for customer in ["c1", "c2"] {
            let got = UsageReader::uncached(store.clone())
                .of_customers("acme", &[(customer, window)], &meters)
                .await
                .unwrap()
                .expect("no hour is marked for repair")
                .remove(customer)
                .unwrap_or_default();
            let parts = window::split(window.0, window.1, true);
            let want = store
                .usage_of_meters(&combined_statement("acme", customer, &parts, &meters), true)
                .await
                .unwrap()
                .remove(customer)
                .unwrap_or_default();
            assert!(!want.is_empty(), "{customer} over {window:?}");
            // Each meter's rows as its own read from hours and samples gives them.
            let by_model = ["model".to_owned()];
            for (meter, aggregation, _) in METERS {
                let alone = without_grain(store, meter, aggregation, customer, window, &by_model)
                    .await
                    .into_iter()
                    .map(|g| (g.group, g.value, g.count))
                    .collect::<Vec<_>>();
                let mut of_meter: Vec<_> = got
                    .iter()
                    .filter(|r| r.meter == meter)
                    .map(|r| (r.values.clone(), r.value, r.count))
                    .collect();
                of_meter.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(of_meter, alone, "{meter} of {customer} over {window:?}");
            }
            assert_eq!(
                sorted(got),
                sorted(want),
                "{customer} over {window:?}, all meters"
            );
        }
    }
}

/// When the event of hour `h` after `base` happens: minutes into the hour vary.
fn hour_event_at(base: i64, h: i64) -> i64 {
    base + h * HOUR_MS + 60_000 * (h % 50) + 7
}

/// An event of c1 and one of c2 in each hour `h` after `base` of `hours` ([`hour_event_at`]):
/// the three meters' values vary with the hour, in two models.
fn hourly_events(base: i64, hours: impl Iterator<Item = i64> + Clone) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for customer in ["c1", "c2"] {
        for h in hours.clone() {
            events.push(json!({"id": format!("{customer}-{h}"), "customer": customer, "type": "measure",
                "timestamp": hour_event_at(base, h),
                "properties": {"v": format!("{}.5", h % 13), "user": format!("u{}", h % 9),
                               "load": format!("{}", 100 - h % 17), "model": if h % 3 == 0 { "a" } else { "b" }}}));
        }
    }
    events
}

/// Moves every late event's mark (re-opened days, late hours) ten minutes back, as if that long
/// had passed.
async fn age_marks(store: &Store) {
    for (table, key) in [
        ("rollup_days_reopened", "day"),
        ("rollup_hours_late", "hour"),
    ] {
        for sql in [
            format!("CREATE TABLE marks_aged AS {table}"),
            format!(
                "INSERT INTO marks_aged SELECT tenant, customer, {key}, toDateTime(toUInt32(at) - 600) FROM {table}"
            ),
            format!("TRUNCATE TABLE {table}"),
            format!("INSERT INTO {table} SELECT * FROM marks_aged"),
            "DROP TABLE marks_aged".to_owned(),
        ] {
            store.client().query(&sql).execute().await.unwrap();
        }
    }
}

#[tokio::test]
async fn closed_days_are_read_from_the_day_grain_exactly_and_late_events_reopen_them() {
    let app = app_with_meters("days").await;
    // Six whole days before today (UTC) and today up to ten minutes ago: c1 three events a
    // day, c2 one.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let base = (now_ms / DAY_MS - 6) * DAY_MS;
    let mut events = Vec::new();
    for day in 0..6 {
        for (i, hour) in [1, 9, 17].into_iter().enumerate() {
            let ts = base + day * DAY_MS + hour * HOUR_MS + 60_000 * (day + 3 * i as i64) + 17;
            events.push(json!({"id": format!("c1-{day}-{i}"), "customer": "c1", "type": "measure", "timestamp": ts,
                "properties": {"v": format!("{}.25", day * 10 + i as i64), "user": format!("u{}", (day + i as i64) % 4),
                               "load": format!("{}.5", 90 - day * 7 - i as i64), "model": if i % 2 == 0 { "a" } else { "b" }}}));
        }
        events.push(json!({"id": format!("c2-{day}"), "customer": "c2", "type": "measure", "timestamp": base + day * DAY_MS + 12 * HOUR_MS,
            "properties": {"v": "1", "user": "x", "load": format!("{day}"), "model": "a"}}));
    }
    events.push(
        json!({"id": "c1-today", "customer": "c1", "type": "measure", "timestamp": now_ms - 600_000,
        "properties": {"v": "0.5", "user": "u9", "load": "3", "model": "b"}}),
    );
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
    let store = app.store().await;

    let windows = [
        (base - HOUR_MS, now_ms + HOUR_MS), // everything
        (
            base + DAY_MS + 7 * HOUR_MS + 13_000,
            base + 5 * DAY_MS + 3 * HOUR_MS,
        ), // ragged days
        (base + 2 * DAY_MS, base + 3 * DAY_MS), // one whole day
        (base + 1_234_567, base + 7 * DAY_MS - 7_654_321), // seven ragged days
    ];
    assert!(
        !parts(&store, "c1", windows[0])
            .await
            .iter()
            .any(|p| matches!(p, Part::Days(..)))
    );

    let patience = Duration::from_secs(60);
    // Those events re-opened their days as they arrived (days before today are late);
    // five minutes on, the round writes them.
    let reopened: u64 = store
        .client()
        .query("SELECT count() FROM rollup_days_reopened")
        .fetch_one()
        .await
        .unwrap();
    assert!(reopened >= 4 * 2);
    age_marks(&store).await;
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    // Every day over by an hour is sealed: yesterday too, from 01:00 (UTC) on.
    let closed_days_end = |ms: i64| (ms - HOUR_MS).div_euclid(DAY_MS) * DAY_MS;
    let sealed_end = base + i64::from(round.sealed) * DAY_MS;
    let after_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        [closed_days_end(now_ms), closed_days_end(after_ms)].contains(&sealed_end),
        "{round:?}"
    );
    // The seal took those events: their marks go with it.
    assert_eq!(round.resealed, 0);
    let left: u64 = store
        .client()
        .query("SELECT count() FROM rollup_days_reopened WHERE toInt64(toUInt32(day)) * 1000 < ?")
        .bind(sealed_end)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(
        store.compact_days(10, 1_000, patience).await.unwrap(),
        Compacted::default()
    );
    // The horizon is read again after a few seconds.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let everything = parts(&store, "c1", windows[0]).await;
    assert!(
        everything.contains(&Part::Days(base, sealed_end)),
        "{everything:?}"
    );
    assert_same(&store, &windows).await;

    // A late event of day 2: that day of c1 is read from hours at once (by the process that
    // took it, which had just found nothing re-opened), c2's stays in the grain.
    let day2 = |from: i64| {
        let at = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339()
        };
        format!(
            "/v1/meters/v/query?customer=c1&window_size=day&from={}&to={}",
            urlencode(&at(from)),
            urlencode(&at(from + DAY_MS))
        )
    };
    let day2_total = |body: serde_json::Value| -> String {
        let data = body["data"].as_array().unwrap().clone();
        assert_eq!(data.len(), 1, "{body}");
        data[0]["value"].as_str().unwrap().to_owned()
    };
    let (status, body) = get_json(&app, &day2(base + 2 * DAY_MS), "read_key_a").await;
    assert_eq!((status, day2_total(body)), (200, "63.75".to_owned()));
    let late = json!([{"id": "late", "customer": "c1", "type": "measure", "timestamp": base + 2 * DAY_MS + 5 * HOUR_MS,
        "properties": {"v": "1000", "user": "u-late", "load": "999", "model": "a"}}]);
    let (status, _) = app.post_events("ingest_key_a", &late).await;
    assert_eq!(status, 202);
    let (status, body) = get_json(&app, &day2(base + 2 * DAY_MS), "read_key_a").await;
    assert_eq!((status, day2_total(body)), (200, "1063.75".to_owned()));
    // Other processes see the mark within a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let c1 = parts(&store, "c1", windows[0]).await;
    assert!(c1.contains(&Part::Days(base, base + 2 * DAY_MS)), "{c1:?}");
    assert!(
        c1.contains(&Part::Days(base + 3 * DAY_MS, sealed_end)),
        "{c1:?}"
    );
    assert!(
        parts(&store, "c2", windows[0])
            .await
            .contains(&Part::Days(base, sealed_end))
    );
    assert_same(&store, &windows).await;
    assert_same_combined(&store, &windows).await;
    let day2 = with_grain(&store, "v", Aggregation::Sum, "c1", windows[2], &[]).await;
    assert_eq!(day2[0].value.to_string(), "1063.75");
    // So does one of the last sealed day (yesterday, but for the first hour of a day).
    let last = (sealed_end - DAY_MS, sealed_end);
    let late = json!([{"id": "late-last", "customer": "c2", "type": "measure", "timestamp": last.0 + 7 * HOUR_MS,
        "properties": {"v": "500", "user": "u-late", "load": "7", "model": "b"}}]);
    let (status, _) = app.post_events("ingest_key_a", &late).await;
    assert_eq!(status, 202);
    let last_day = with_grain(&store, "v", Aggregation::Sum, "c2", last, &[]).await;
    assert_eq!(last_day[0].value.to_string(), "501");

    // Marks younger than five minutes stay; older ones are written again and cleared.
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    assert_eq!(round.resealed, 0);
    age_marks(&store).await;
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    assert_eq!((round.resealed, round.deferred), (2, 0));
    // None of a sealed day is left (from midnight to the seal of yesterday, an hour later, the
    // events of yesterday mark it).
    let marks: u64 = store
        .client()
        .query(
            "SELECT count() FROM rollup_days_reopened \
             WHERE day < (SELECT max(until) FROM rollup_days_sealed)",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(marks, 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(
        parts(&store, "c1", windows[0])
            .await
            .contains(&Part::Days(base, sealed_end))
    );
    assert_same(&store, &windows).await;
    assert_same_combined(&store, &windows).await;

    // An hour marked for repair in a sealed day is read from samples, its day by the hour.
    store
        .client()
        .query("INSERT INTO rollup_dirty VALUES ('acme', 'v', 'c1', toDateTime(?), 0)")
        .bind((base + DAY_MS + 9 * HOUR_MS) / 1000)
        .execute()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let carved = parts(&store, "c1", windows[0]).await;
    assert!(
        carved.contains(&Part::Samples(
            base + DAY_MS + 9 * HOUR_MS,
            base + DAY_MS + 10 * HOUR_MS
        )),
        "{carved:?}"
    );
    assert!(
        carved.contains(&Part::Days(base + 2 * DAY_MS, sealed_end)),
        "{carved:?}"
    );
    assert_same(&store, &windows).await;

    // The daily series of every customer, in UTC, takes whole days from the grain too.
    for aggregation in [
        Aggregation::Sum,
        Aggregation::UniqueCount,
        Aggregation::Latest,
    ] {
        let meter = METERS.iter().find(|m| m.1 == aggregation).unwrap().0;
        let q = |utc_days| SeriesQuery {
            scope: Scope {
                tenant: "acme",
                meter,
                customer: None,
                filters: &[],
                as_of_ms: None,
            },
            aggregation,
            from_ms: base - HOUR_MS,
            to_ms: now_ms + HOUR_MS,
            window_size: WindowSize::Day,
            timezone: "UTC",
            hours_align: true,
            utc_days,
            group_by: &[],
        };
        let got = UsageReader::uncached(store.clone())
            .series(&q(true))
            .await
            .unwrap();
        let parts = window::split(base - HOUR_MS, now_ms + HOUR_MS, true);
        let want = store
            .series(&series_statement(&parts, &q(false)))
            .await
            .unwrap();
        assert_eq!(got, want, "daily series of {meter}");
        // Six days of both customers, and c1's event of ten minutes ago (yesterday's until
        // ten past midnight).
        let today_too = usize::from((now_ms - 600_000) / DAY_MS == now_ms / DAY_MS);
        assert_eq!(got.len(), 2 * 6 + today_too);
    }
    app.shutdown().await;
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

/// A customer whose window holds too many samples to be read from them alone, but few outside
/// the day grain's whole days, is read from those days and its samples for the rest: the same
/// answer as the rollups give, one part less. Which plan a read took shows in a count: samples
/// written behind the rollups (no view took them) are seen only when the hours around them are
/// read from samples.
#[tokio::test]
async fn a_denser_customers_ragged_window_takes_the_grains_days_and_samples_for_the_rest() {
    let app = app_with_meters("days_plan").await;
    // An event an hour for six whole days before today (UTC), for c1 and c2.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let base = (now_ms / DAY_MS - 6) * DAY_MS;
    let at = |h: i64| hour_event_at(base, h);
    let events = hourly_events(base, 0..6 * 24);
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
    let store = app.store().await;
    age_marks(&store).await;
    let round = store
        .compact_days(10, 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(round.sealed >= 4, "{round:?}");
    // Two whole sealed days (2 and 3) between a day and a half of partial ones.
    let window = (
        base + DAY_MS + 7 * HOUR_MS + 13_000,
        base + 4 * DAY_MS + 5 * HOUR_MS + 1_000,
    );
    let grain = store.day_parts("acme", Some("c1"), window).await.unwrap();
    assert!(grain.sealed_until_ms >= base + 4 * DAY_MS, "{grain:?}");
    // c1's samples behind the rollups: two in a whole hour of a partial day, two in a day the
    // grain holds (neither the grain nor the hour rollup has them).
    for at in [
        base + DAY_MS + 10 * HOUR_MS + 5,
        base + 2 * DAY_MS + 10 * HOUR_MS + 5,
    ] {
        store
            .client()
            .query(
                "INSERT INTO usage_samples (tenant, meter, customer, group_keys, group_values, ts_ms, ts, value, value_str, event_id, ingested_ms, batch_id) \
                 SELECT 'acme', 'v', 'c1', ['model'], ['a'], toInt64(?) + number, toDateTime(intDiv(toInt64(?) + number, 1000)), toDecimal128(1, 12), '', concat('behind-', toString(?), '-', toString(number)), toInt64(?), 77 FROM numbers(2)",
            )
            .bind(at)
            .bind(at)
            .bind(at)
            .bind(now_ms)
            .execute()
            .await
            .unwrap();
    }
    let meters: Vec<(&str, Aggregation)> = METERS.iter().map(|&(m, a, _)| (m, a)).collect();
    let meters = &meters[..];
    let sorted = |mut rows: Vec<MeterGroupUsage>| {
        rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
        rows
    };
    let events_of = |rows: &[MeterGroupUsage]| -> u64 {
        rows.iter()
            .filter(|r| r.meter == "v")
            .map(|r| r.count)
            .sum()
    };
    // About 70 events in the window (a sample of each meter each), 22 outside its two whole
    // days: with reads of at most 3 x 40 samples alone, not light as a whole, light outside
    // the grain's days.
    let reader = UsageReader::uncached(store.clone()).with_light_read_samples(3 * 40);
    let read = |reader: UsageReader, customer: &'static str| async move {
        sorted(
            reader
                .of_meters_from_store("acme", customer, window, meters, false)
                .await
                .unwrap()
                .unwrap(),
        )
    };
    let in_window = (0..6 * 24)
        .filter(|&h| (window.0..window.1).contains(&at(h)))
        .count() as u64;
    let first = read(reader.clone(), "c1").await;
    assert_eq!(
        events_of(&first),
        in_window,
        "unknown customer: the rollups, blind to c1's samples behind"
    );
    let second = read(reader.clone(), "c1").await;
    assert_eq!(
        events_of(&second),
        in_window + 2,
        "the hours outside the grain's days from samples, its days from the grain"
    );
    // c2 has none behind: both plans give the same answer, every aggregation and group.
    let rollups = read(reader.clone(), "c2").await;
    let planned = read(reader.clone(), "c2").await;
    assert_eq!(planned, rollups);
    // A bound under what lies outside the days: the rollups again.
    let strict = UsageReader::uncached(store.clone()).with_light_read_samples(3 * 15);
    assert_eq!(events_of(&read(strict.clone(), "c1").await), in_window);
    assert_eq!(events_of(&read(strict, "c1").await), in_window);
    app.shutdown().await;
}

/// Waits until `sql` (a count) is at least 1.
async fn eventually(store: &Store, sql: &str) {
    for _ in 0..300 {
        let n: u64 = store.client().query(sql).fetch_one().await.unwrap();
        if n >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 30 s: {sql}");
}

/// Waits for every mutation of `table` to be done.
async fn mutations_done(store: &Store, table: &str) {
    let sql = format!(
        "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
         AND table = '{table}' AND is_done = 0"
    );
    for _ in 0..300 {
        let n: u64 = store.client().query(&sql).fetch_one().await.unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mutations of {table} not done within 30 s");
}

#[tokio::test]
async fn a_current_period_reads_its_closed_days_from_states_to_date_never_stale_ones() {
    let app = app_with_meters("days_to_date").await;
    // An event an hour for six whole days before today (UTC) and today up to ten minutes ago,
    // for c1 and c2.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let base = (now_ms / DAY_MS - 6) * DAY_MS;
    let hours = (0..7 * 24).filter(|&h| hour_event_at(base, h) < now_ms - 600_000);
    let mut events = hourly_events(base, hours);
    // A current period: from a ragged start in day 1 to beyond now. c1 has an event ahead of
    // now in its last, partial hour (events are taken up to a day ahead), the latest of all.
    let window = (base + DAY_MS + 7 * HOUR_MS + 13_000, now_ms + HOUR_MS);
    events.push(
        json!({"id": "c1-ahead", "customer": "c1", "type": "measure", "timestamp": window.1 - 1,
        "properties": {"v": "7", "user": "u-ahead", "load": "1", "model": "b"}}),
    );
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
    let store = app.store().await;
    let patience = Duration::from_secs(60);
    age_marks(&store).await;
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    assert!(round.sealed >= 5, "{round:?}");
    let meters: Vec<(&str, Aggregation)> = METERS.iter().map(|&(m, a, _)| (m, a)).collect();
    let meters = &meters[..];
    let sorted = |mut rows: Vec<MeterGroupUsage>| {
        rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
        rows
    };
    // What the hours and samples alone give.
    let want = |customer: &'static str| {
        let store = store.clone();
        async move {
            let parts = window::split(window.0, window.1, true);
            let statement = combined_statement("acme", customer, &parts, meters);
            let rows = store.usage_of_meters(&statement, true).await.unwrap();
            sorted(rows.get(customer).cloned().unwrap_or_default())
        }
    };
    // No customer light enough for its samples alone; states asked for again after 100 ms
    // (a minute by default).
    // The states' horizon does not move while the test runs.
    let reader = UsageReader::uncached(store.clone())
        .with_light_read_samples(1)
        .with_to_date_retry(Duration::from_millis(100))
        .with_to_date_clock_stopped_at(now_ms);
    let read = |customer: &'static str, from_start: bool| {
        let reader = reader.clone();
        async move {
            sorted(
                reader
                    .of_meters_from_store("acme", customer, window, meters, from_start)
                    .await
                    .unwrap()
                    .unwrap(),
            )
        }
    };
    let complete = |customer: &str| {
        format!(
            "SELECT count() FROM usage_rollup_to_date FINAL WHERE customer = '{customer}' AND meter = '' \
             AND built_ms >= (SELECT max(version) FROM usage_rollup_day WHERE customer = '{customer}')"
        )
    };
    // The first read learns that the customer is not light, the second finds no states and
    // asks for them; the next reads take them.
    for customer in ["c1", "c2"] {
        let expected = want(customer).await;
        assert!(expected.len() >= 3, "{expected:?}");
        for nth in ["first", "second"] {
            assert_eq!(
                read(customer, true).await,
                expected,
                "{customer}, {nth} read"
            );
        }
        eventually(&store, &complete(customer)).await;
        assert_eq!(
            read(customer, true).await,
            expected,
            "{customer}, from its states"
        );
    }
    // A set of meters without a sum, an extreme or a latest value: the states' other columns
    // hold empty ones.
    let users = [("users", Aggregation::UniqueCount)];
    let parts = window::split(window.0, window.1, true);
    let statement = combined_statement("acme", "c2", &parts, &users);
    let expected = sorted(store.usage_of_meters(&statement, true).await.unwrap()["c2"].clone());
    for _ in 0..2 {
        let rows = reader
            .of_meters_from_store("acme", "c2", window, &users, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sorted(rows), expected);
    }
    eventually(
        &store,
        "SELECT count() FROM usage_rollup_to_date WHERE customer = 'c2' AND meter = '' AND meters = 'users:UniqueCount'",
    )
    .await;
    let rows = reader
        .of_meters_from_store("acme", "c2", window, &users, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sorted(rows), expected, "users alone, from its states");
    let latest_b = |rows: &[MeterGroupUsage]| {
        let row = rows.iter().find(|r| r.meter == "last" && r.values == ["b"]);
        row.map(|r| r.value.to_string())
    };
    assert_eq!(
        latest_b(&read("c1", true).await).as_deref(),
        Some("1"),
        "the event ahead of now, in the trailing edge"
    );
    let written: u64 = app
        .scalar(
            "SELECT max(n) FROM (SELECT count() AS n FROM usage_rollup_to_date \
             WHERE customer = 'c1' AND meter = '' GROUP BY meters, start_ms, until)",
        )
        .await;
    assert_eq!(
        written, 1,
        "one set of states per customer, meters, start and horizon"
    );

    // A late event of day 3: c1's day re-opens, and its read goes back to the hours at once.
    let late = json!([{"id": "late", "customer": "c1", "type": "measure", "timestamp": base + 3 * DAY_MS + 5 * HOUR_MS,
        "properties": {"v": "1000", "user": "u-late", "load": "999", "model": "a"}}]);
    let (status, _) = app.post_events("ingest_key_a", &late).await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let with_late = want("c1").await;
    let total = |rows: &[MeterGroupUsage]| -> u64 { rows.iter().map(|r| r.count).sum() };
    let before = read("c1", false).await;
    assert_eq!(total(&with_late), total(&before));
    assert_eq!(
        read("c1", true).await,
        with_late,
        "re-opened: not from the states"
    );

    // States of a horizon two days past go with the next round.
    store
        .client()
        .query(
            "INSERT INTO usage_rollup_to_date (tenant, customer, meters, start_ms, until, meter, built_ms) \
             VALUES ('acme', 'old', 'x', 0, toDateTime(?), '', 1)",
        )
        .bind((base + DAY_MS) / 1000)
        .execute()
        .await
        .unwrap();
    // So do marks of late hours four days before today and earlier.
    store
        .client()
        .query("INSERT INTO rollup_hours_late VALUES ('acme', 'old', toDateTime(?), now())")
        .bind((base + 2 * DAY_MS + 5 * HOUR_MS) / 1000)
        .execute()
        .await
        .unwrap();
    // The day written again: the states, older than it, are not read; new ones are written.
    age_marks(&store).await;
    let round = store.compact_days(10, 1_000, patience).await.unwrap();
    assert_eq!(round.resealed, 1, "{round:?}");
    let old: u64 = app
        .scalar("SELECT count() FROM usage_rollup_to_date WHERE customer = 'old'")
        .await;
    assert_eq!(old, 0, "states of a past horizon dropped");
    // Marks of late hours are kept for today and the three days before.
    let old_marks: u64 = app
        .scalar("SELECT count() FROM rollup_hours_late WHERE customer = 'old'")
        .await;
    assert_eq!(old_marks, 0, "marks of days past dropped");
    let three_days_back: u64 = app
        .scalar(&format!(
            "SELECT count() FROM rollup_hours_late WHERE customer = 'c1' AND hour = toDateTime({})",
            (base + 3 * DAY_MS + 5 * HOUR_MS) / 1000
        ))
        .await;
    assert!(
        three_days_back >= 1,
        "the late event's mark, three days back, kept"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(read("c1", true).await, with_late, "stale states not read");
    eventually(&store, &complete("c1")).await;
    assert_eq!(read("c1", true).await, with_late, "from the new states");

    // Those reads took the states: without c1's day grain rows, the read from the grain misses
    // its days, the read from the states does not.
    store
        .client()
        .query("ALTER TABLE usage_rollup_day DELETE WHERE customer = 'c1'")
        .execute()
        .await
        .unwrap();
    mutations_done(&store, "usage_rollup_day").await;
    assert!(total(&read("c1", false).await) < total(&with_late));
    assert_eq!(read("c1", true).await, with_late);
    app.shutdown().await;
}

#[tokio::test]
async fn states_reach_an_hour_ago_past_the_day_grain_and_never_miss_a_late_event_of_their_hours() {
    let app = app_with_meters("days_to_hour").await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let base = (now_ms / DAY_MS - 6) * DAY_MS;
    let hours = (0..7 * 24).filter(|&h| hour_event_at(base, h) < now_ms - 600_000);
    let (status, ack) = app
        .post_events("ingest_key_a", &json!(hourly_events(base, hours)))
        .await;
    assert_eq!(status, 202, "{ack}");
    let store = app.store().await;
    age_marks(&store).await;
    // Four days sealed: the day grain's horizon is two days before today, and states reach past
    // it, to the last hour that ended an hour (and the clocks' skew) ago.
    let round = store
        .compact_days(4, 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(round.sealed, 4, "{round:?}");
    let day_until = base + 4 * DAY_MS;
    let hour_until = (now_ms - 600_000) / HOUR_MS * HOUR_MS - HOUR_MS;
    assert!(hour_until >= day_until + DAY_MS);
    let window = (base + DAY_MS + 7 * HOUR_MS + 13_000, now_ms + HOUR_MS);
    let meters: Vec<(&str, Aggregation)> = METERS.iter().map(|&(m, a, _)| (m, a)).collect();
    let meters = &meters[..];
    let sorted = |mut rows: Vec<MeterGroupUsage>| {
        rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
        rows
    };
    let want = || {
        let store = store.clone();
        async move {
            let parts = window::split(window.0, window.1, true);
            let statement = combined_statement("acme", "c1", &parts, meters);
            let rows = store.usage_of_meters(&statement, true).await.unwrap();
            sorted(rows.get("c1").cloned().unwrap_or_default())
        }
    };
    // The horizon does not move while the test runs.
    let reader = UsageReader::uncached(store.clone())
        .with_light_read_samples(1)
        .with_to_date_retry(Duration::from_millis(100))
        .with_to_date_clock_stopped_at(now_ms);
    let read = |from_start: bool| {
        let reader = reader.clone();
        async move {
            sorted(
                reader
                    .of_meters_from_store("acme", "c1", window, meters, from_start)
                    .await
                    .unwrap()
                    .unwrap(),
            )
        }
    };
    let expected = want().await;
    for nth in ["first", "second"] {
        assert_eq!(read(true).await, expected, "{nth} read");
    }
    let complete_at = |until_ms: i64| {
        format!(
            "SELECT count() FROM usage_rollup_to_date FINAL WHERE customer = 'c1' AND meter = '' \
             AND until = toDateTime({})",
            until_ms / 1000
        )
    };
    eventually(&store, &complete_at(hour_until)).await;
    // States are written only once their last hour ended over an hour (and five minutes) ago by
    // ClickHouse's clock: every event of it arriving later is marked.
    let c2_until = |until_ms| ToDate {
        tenant: "acme",
        customer: "c2",
        start_ms: window.0,
        until_ms,
    };
    let this_hour = now_ms / HOUR_MS * HOUR_MS;
    assert!(!store.may_write_to_date(&c2_until(this_hour)).await.unwrap());
    assert!(
        store
            .may_write_to_date(&c2_until(this_hour - 2 * HOUR_MS))
            .await
            .unwrap()
    );
    assert_eq!(
        read(true).await,
        expected,
        "from the states to {hour_until}"
    );

    // They were read: a group written into an hour they cover after them, with no event (so no
    // mark), is in the read of the hours and not in the read from the states.
    let injected = day_until + 3 * HOUR_MS;
    store
        .client()
        .query(
            "INSERT INTO usage_rollup_hour (tenant, meter, customer, group_keys, group_values, bucket, samples, sum_value) \
             SELECT 'acme', 'v', 'c1', ['model'], ['zz'], toDateTime(?), countState(), sumState(toDecimal128(1000, 12)) FROM system.one",
        )
        .bind(injected / 1000)
        .execute()
        .await
        .unwrap();
    let hours_read = read(false).await;
    assert!(
        hours_read.iter().any(|r| r.values == ["zz"]),
        "{hours_read:?}"
    );
    assert_eq!(read(true).await, expected, "the states, not the hours");
    store
        .client()
        .query("ALTER TABLE usage_rollup_hour DELETE WHERE group_values = ['zz']")
        .execute()
        .await
        .unwrap();
    mutations_done(&store, "usage_rollup_hour").await;

    // A late event of an hour they cover (an hour after the day grain's horizon): marked, so
    // the states written before it are not read again; the day grain's horizon's are.
    let late_at = day_until + HOUR_MS + 5 * 60_000;
    let late = json!([{"id": "late-hour", "customer": "c1", "type": "measure", "timestamp": late_at,
        "properties": {"v": "1000", "user": "u-late", "load": "999", "model": "a"}}]);
    let (status, _) = app.post_events("ingest_key_a", &late).await;
    assert_eq!(status, 202);
    eventually(
        &store,
        &format!(
            "SELECT count() FROM rollup_hours_late WHERE customer = 'c1' AND hour = toDateTime({}) \
             AND at > now() - 120",
            (late_at / HOUR_MS * HOUR_MS) / 1000
        ),
    )
    .await;
    eventually(&store, &complete_at(day_until)).await;
    let with_late = want().await;
    assert_ne!(with_late, expected);
    assert_eq!(read(true).await, with_late, "the late event counted");
    // States to that hour are not written again within five minutes of the mark: they would
    // not be read.
    let built = format!(
        "SELECT max(built_ms) FROM usage_rollup_to_date WHERE customer = 'c1' AND meter = '' \
         AND until = toDateTime({})",
        hour_until / 1000
    );
    let built_before: u64 = app.scalar(&built).await;
    for _ in 0..5 {
        assert_eq!(read(true).await, with_late);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let built_after: u64 = app.scalar(&built).await;
    assert_eq!(
        built_after, built_before,
        "not written again so soon after the mark"
    );
    app.shutdown().await;
}
