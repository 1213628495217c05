//! Bounded work per request, against a real ClickHouse: what a hostile caller sends is refused
//! with a clear 4xx before it costs the service or ClickHouse anything, and a read that would
//! still go past its time or memory budget is answered `422 query_too_large`, not `503`.

mod common;

use common::{get_json, spawn_app, spawn_with, test_config};
use serde_json::{Value, json};

#[tokio::test]
async fn a_property_key_given_twice_is_refused_with_its_path() {
    let app = spawn_app("hardening_duplicates").await;
    let body = r#"[{"id": "d1", "customer": "c1", "type": "llm_call",
                    "properties": {"tokens": 5, "tokens": 500, "model": "m"}},
                   {"id": "d2", "customer": "c1", "type": "llm_call",
                    "properties": {"usage": {"input_tokens": 1, "input_tokens": 2}, "model": "m"}}]"#;
    let (status, answer) = app
        .post_raw(
            "/v1/events",
            "ingest_key_a",
            "application/json",
            body.into(),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "invalid_events");
    let fields: Vec<(u64, &str)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fields,
        [
            (0, "properties.tokens"),
            (1, "properties.usage.input_tokens")
        ]
    );
    assert_eq!(app.scalar("SELECT count() FROM events").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_group_value_past_its_bound_is_refused_and_group_by_is_deduplicated() {
    let app = spawn_app("hardening_groups").await;
    // The probe's request: a 9 MiB `model`, a property the `tokens` meter groups by.
    let huge = "x".repeat(9 << 20);
    let event = json!([{"id": "big", "customer": "c1", "type": "llm_call",
                        "properties": {"tokens": 1, "model": huge}}]);
    let (status, answer) = app.post_events("ingest_key_a", &event).await;
    assert_eq!(
        status,
        400,
        "{}",
        answer.to_string().chars().take(300).collect::<String>()
    );
    assert_eq!(answer["errors"][0]["field"], "properties.model");
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1024 bytes"),
        "{}",
        answer["errors"][0]
    );

    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"id": "ok", "customer": "c1", "type": "llm_call", "timestamp": now,
                         "properties": {"tokens": 7, "model": "gpt-x"}}]);
    assert_eq!(app.post_events("ingest_key_a", &events).await.0, 202);
    let window = format!("from={}&to={}", now - 3_600_000, now + 3_600_000);
    // The probe's `group_by=model,model` under a customer key, and `model` 200 times under a
    // read key: one key each.
    let repeated = vec!["model"; 200].join(",");
    for (group_by, key) in [
        ("model,model", "cust_key_a"),
        (repeated.as_str(), "read_key_a"),
    ] {
        let path = format!("/v1/meters/tokens/query?{window}&group_by={group_by}");
        let (status, series) = get_json(&app, &path, key).await;
        assert_eq!(status, 200, "{series}");
        let data = series["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{series}");
        assert_eq!(data[0]["group"], json!({"model": "gpt-x"}));
        assert_eq!(data[0]["value"], "7");
    }
    for (query, expected) in [
        ("&filter[region=eu", "filter[region"),
        ("&groupby=model", "groupby"),
        ("&group_by=model&group_by=model", "group_by"),
        (
            &format!("&filter[model]={}", "v".repeat(2000)),
            "filter[model]",
        ),
    ] {
        let path = format!("/v1/meters/tokens/query?{window}{query}");
        let (status, answer) = get_json(&app, &path, "read_key_a").await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("invalid_request")),
            "{query}: {answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with(expected), "{query}: {message}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_read_past_its_memory_budget_is_a_422_that_says_so() {
    let mut config = test_config("hardening_budget", &common::clickhouse_url());
    // Small enough that any read of the store goes past it.
    config.store.read_memory_bytes = 1_000;
    let app = spawn_with(config, true).await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = json!([{"id": "e", "customer": "c1", "type": "llm_call", "timestamp": now,
                         "properties": {"tokens": 7, "model": "gpt-x"}}]);
    assert_eq!(
        app.post_events("ingest_key_a", &events).await.0,
        202,
        "ingest has no read budget"
    );
    let path = format!(
        "/v1/meters/tokens/query?from={}&to={}&group_by=model",
        now - 3_600_000,
        now + 3_600_000
    );
    let (status, answer) = get_json(&app, &path, "read_key_a").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("query_too_large")),
        "{answer}"
    );
    let (status, ready): (u16, Value) = get_json(&app, "/readyz", "read_key_a").await;
    assert_eq!(status, 200, "the store is not down: {ready}");
    app.shutdown().await;
}
