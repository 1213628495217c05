//! Hours marked for repair (`rollup_dirty`) are rebuilt from samples and unmarked, so that reads
//! return to the rollup; an hour a batch wrote into while it was rebuilt stays marked until a
//! later round.

mod common;

use std::time::Duration;

use common::{spawn_with, test_config};
use meterhouse::store::{Repaired, Store};
use serde_json::json;

/// Per (meter, customer, hour): samples and the sum of values, from the rollup.
const FROM_ROLLUP: &str = "SELECT meter, customer, toUInt32(bucket) AS hour, countMerge(samples), \
     toString(sumMerge(sum_value)), uniqExactMerge(distinct_values) FROM usage_rollup_hour \
     GROUP BY meter, customer, hour ORDER BY meter, customer, hour";
/// The same, from the samples.
const FROM_SAMPLES: &str = "SELECT meter, customer, toUInt32(intDiv(toUInt32(ts), 3600) * 3600) \
     AS hour, count(), toString(sum(value)), uniqExact(value_str) FROM usage_samples \
     GROUP BY meter, customer, hour ORDER BY meter, customer, hour";

type Figures = Vec<(String, String, u32, u64, String, u64)>;

async fn figures(store: &Store, sql: &str) -> Figures {
    store.client().query(sql).fetch_all().await.unwrap()
}

async fn scalar(store: &Store, sql: &str) -> u64 {
    store.client().query(sql).fetch_one().await.unwrap()
}

async fn run(store: &Store, sql: &str) {
    store.client().query(sql).execute().await.unwrap();
}

/// The half hour two hours ago (epoch seconds): every event of a test sits in one closed hour.
fn half_past() -> i64 {
    let now = chrono::Utc::now().timestamp();
    now - now.rem_euclid(3600) - 2 * 3600 + 1800
}

/// Batch 95 of c1 and c2 stored without its rollup rows (an insert stopped before the rollup's
/// view), c1's tokens rows then written twice: both wrong, both marked when settled.
async fn damage(config: &meterhouse::config::Config, at: i64) -> Store {
    let store = common::store_of(config).await;
    let body = json!([
        {"id": "r1", "customer": "c1", "type": "api_call", "timestamp": at},
        {"id": "r2", "customer": "c1", "type": "llm_call", "timestamp": at, "properties": {"tokens": 5, "region": "eu"}},
        {"id": "r3", "customer": "c2", "type": "llm_call", "timestamp": at, "properties": {"tokens": 7, "region": "us"}},
    ]);
    let now_ms = chrono::Utc::now().timestamp_millis();
    common::insert_bypassing(config, "events_to_usage_rollup_hour", 95, now_ms, &body).await;
    run(&store, "INSERT INTO usage_rollup_hour SELECT * FROM usage_rollup_hour WHERE customer = 'c1' AND meter = 'tokens'").await;
    let landed = meterhouse::ingest::settle::landed(&store, &[95], now_ms)
        .await
        .unwrap();
    assert_eq!(landed, vec![95]);
    store
}

#[tokio::test]
async fn marked_hours_are_rebuilt_and_unmarked_unless_written_meanwhile() {
    let mut config = test_config("repair_rounds", &common::clickhouse_url());
    config.rollup_maintenance_every_s = 0;
    let app = spawn_with(config.clone(), true).await;
    let at = half_past();
    let events = json!([
        {"id": "ok1", "customer": "c1", "type": "llm_call", "timestamp": at, "properties": {"tokens": 100, "region": "eu"}},
        {"id": "ok2", "customer": "c2", "type": "api_call", "timestamp": at},
    ]);
    let (status, _) = app.post_events("ingest_key_a", &events).await;
    assert_eq!(status, 202);
    let store = damage(&config, at).await;
    assert_ne!(
        figures(&store, FROM_ROLLUP).await,
        figures(&store, FROM_SAMPLES).await
    );
    // c1: calls and tokens; c2: tokens.
    assert_eq!(scalar(&store, "SELECT count() FROM rollup_dirty").await, 3);

    // Five minutes on, the batches' changes are past the round's look-back; then one more
    // event of c1's calls in that hour, while the hours are being repaired.
    run(&store, "TRUNCATE TABLE usage_change_batches").await;
    let late = json!([{"id": "late1", "customer": "c1", "type": "api_call", "timestamp": at + 60}]);
    let (status, _) = app.post_events("ingest_key_a", &late).await;
    assert_eq!(status, 202);
    let patience = Duration::from_secs(60);
    // A round takes the marks of the seconds before it started (server clock).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let round = store.repair_dirty_hours(1_000, patience).await.unwrap();
    assert_eq!(
        round,
        Repaired {
            repaired: 2,
            deferred: 1
        }
    );
    let marked: Vec<(String, String)> = store
        .client()
        .query("SELECT meter, customer FROM rollup_dirty")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(marked, vec![("calls".to_owned(), "c1".to_owned())]);

    run(&store, "TRUNCATE TABLE usage_change_batches").await;
    let round = store.repair_dirty_hours(1_000, patience).await.unwrap();
    assert_eq!(
        round,
        Repaired {
            repaired: 1,
            deferred: 0
        }
    );
    assert_eq!(scalar(&store, "SELECT count() FROM rollup_dirty").await, 0);
    assert_eq!(
        figures(&store, FROM_ROLLUP).await,
        figures(&store, FROM_SAMPLES).await
    );
    assert!(!store.may_have_dirty_hours().await.unwrap());
    // Nothing left: a round does nothing.
    let round = store.repair_dirty_hours(1_000, patience).await.unwrap();
    assert_eq!(round, Repaired::default());
    app.shutdown().await;
}

/// The service repairs by itself, every `--rollup-maintenance-every-s`.
#[tokio::test]
async fn the_service_repairs_marked_hours_in_the_background() {
    let mut config = test_config("repair_background", &common::clickhouse_url());
    config.rollup_maintenance_every_s = 1;
    let app = spawn_with(config.clone(), true).await;
    let store = damage(&config, half_past()).await;
    run(&store, "TRUNCATE TABLE usage_change_batches").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while scalar(&store, "SELECT count() FROM rollup_dirty").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hours still marked after a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        figures(&store, FROM_ROLLUP).await,
        figures(&store, FROM_SAMPLES).await
    );
    app.shutdown().await;
}

/// A statement of an earlier maintenance round still running on the server (its process died,
/// or its lock ran out) is stopped before a round starts: landing after the round's deletions, it
/// would count rows twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_first_stops_a_statement_left_by_an_earlier_one() {
    let config = test_config("repair_orphans", &common::clickhouse_url());
    let store = common::empty_database(&config).await;
    meterhouse::store::migrate::run(&store).await.unwrap();
    let orphan = store
        .client()
        .clone()
        .with_setting("query_id", format!("mh:{}:maint:orphan", store.database()));
    let started = std::time::Instant::now();
    let running = tokio::spawn(async move {
        orphan
            .query("SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 7")
            .fetch_one::<u64>()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    store
        .repair_dirty_hours(10, Duration::from_secs(5))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), running).await;
    let stopped = matches!(outcome, Ok(Ok(Err(_))));
    if !stopped {
        let kill = format!(
            "KILL QUERY WHERE query_id = 'mh:{}:maint:orphan'",
            store.database()
        );
        store.client().query(&kill).execute().await.unwrap();
    }
    assert!(stopped, "the orphan was not stopped: {outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
