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
    // The vendors' ingest routes, whose bodies are parsed whole before they are rewritten.
    for (path, body) in [
        (
            "/lago/api/v1/events",
            r#"{"event": {"transaction_id": "l1", "external_customer_id": "c1",
            "code": "llm_call", "properties": {"tokens": 5, "tokens": 500}}}"#,
        ),
        (
            "/flexprice/v1/events",
            r#"{"event_id": "f1", "external_customer_id": "c1",
            "event_name": "llm_call", "properties": {"tokens": 5, "tokens": 500}}"#,
        ),
    ] {
        let (status, answer) = app
            .post_raw(path, "ingest_key_a", "application/json", body.into())
            .await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(answer.to_string().contains("tokens"), "{path}: {answer}");
    }
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

/// Every error the HTTP layer answers, routing and extractors included, has the contract's
/// JSON shape and a status that matches its body.
#[tokio::test]
async fn protocol_errors_have_the_error_shape() {
    let app = spawn_app("hardening_shapes").await;
    let expect = |what: &str, status: u16, answer: &Value, code: &str| {
        assert_eq!(
            (status, answer["status"].as_u64(), answer["code"].as_str()),
            (status, Some(u64::from(status)), Some(code)),
            "{what}: {answer}"
        );
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    };
    let response = app
        .http
        .delete(format!("{}/v1/meters", app.base))
        .bearer_auth("admin_key_a")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    expect(
        "DELETE /v1/meters",
        status,
        &response.json().await.unwrap(),
        "method_not_allowed",
    );
    assert_eq!(status, 405);

    let (status, answer) = get_json(&app, "/v1/customers/%FF", "read_key_a").await;
    expect(
        "a path segment that is not UTF-8",
        status,
        &answer,
        "invalid_request",
    );

    let (status, answer) = get_json(
        &app,
        "/v1/subscriptions/s/usage?from=1&from=2",
        "read_key_a",
    )
    .await;
    expect(
        "a repeated query parameter",
        status,
        &answer,
        "invalid_request",
    );

    let plan = r#"{"code": "p", "name": "P", "currency": "USD", "interval": "month",
                   "prices": [{"code": "base", "type": "flat", "amount": 1e309}]}"#;
    let (status, answer) = app
        .post_raw("/v1/plans", "admin_key_a", "application/json", plan.into())
        .await;
    expect(
        "an amount no decimal holds",
        status,
        &answer,
        "invalid_request",
    );
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("prices[0].amount")
            && message.contains("is not a decimal")
            && !message.contains("serde_json"),
        "{message}"
    );

    let (status, answer) = app
        .post_raw(
            "/v1/customers",
            "admin_key_a",
            "text/plain",
            r#"{"external_id": "x"}"#.into(),
        )
        .await;
    expect(
        "a JSON route sent text/plain",
        status,
        &answer,
        "unsupported_media_type",
    );
    assert_eq!(status, 415);

    for encoding in ["br", "foo"] {
        let response = app
            .http
            .post(format!("{}/v1/events", app.base))
            .bearer_auth("ingest_key_a")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(r#"{"id": "e", "customer": "c1", "type": "api_call"}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        expect(
            encoding,
            status,
            &response.json().await.unwrap(),
            "unsupported_media_type",
        );
    }
    let long = format!("/v1/meters/tokens/query?customer={}", "c".repeat(20_000));
    let (status, answer) = get_json(&app, &long, "read_key_a").await;
    expect("a 20 KB request target", status, &answer, "uri_too_long");
    assert_eq!(status, 414);
    let response = app
        .http
        .get(format!("{}/v1/customers", app.base))
        .bearer_auth("read_key_a")
        .header("x-padding", "p".repeat(100_000))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    expect(
        "100 KB of headers",
        status,
        &response.json().await.unwrap(),
        "headers_too_large",
    );
    assert_eq!(status, 431);
    assert_eq!(app.scalar("SELECT count() FROM events").await, 0);
    app.shutdown().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_are_read_and_a_bomb_is_refused() {
    let app = spawn_app("hardening_gzip").await;
    let send = |body: Vec<u8>| {
        app.http
            .post(format!("{}/v1/events", app.base))
            .bearer_auth("ingest_key_a")
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
    };
    let events = json!([{"id": "g1", "customer": "c1", "type": "api_call"},
                        {"id": "g2", "customer": "c1", "type": "api_call"}]);
    let response = send(gzip(events.to_string().as_bytes())).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["accepted"], 2);
    // Several gzip members one after the other (as `cat a.gz b.gz` makes) are one body.
    let mut members = gzip(br#"[{"id": "g3", "customer": "c1", "type": "api_call"},"#);
    members.extend(gzip(
        br#"{"id": "g4", "customer": "c1", "type": "api_call"}]"#,
    ));
    let response = send(members).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["accepted"], 2);
    // 64 MiB of spaces compress to about 64 KiB: inflating stops at the 10 MiB bound.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let response = send(bomb).await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );
    assert_eq!(app.scalar("SELECT count() FROM events").await, 4);
    app.shutdown().await;
}

/// A raw connection to the service.
async fn connect(app: &common::TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// What the server sends until it closes the connection, or `None` if it is still open after
/// `wait`.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    wait: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(wait, stream.read_to_end(&mut received)).await;
    closed
        .ok()
        .map(|_| String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn slow_or_oversized_requests_do_not_hold_a_connection() {
    use tokio::io::AsyncWriteExt as _;
    let app = spawn_app("hardening_timeouts").await;
    let limit = meterhouse::server::HEADER_TIMEOUT + std::time::Duration::from_secs(5);

    // Headers that never finish: closed once the header timeout passes.
    let mut slow_headers = connect(&app).await;
    slow_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // A connection that sends nothing at all.
    let mut silent = connect(&app).await;
    // A body that never arrives: 408 in the error shape.
    let mut slow_body = connect(&app).await;
    slow_body
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ingest_key_a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[")
        .await
        .unwrap();
    // A declared length over the limit: 413 at once, nothing read.
    let mut oversized = connect(&app).await;
    oversized
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ingest_key_a\r\nContent-Type: application/json\r\nContent-Length: 20971520\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut oversized, std::time::Duration::from_secs(5))
        .await
        .expect("answered and closed before any body byte was sent");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );

    let answer = read_until_closed(&mut slow_body, limit)
        .await
        .expect("the stalled body ends");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(
        read_until_closed(&mut slow_headers, limit).await.is_some(),
        "a connection that never finishes its headers is closed"
    );
    assert!(
        read_until_closed(&mut silent, limit).await.is_some(),
        "a connection that sends nothing is closed"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn api_keys_are_listed_without_secrets_and_revoked_on_every_process() {
    let app = spawn_app("hardening_keys").await;
    let (status, answer) = app
        .post_raw(
            "/v1/api-keys",
            "admin_key_a",
            "application/json",
            json!({"role": "customer", "customer": "ghost"}).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("customer_not_found")),
        "{answer}"
    );

    let (status, created) = app
        .post_raw(
            "/v1/api-keys",
            "admin_key_a",
            "application/json",
            json!({"role": "read", "name": "dashboards"}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    // A second process on the same database, which learns of keys by polling.
    let other = spawn_with(app.config.clone(), false).await;

    let (status, listed) = get_json(&app, "/v1/api-keys", "admin_key_a").await;
    assert_eq!(status, 200, "{listed}");
    let text = listed.to_string();
    assert!(!text.contains(key), "never the key: {text}");
    let hash = meterhouse::auth::hash_key(key);
    assert!(
        !text.contains(&hex::encode(hash)),
        "never its digest: {text}"
    );
    let rows = listed["data"].as_array().unwrap();
    let mine = rows
        .iter()
        .find(|r| r["id"] == id)
        .expect("the new key is listed");
    assert_eq!(
        (
            mine["role"].as_str(),
            mine["name"].as_str(),
            mine["source"].as_str()
        ),
        (Some("read"), Some("dashboards"), Some("api"))
    );
    let configured: Vec<&Value> = rows
        .iter()
        .filter(|r| r["source"] == "configuration")
        .collect();
    assert_eq!(configured.len(), 4, "acme's four configured keys: {text}");
    assert!(configured.iter().all(|r| r["created_at"].is_null()));
    assert!(!text.contains("admin_key_b") && !text.contains("ingest_key_b"));

    let (status, answer) = app
        .post_raw(
            "/v1/api-keys",
            "read_key_a",
            "application/json",
            json!({"role": "read"}).to_string(),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let delete = |path: String, with: &'static str| {
        app.http
            .delete(format!("{}{path}", app.base))
            .bearer_auth(with)
            .send()
    };
    let configured_id = configured[0]["id"].as_str().unwrap().to_owned();
    let response = delete(format!("/v1/api-keys/{configured_id}"), "admin_key_a")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409, "a configured key stays");

    // Both processes accept the key, then neither does.
    let wait_for = |target: &common::TestApp, expected: u16| {
        let (base, http, key) = (target.base.clone(), target.http.clone(), key.to_owned());
        async move {
            let started = std::time::Instant::now();
            loop {
                let status = http
                    .get(format!("{base}/v1/customers"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                if status == expected || started.elapsed() > std::time::Duration::from_secs(3) {
                    return (status, started.elapsed());
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(wait_for(&app, 200).await.0, 200);
    assert_eq!(wait_for(&other, 200).await.0, 200);
    let response = delete(format!("/v1/api-keys/{id}"), "admin_key_a")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(wait_for(&app, 401).await.0, 401);
    // Every process reloads keys every 500 ms (`auth::stored::REFRESH_EVERY`); the wait gives
    // up after 3 s.
    assert_eq!(wait_for(&other, 401).await.0, 401);
    let response = delete(format!("/v1/api-keys/{id}"), "admin_key_a")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404, "already revoked");
    let (_, listed) = get_json(&app, "/v1/api-keys", "admin_key_a").await;
    assert!(!listed.to_string().contains(id));
    other.shutdown().await;
    app.shutdown().await;
}

/// The ClickHouse the service owns listens on loopback and refuses a query without its
/// generated password, which is kept readable by its owner only.
#[tokio::test]
async fn the_owned_clickhouse_refuses_unauthenticated_queries() {
    use std::os::unix::fs::PermissionsExt as _;
    let url = common::clickhouse_url();
    let http = reqwest::Client::new();
    let query = format!("{url}/?query=SELECT%20count()%20FROM%20system.tables");
    let anonymous = http.get(&query).send().await.unwrap();
    let status = anonymous.status().as_u16();
    let text = anonymous.text().await.unwrap();
    assert_ne!(status, 200, "{text}");
    assert!(
        text.contains("Password") || text.contains("password"),
        "{text}"
    );
    let wrong = http
        .get(&query)
        .header("X-ClickHouse-User", "default")
        .header("X-ClickHouse-Key", "guess")
        .send()
        .await
        .unwrap();
    assert_ne!(wrong.status().as_u16(), 200);
    let password = meterhouse::store::local::password_of(&url).expect("generated");
    let owner = http
        .get(&query)
        .header("X-ClickHouse-User", "default")
        .header("X-ClickHouse-Key", &password)
        .send()
        .await
        .unwrap();
    assert_eq!(owner.status().as_u16(), 200);
    let kept = common::scratch_dir("shared").join("clickhouse/password");
    assert_eq!(std::fs::read_to_string(&kept).unwrap().trim(), password);
    for file in [
        kept,
        common::scratch_dir("shared").join("clickhouse/users.xml"),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    assert!(url.starts_with("http://127.0.0.1:"), "loopback only: {url}");
}
