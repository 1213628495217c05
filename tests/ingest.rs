//! POST /v1/events against a real ClickHouse: body forms, validation, limits, dedup,
//! concurrency, tenants and roles, rate limits, operations endpoints.

mod common;

use common::{clickhouse_url, events, spawn_app, spawn_with, test_config};
use meterhouse::config::Config;
use serde_json::{Value, json};

#[tokio::test]
async fn every_body_form_and_alias_is_stored_with_its_samples() {
    let app = spawn_app("body_forms").await;
    let bodies = [
        ("application/json", json!({"id": "single", "customer": "c1", "type": "api_call"}).to_string()),
        ("application/json", json!([{"transaction_id": "lago", "external_customer_id": "c1", "code": "api_call"}]).to_string()),
        ("application/json", json!({"events": [{"event_id": "flex", "external_customer_id": "c1", "event_name": "api_call"}]}).to_string()),
        ("application/x-ndjson", format!("{}\n{}\n",
            json!({"id": "nd1", "subject": "c1", "type": "api_call", "timestamp": chrono::Utc::now().timestamp()}),
            json!({"id": "nd2", "customer": "c2", "type": "llm_call", "timestamp": chrono::Utc::now().to_rfc3339(),
                   "properties": {"tokens": "1250.5", "model": "gpt-x", "region": "eu", "usage": {"input_tokens": 40}}}))),
    ];
    for (content_type, body) in bodies {
        let (status, ack) = app
            .post_raw("/v1/events", "ingest_key_a", content_type, body.clone())
            .await;
        assert_eq!(status, 202, "{body}: {ack}");
        assert_eq!(ack["duplicates"], 0);
    }
    assert_eq!(
        app.scalar("SELECT count() FROM events WHERE tenant = 'acme'")
            .await,
        5
    );
    let ids: Vec<String> = app
        .store()
        .await
        .client()
        .query("SELECT id FROM events ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ids, vec!["flex", "lago", "nd1", "nd2", "single"]);
    // api_call -> calls (4 events); llm_call -> tokens and eu_tokens (1 event each).
    assert_eq!(
        app.scalar("SELECT count() FROM usage_samples WHERE meter = 'calls'")
            .await,
        4
    );
    let tokens: Vec<(String, String, String)> = app.store().await.client()
        .query("SELECT meter, arrayStringConcat(group_values, ','), toString(value) FROM usage_samples WHERE customer = 'c2' ORDER BY meter")
        .fetch_all().await.unwrap();
    assert_eq!(
        tokens,
        vec![
            ("eu_tokens".into(), "".into(), "40.000000000000".into()),
            ("tokens".into(), "gpt-x".into(), "1250.500000000000".into()),
        ]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_invalid_event_rejects_the_whole_request_and_writes_nothing() {
    let app = spawn_app("invalid").await;
    let body = json!([
        {"id": "ok-1", "customer": "c1", "type": "api_call"},
        {"id": "bad-ts", "customer": "c1", "type": "api_call", "timestamp": "yesterday"},
        {"customer": "c1", "type": "api_call"},
        {"id": "bad-val", "customer": "c1", "type": "llm_call", "properties": {"tokens": "lots"}},
        {"id": "old", "customer": "c1", "type": "api_call", "timestamp": "2020-01-01T00:00:00Z"},
    ]);
    let (status, answer) = app.post_events("ingest_key_a", &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "invalid_events");
    let errors: Vec<(u64, String)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "timestamp".into()),
            (2, "id".into()),
            (3, "properties.tokens".into()),
            (4, "timestamp".into())
        ]
    );
    assert_eq!(app.scalar("SELECT count() FROM events").await, 0);
    assert_eq!(app.scalar("SELECT count() FROM usage_samples").await, 0);

    let (status, answer) = app
        .post_raw(
            "/v1/events",
            "ingest_key_a",
            "application/json",
            "{not json".into(),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request"))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn requests_over_the_limits_get_413() {
    let app = spawn_app("limits").await;
    let (status, answer) = app
        .post_events("ingest_key_a", &events("many", "c1", 10_001))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("payload_too_large")),
        "{answer}"
    );
    let padding = "x".repeat(11 * 1024 * 1024);
    let huge =
        json!({"id": "huge", "customer": "c1", "type": "api_call", "properties": {"pad": padding}});
    let (status, answer) = app.post_events("ingest_key_a", &huge).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("payload_too_large")),
        "{answer}"
    );
    let (status, _) = app
        .post_events("ingest_key_a", &events("max", "c1", 10_000))
        .await;
    assert_eq!(status, 202, "exactly 10,000 events is allowed");
    assert_eq!(app.scalar("SELECT count() FROM events").await, 10_000);
    app.shutdown().await;
}

#[tokio::test]
async fn duplicates_within_and_across_requests_are_counted_once() {
    let app = spawn_app("dedup").await;
    let body = json!([
        {"id": "a", "customer": "c1", "type": "api_call"},
        {"id": "a", "customer": "c1", "type": "api_call"},
        {"id": "b", "customer": "c1", "type": "api_call"},
    ]);
    let (status, ack) = app.post_events("ingest_key_a", &body).await;
    assert_eq!(
        (status, ack),
        (202, json!({"accepted": 2, "duplicates": 1}))
    );
    let (_, ack) = app.post_events("ingest_key_a", &body).await;
    assert_eq!(ack, json!({"accepted": 0, "duplicates": 3}));
    let (_, ack) = app.post_events("admin_key_a", &json!([{"id": "b", "customer": "c9", "type": "api_call"}, {"id": "c", "customer": "c1", "type": "api_call"}])).await;
    assert_eq!(
        ack,
        json!({"accepted": 1, "duplicates": 1}),
        "ids are per tenant, whichever key sends them"
    );
    assert_eq!(app.scalar("SELECT count() FROM events").await, 3);
    assert_eq!(app.scalar("SELECT count() FROM usage_samples").await, 3);
    app.shutdown().await;
}

#[tokio::test]
async fn duplicates_are_recognised_after_a_restart() {
    let app = spawn_app("dedup_restart").await;
    let (_, ack) = app
        .post_events("ingest_key_a", &events("r", "c1", 100))
        .await;
    assert_eq!(ack["accepted"], 100);
    let config = app.config.clone();
    app.shutdown().await;

    let app = spawn_with(config, false).await;
    let (status, ack) = app
        .post_events("ingest_key_a", &events("r", "c1", 150))
        .await;
    assert_eq!(
        (status, ack),
        (202, json!({"accepted": 50, "duplicates": 100}))
    );
    assert_eq!(app.scalar("SELECT count() FROM events").await, 150);
    assert_eq!(app.scalar("SELECT uniqExact(id) FROM events").await, 150);
    app.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_clients_each_land_exactly_once() {
    let app = std::sync::Arc::new(spawn_app("concurrency").await);
    let mut clients = Vec::new();
    for client in 0..50 {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            let mut acked = 0;
            for chunk in 0..10 {
                let body: Vec<Value> = (0..100)
                    .map(|i| json!({"id": format!("c{client}-{}", chunk * 100 + i), "customer": format!("cust{client}"), "type": "api_call"}))
                    .collect();
                let body = Value::Array(body);
                let (status, ack) = app.post_events("ingest_key_a", &body).await;
                assert_eq!(status, 202, "{ack}");
                acked += ack["accepted"].as_u64().unwrap();
                if chunk == 0 {
                    // A client retrying a request it already got an answer for.
                    let (_, again) = app.post_events("ingest_key_a", &body).await;
                    assert_eq!(again["duplicates"], 100);
                }
            }
            acked
        }));
    }
    let mut acked = 0;
    for client in clients {
        acked += client.await.unwrap();
    }
    assert_eq!(acked, 50_000);
    assert_eq!(app.scalar("SELECT count() FROM events").await, 50_000);
    assert_eq!(app.scalar("SELECT uniqExact(id) FROM events").await, 50_000);
    assert_eq!(
        app.scalar("SELECT count() FROM usage_samples WHERE meter = 'calls'")
            .await,
        50_000
    );
    let batches = app.scalar("SELECT uniqExact(batch_id) FROM events").await;
    assert!(
        batches < 500,
        "500 requests should share inserts, got {batches} batches"
    );
    std::sync::Arc::try_unwrap(app)
        .ok()
        .unwrap()
        .shutdown()
        .await;
}

#[tokio::test]
async fn tenants_are_isolated_and_roles_enforced() {
    let app = spawn_app("tenants").await;
    let body = json!({"id": "same-id", "customer": "c1", "type": "api_call"});
    assert_eq!(
        app.post_events("ingest_key_a", &body).await.1,
        json!({"accepted": 1, "duplicates": 0})
    );
    assert_eq!(
        app.post_events("ingest_key_b", &body).await.1,
        json!({"accepted": 1, "duplicates": 0})
    );
    let tenants: Vec<String> = app
        .store()
        .await
        .client()
        .query("SELECT tenant FROM events ORDER BY tenant")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(tenants, vec!["acme", "beta"]);
    assert_eq!(
        app.scalar("SELECT count() FROM usage_samples WHERE tenant = 'beta' AND meter = 'calls'")
            .await,
        1
    );

    for (key, status, code) in [
        ("read_key_a", 403, "forbidden"),
        ("cust_key_a", 403, "forbidden"),
        ("nope_nope", 401, "unauthorized"),
    ] {
        let (got, answer) = app.post_events(key, &body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{key}: {answer}"
        );
    }
    let anonymous = app
        .http
        .post(format!("{}/v1/events", app.base))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let via_header = app
        .http
        .post(format!("{}/v1/events", app.base))
        .header("x-api-key", "ingest_key_b")
        .body(json!({"id": "x2", "customer": "c1", "type": "api_call"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), 202);
    app.shutdown().await;
}

#[tokio::test]
async fn created_api_keys_work_and_only_admins_create_them() {
    let app = spawn_app("api_keys").await;
    let (status, created) = app
        .post_raw(
            "/v1/api-keys",
            "admin_key_b",
            "application/json",
            json!({"role": "ingest", "name": "ci"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant"], "beta");
    let (status, _) = app
        .post_events(
            &key,
            &json!({"id": "k1", "customer": "c1", "type": "api_call"}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        app.scalar("SELECT count() FROM events WHERE tenant = 'beta'")
            .await,
        1
    );
    let stored: Vec<String> = app
        .store()
        .await
        .client()
        .query("SELECT key_hash FROM api_keys")
        .fetch_all()
        .await
        .unwrap();
    assert!(
        !stored.iter().any(|h| h.contains(&key)),
        "only a digest is stored"
    );

    let (status, _) = app
        .post_raw(
            "/v1/api-keys",
            "ingest_key_a",
            "application/json",
            json!({"role": "admin"}).to_string(),
        )
        .await;
    assert_eq!(status, 403);
    let (status, answer) = app
        .post_raw(
            "/v1/api-keys",
            "admin_key_a",
            "application/json",
            json!({"role": "customer"}).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, answer) = app
        .post_raw(
            "/v1/api-keys",
            "admin_key_a",
            "application/json",
            "{".into(),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request"))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let mut config = test_config("rate_limit", &clickhouse_url());
    config.rate_limit_rps = 3;
    let app = spawn_with(config, true).await;
    let mut limited = None;
    for i in 0..20 {
        let response = app
            .http
            .post(format!("{}/v1/events", app.base))
            .bearer_auth("ingest_key_a")
            .body(json!({"id": format!("rl{i}"), "customer": "c1", "type": "api_call"}).to_string())
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("20 requests at once must exceed 3 requests/s");
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Another key of the same tenant has its own budget.
    let (status, _) = app
        .post_events(
            "admin_key_a",
            &json!({"id": "other", "customer": "c1", "type": "api_call"}),
        )
        .await;
    assert_eq!(status, 202);
    app.shutdown().await;
}

#[tokio::test]
async fn sql_looking_strings_are_stored_verbatim() {
    let app = spawn_app("injection").await;
    let nasty = "'); DROP TABLE events; --";
    let body = json!({"id": nasty, "customer": nasty, "type": "api_call", "properties": {"q": nasty, "\\": "\\'"}});
    let (status, _) = app.post_events("ingest_key_a", &body).await;
    assert_eq!(status, 202);
    let row: (String, String, String) = app
        .store()
        .await
        .client()
        .query("SELECT id, customer, properties FROM events WHERE id = ?")
        .bind(nasty)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((row.0.as_str(), row.1.as_str()), (nasty, nasty));
    assert_eq!(
        serde_json::from_str::<Value>(&row.2).unwrap(),
        body["properties"]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn operations_endpoints_report_health_readiness_and_metrics() {
    let app = spawn_app("ops").await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let ready: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    app.post_events("ingest_key_a", &json!([{"id": "m1", "customer": "c", "type": "api_call"}, {"id": "m1", "customer": "c", "type": "api_call"}])).await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for line in [
        "meterhouse_events_accepted_total 1",
        "meterhouse_events_duplicate_total 1",
        "meterhouse_batches_inserted_total 1",
        "meterhouse_queue_events 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.contains("meterhouse_insert_duration_seconds_count 1"));
    let missing = app.get("/v1/nothing", Some("read_key_a")).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["status"], 404);
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_a_pending_batch_before_exiting() {
    let mut config = test_config("shutdown_flush", &clickhouse_url());
    config.batch_max_wait_ms = 3_000;
    let app = spawn_with(config, true).await;
    let http = app.http.clone();
    let url = format!("{}/v1/events", app.base);
    let request = tokio::spawn(async move {
        http.post(url)
            .bearer_auth("ingest_key_a")
            .body(events("late", "c1", 10).to_string())
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let store = app.store().await;
    app.shutdown().await;
    assert_eq!(request.await.unwrap(), 202);
    assert_eq!(
        store
            .client()
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .unwrap(),
        10
    );
}

/// Writes two events of customer c1 (three samples) as batch `batch_id`, stamped `now_ms`, into
/// `events` only: as if the insert stopped after the table and before its view wrote
/// `usage_samples`.
async fn insert_without_samples(config: &Config, batch_id: u64, now_ms: i64) {
    let body = json!([{"id": "h1", "customer": "c1", "type": "api_call"},
                      {"id": "h2", "customer": "c1", "type": "llm_call", "properties": {"tokens": 5, "region": "eu", "usage": {"input_tokens": 2}}}]);
    common::insert_bypassing(config, "events_to_usage_samples", batch_id, now_ms, &body).await;
}

#[tokio::test]
async fn a_batch_stored_without_its_samples_is_repaired_when_settled() {
    use meterhouse::ingest::settle::landed;
    let app = spawn_app("repair").await;
    let store = app.store().await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    insert_without_samples(&app.config, 77, now_ms).await;
    assert_eq!(app.scalar("SELECT count() FROM usage_samples").await, 0);

    assert_eq!(landed(&store, &[77, 78], now_ms).await.unwrap(), vec![77]);
    assert_eq!(
        app.scalar("SELECT count() FROM usage_samples WHERE batch_id = 77")
            .await,
        3
    );
    // Settling again finds the samples complete and adds nothing.
    assert_eq!(landed(&store, &[77], now_ms).await.unwrap(), vec![77]);
    assert_eq!(app.scalar("SELECT count() FROM usage_samples").await, 3);
    let sum: String = store
        .client()
        .query("SELECT toString(sum(value)) FROM usage_samples WHERE meter = 'tokens'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(sum, "5.000000000000");
    app.shutdown().await;
}

/// A writer killed (kill -9, a lost host) with a batch in flight or in doubt leaves it to the
/// next process: started on the same database, it settles every batch that the dead writer's
/// last beat did not vouch for, before it accepts events (missing samples re-derived, hours
/// marked for readers, the change recorded), and marks the dead writer settled.
#[tokio::test]
async fn a_dead_writers_unsettled_batch_is_settled_by_the_next_process() {
    let app = spawn_app("dead_writer").await;
    let config = app.config.clone();
    app.shutdown().await;
    let unsettled = "SELECT count() FROM (SELECT writer FROM ingest_writer_beats GROUP BY writer \
                     HAVING max(settled_before_ms) < 9223372036854775807)";
    // A clean stop leaves nothing to settle.
    assert_eq!(scalar_of(&config, unsettled).await, 0);
    // The dead writer's batch 91, in `events` without its samples; its last beat, ten seconds
    // ago, vouched for the batches stamped until five seconds before this one.
    let now_ms = chrono::Utc::now().timestamp_millis();
    insert_without_samples(&config, 91, now_ms).await;
    let beat = format!(
        "INSERT INTO ingest_writer_beats VALUES \
         ('gone-1', 'embedded', 'elsewhere', 4242, now() - 10, {})",
        now_ms - 5_000
    );
    let store = common::store_of(&config).await;
    store.client().query(&beat).execute().await.unwrap();
    // A predecessor with this very host and pid (a container restarted at once, pid 1), its
    // last beat a moment ago: dead too, since no service of this process is it.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let beat = format!(
        "INSERT INTO ingest_writer_beats VALUES ('gone-2', 'embedded', '{}', {}, now(), {})",
        host.trim(),
        std::process::id(),
        now_ms - 5_000
    );
    store.client().query(&beat).execute().await.unwrap();
    let changes = "SELECT count() FROM usage_change_batches WHERE has(batches, 91)";
    let changes_before = scalar_of(&config, changes).await;
    assert_eq!(
        scalar_of(&config, "SELECT count() FROM usage_samples").await,
        0
    );
    assert_eq!(scalar_of(&config, unsettled).await, 2);

    let app = spawn_with(config.clone(), false).await;
    assert_eq!(
        app.scalar("SELECT count() FROM usage_samples WHERE batch_id = 91")
            .await,
        3
    );
    // Three meters of c1 in one hour: read from samples until the rollup is repaired, and
    // period-to-date states written before never read again.
    assert_eq!(app.scalar("SELECT count() FROM rollup_dirty").await, 3);
    assert_eq!(
        app.scalar("SELECT count() FROM rollup_hours_late WHERE customer = 'c1'")
            .await,
        1
    );
    assert_eq!(app.scalar(changes).await, changes_before + 1);
    app.shutdown().await;
    assert_eq!(scalar_of(&config, unsettled).await, 0);
    // Nothing is settled twice.
    let app = spawn_with(config.clone(), false).await;
    assert_eq!(app.scalar(changes).await, changes_before + 1);
    assert_eq!(app.scalar("SELECT count() FROM usage_samples").await, 3);
    app.shutdown().await;
}

/// Replicas that share their ids through Redis settle a dead embedded writer's batch too (the
/// database was run by one process, then by replicas), one of them, before loading the ids.
#[tokio::test]
async fn a_dead_embedded_writers_batch_is_settled_by_a_replica_sharing_redis() {
    let redis_port = common::free_server_port();
    let _redis = common::start_redis(redis_port, &common::scratch_dir("redis-dead-embedded"));
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    common::wait_redis(&redis_url).await;
    let app = spawn_app("dead_embedded_shared").await;
    let mut config = app.config.clone();
    app.shutdown().await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    insert_without_samples(&config, 92, now_ms).await;
    let beat = format!(
        "INSERT INTO ingest_writer_beats VALUES \
         ('gone-3', 'embedded', 'elsewhere', 4243, now() - 10, {})",
        now_ms - 5_000
    );
    let store = common::store_of(&config).await;
    store.client().query(&beat).execute().await.unwrap();
    assert_eq!(
        scalar_of(&config, "SELECT count() FROM usage_samples").await,
        0
    );

    config.redis_url = Some(redis_url);
    let app = spawn_with(config.clone(), false).await;
    assert_eq!(
        app.scalar("SELECT count() FROM usage_samples WHERE batch_id = 92")
            .await,
        3
    );
    let unsettled = "SELECT count() FROM (SELECT writer FROM ingest_writer_beats \
                     WHERE writer = 'gone-3' GROUP BY writer \
                     HAVING max(settled_before_ms) < 9223372036854775807)";
    assert_eq!(app.scalar(unsettled).await, 0);
    app.shutdown().await;
}

async fn scalar_of(config: &Config, sql: &str) -> u64 {
    let store = common::store_of(config).await;
    store.client().query(sql).fetch_one::<u64>().await.unwrap()
}

/// An OpenMeter-shaped CloudEvent is billed, not only accepted: `data` becomes the properties,
/// `time` the timestamp, `subject` the customer, `source`/`id` the dedup key; through
/// `/v1/events` and OpenMeter's own route. What would be dropped is a 400 naming the field.
#[tokio::test]
async fn cloudevents_are_billed_with_their_data_and_time() {
    let app = common::spawn_app("ingest_cloudevents").await;
    let time = chrono::Utc::now() - chrono::TimeDelta::hours(2);
    let event = json!({"specversion": "1.0", "id": "ce-1", "source": "svc", "type": "llm_call",
        "subject": "c1", "time": time.to_rfc3339(), "data": {"tokens": 700, "model": "gpt-x", "region": "eu"}});
    let send = |path: &'static str, content_type: &'static str, body: Value| {
        app.post_raw(path, "ingest_key_a", content_type, body.to_string())
    };
    let (status, ack) = send("/v1/events", "application/cloudevents+json", event.clone()).await;
    assert_eq!(
        (status, &ack),
        (202, &json!({"accepted": 1, "duplicates": 0}))
    );
    let (status, ack) = send("/v1/events", "application/cloudevents+json", event.clone()).await;
    assert_eq!(
        (status, &ack),
        (202, &json!({"accepted": 0, "duplicates": 1})),
        "same source and id"
    );
    let batch = json!([
        {"specversion": "1.0", "id": "ce-2", "source": "svc", "type": "llm_call", "subject": "c1",
         "time": time.to_rfc3339(), "data": {"tokens": 300, "model": "gpt-x"}},
        {"specversion": "1.0", "id": "ce-1", "source": "other", "type": "llm_call", "subject": "c1",
         "time": time.to_rfc3339(), "data": {"tokens": 5, "model": "gpt-y"}}]);
    let (status, answer) = send(
        "/openmeter/api/v1/events",
        "application/cloudevents-batch+json",
        batch,
    )
    .await;
    assert_eq!(status, 204, "{answer}");

    let from = (time - chrono::TimeDelta::minutes(1)).timestamp();
    let to = (time + chrono::TimeDelta::minutes(1)).timestamp();
    let path = format!(
        "/v1/meters/tokens/query?from={from}&to={to}&customer=c1&group_by=model&window_size=day"
    );
    let (status, series) = common::get_json(&app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{series}");
    let mut values: Vec<(String, String)> = series["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["group"]["model"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    values.sort();
    assert_eq!(
        values,
        [
            ("gpt-x".to_owned(), "1000".to_owned()),
            ("gpt-y".to_owned(), "5".to_owned())
        ]
    );

    for (path, content_type, body, field) in [
        (
            "/v1/events",
            "application/cloudevents+json",
            json!({"specversion": "1.0", "id": "x1", "source": "s", "type": "llm_call", "subject": "c1", "traceparent": "00-1"}),
            "traceparent",
        ),
        (
            "/v1/events",
            "application/json",
            json!({"id": "x2", "customer": "c1", "type": "llm_call", "data": {"tokens": 1}}),
            "data",
        ),
        (
            "/openmeter/api/v1/events",
            "application/cloudevents+json",
            json!({"specversion": "1.0", "id": "x3", "source": "s", "type": "llm_call", "subject": "c1", "data": "700"}),
            "data",
        ),
    ] {
        let (status, answer) = send(path, content_type, body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("invalid_events")),
            "{path}: {answer}"
        );
        assert_eq!(answer["errors"][0]["field"], field, "{answer}");
    }
    app.shutdown().await;
}

/// An insert attempt that this side gave up on may still run on the server; before anyone
/// looks for its rows it is stopped there, by its query id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_still_running_on_the_server_is_stopped_before_it_is_looked_for() {
    let app = spawn_app("kill_attempt").await;
    let store = app.store().await;
    let batch_id = 0xfeed_u64;
    let query_id = format!("mh:{}:{batch_id:016x}:1", store.database());
    // A statement that runs for long under the query id an attempt of this batch would have.
    let running = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .client()
                .query("SELECT count() FROM numbers(100000000000)")
                .with_setting("query_id", query_id)
                .fetch_one::<u64>()
                .await
        })
    };
    let in_flight =
        "SELECT count() FROM system.processes WHERE query_id LIKE 'mh:test\\_kill\\_attempt:%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.scalar(in_flight).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the statement never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.kill_inserts_of(batch_id).await.unwrap();
    assert_eq!(
        app.scalar(in_flight).await,
        0,
        "stopped before the kill returns"
    );
    assert!(
        running.await.unwrap().is_err(),
        "the statement did not finish"
    );
}
