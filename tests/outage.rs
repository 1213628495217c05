//! ClickHouse dies mid-stream (SIGKILL) while clients ingest and read: requests get 503 (never
//! a 500), readiness says so, and once it is back every acknowledged event is present exactly
//! once, clients' retries included, and the usage read counts exactly those events.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{scratch_dir, spawn_with, start_clickhouse, test_config};
use serde_json::{Value, json};

const CLIENTS: usize = 10;
const REQUESTS: usize = 40;
const EVENTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_clickhouse_outage_exactly_once() {
    let mut clickhouse = start_clickhouse(scratch_dir("outage"));
    let mut config = test_config("outage", &clickhouse.url());
    config.ack_timeout_ms = 5_000;
    let app = Arc::new(spawn_with(config, true).await);
    for (path, body) in [
        (
            "/v1/plans",
            json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
            "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.001"}]}),
        ),
        (
            "/v1/customers",
            json!({"external_id": "c1", "name": "Acme"}),
        ),
        (
            "/v1/subscriptions",
            json!({"external_id": "sub_1", "customer": "c1", "plan": "pro",
            "start_date": (chrono::Utc::now() - chrono::TimeDelta::days(1)).to_rfc3339()}),
        ),
    ] {
        let (status, answer) = app
            .post_raw(path, "admin_key_a", "application/json", body.to_string())
            .await;
        assert!(status < 300, "{path}: {status} {answer}");
    }
    let unavailable = Arc::new(AtomicUsize::new(0));
    // Readers ask for usage throughout: 200, or 503 while the store is down; nothing else.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (app, reading) = (app.clone(), reading.clone());
            tokio::spawn(async move {
                let (mut ok, mut down) = (0, 0);
                while reading.load(Ordering::Relaxed) {
                    let response = app
                        .get("/v1/subscriptions/sub_1/usage", Some("read_key_a"))
                        .await;
                    match response.status().as_u16() {
                        200 => ok += 1,
                        503 => {
                            assert!(response.headers().contains_key("retry-after"));
                            down += 1;
                        }
                        other => panic!("a read during the outage answered {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (ok, down)
            })
        })
        .collect();

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (app, unavailable) = (app.clone(), unavailable.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for request in 0..REQUESTS {
                let ids: Vec<String> = (0..EVENTS)
                    .map(|i| format!("o{client}-{request}-{i}"))
                    .collect();
                let body = Value::Array(
                    ids.iter()
                        .map(|id| json!({"id": id, "customer": "c1", "type": "api_call"}))
                        .collect(),
                );
                // Retry until acknowledged, as a client following Retry-After would.
                for _attempt in 0..300 {
                    let (status, answer) = app.post_events("ingest_key_a", &body).await;
                    match status {
                        202 => {
                            let ack = &answer;
                            assert_eq!(
                                ack["accepted"].as_u64().unwrap()
                                    + ack["duplicates"].as_u64().unwrap(),
                                EVENTS as u64
                            );
                            acknowledged.extend(ids.iter().cloned());
                            break;
                        }
                        503 => {
                            assert_eq!(answer["code"], "unavailable");
                            unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => panic!("unexpected {other}: {answer}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acknowledged
        }));
    }

    tokio::time::sleep(Duration::from_millis(400)).await;
    clickhouse.kill().await;
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), 503, "readiness must reflect the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    clickhouse.restart().await.expect("restart clickhouse");

    let mut acknowledged = HashSet::new();
    for client in clients {
        let ids = client.await.unwrap();
        assert_eq!(
            ids.len(),
            REQUESTS * EVENTS,
            "every request was eventually acknowledged"
        );
        acknowledged.extend(ids);
    }
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "the outage must have been visible as 503"
    );
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    reading.store(false, Ordering::Relaxed);
    let (mut reads_ok, mut reads_down) = (0, 0);
    for reader in readers {
        let (ok, down) = reader.await.unwrap();
        reads_ok += ok;
        reads_down += down;
    }
    assert!(
        reads_ok > 0 && reads_down > 0,
        "reads: {reads_ok} answered, {reads_down} refused with 503"
    );
    // Once back, usage counts exactly the acknowledged events.
    let usage: Value = app
        .get("/v1/subscriptions/sub_1/usage", Some("read_key_a"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        usage["charges"][0]["quantity"],
        json!(acknowledged.len().to_string()),
        "{usage}"
    );

    let store = app.store().await;
    let stored: Vec<String> = store
        .client()
        .query("SELECT id FROM events")
        .fetch_all()
        .await
        .unwrap();
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "no event stored twice");
    assert_eq!(
        unique, acknowledged,
        "exactly the acknowledged events are stored"
    );
    let samples = store
        .client()
        .query("SELECT count() FROM usage_samples")
        .fetch_one::<u64>()
        .await
        .unwrap();
    assert_eq!(
        samples as usize,
        acknowledged.len(),
        "every event has its one sample"
    );
    Arc::try_unwrap(app).ok().unwrap().shutdown().await;
    clickhouse.stop().await;
}
