//! Usage alerts and signed webhooks end to end: a real ClickHouse, the service, and a receiver
//! on a loopback port that records what arrives and answers as each test tells it to.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::{
    TestApp, admin, d, dec, get_json, post_ok as post, spawn_app, spawn_with, test_config,
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

/// What the receiver does with the next request.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Answers 200 after this long (past the service's timeout: no answer).
    Late(Duration),
}

#[derive(Clone, Debug)]
struct Received {
    signature: String,
    body: String,
}

/// A webhook receiver on a loopback port.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answers: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let (r, a) = (received.clone(), answers.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (r, a) = (r.clone(), a.clone());
                async move {
                    let answer = a.lock().unwrap().pop_front().unwrap_or(Answer::Status(200));
                    r.lock().unwrap().push(Received {
                        signature: headers
                            .get("meterhouse-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned(),
                        body,
                    });
                    match answer {
                        Answer::Status(s) => axum::http::StatusCode::from_u16(s).unwrap(),
                        Answer::Late(wait) => {
                            tokio::time::sleep(wait).await;
                            axum::http::StatusCode::OK
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            received,
            answers,
        }
    }

    fn answer(&self, answers: &[Answer]) {
        self.answers.lock().unwrap().extend(answers);
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits (at most 20 s) until `n` requests arrived; all of them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let got = self.received.lock().unwrap().clone();
        assert!(
            got.len() >= n,
            "{} of {n} webhooks arrived: {got:?}",
            got.len()
        );
        got
    }

    /// Asserts that nothing beyond `n` requests arrives within `wait`.
    async fn still(&self, n: usize, wait: Duration) {
        tokio::time::sleep(wait).await;
        let got = self.received.lock().unwrap().clone();
        assert_eq!(got.len(), n, "unexpected webhooks: {got:?}");
    }
}

/// Checks the signature as a receiver would, with its own HMAC; the event.
fn verified(received: &Received, secret: &str) -> Value {
    let (t, v1) = received
        .signature
        .split_once(',')
        .unwrap_or_else(|| panic!("signature header: {received:?}"));
    let t = t.strip_prefix("t=").expect("t=");
    let v1 = v1.strip_prefix("v1=").expect("v1=");
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", received.body).as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "signature");
    let age = Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..600).contains(&age), "t is now: {t}");
    serde_json::from_str(&received.body).unwrap()
}

async fn status_of(
    app: &TestApp,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", app.base);
    let request = match method {
        "POST" => app.http.post(url).json(&body.unwrap_or(json!({}))),
        "DELETE" => app.http.delete(url),
        _ => app.http.get(url),
    };
    let response = request.bearer_auth(key).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Plan `pro`: calls at 0.10 each past 10 included; customer c1 on it since `days` ago.
async fn scenario(app: &TestApp, days: i64) {
    post(
        app,
        "/v1/plans",
        json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
        "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit",
                    "unit_amount": "0.10", "included_units": "10"}]}),
    )
    .await;
    post(app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start =
        chrono::DateTime::from_timestamp(Utc::now().timestamp() - days * 86_400, 0).unwrap();
    post(
        app,
        "/v1/subscriptions",
        json!({"external_id": "sub_1", "customer": "c1", "plan": "pro",
        "start_date": start.to_rfc3339()}),
    )
    .await;
}

/// An alert on sub_1's calls quantity at `threshold`.
async fn calls_alert(app: &TestApp, code: &str, threshold: &str) {
    post(
        app,
        "/v1/alerts",
        json!({"code": code, "subscription": "sub_1", "price": "calls", "threshold": threshold}),
    )
    .await;
}

/// Registers the receiver; the endpoint's id and secret.
async fn endpoint(app: &TestApp, receiver: &Receiver) -> (String, String) {
    let created = post(
        app,
        "/v1/webhook_endpoints",
        json!({"url": receiver.url, "events": ["alert.triggered"]}),
    )
    .await;
    (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// `n` calls of c1 `ago` before now, ids `{prefix}-{i}`.
async fn calls(app: &TestApp, prefix: &str, n: usize, ago: TimeDelta) {
    let at = (Utc::now() - ago).timestamp_millis();
    let body: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "customer": "c1", "type": "api_call", "timestamp": at - i as i64}))
        .collect();
    let (status, ack) = app.post_events("ingest_key_a", &json!(body)).await;
    assert_eq!(status, 202, "{ack}");
}

#[tokio::test]
async fn each_alert_fires_once_when_its_threshold_is_reached() {
    let app = spawn_app("alerts_fire_once").await;
    let receiver = Receiver::start().await;
    scenario(&app, 1).await;
    let (endpoint_id, secret) = endpoint(&app, &receiver).await;
    calls_alert(&app, "five_calls", "5").await;
    let pct = post(&app, "/v1/alerts", json!({"code": "pro_80pct", "plan": "pro", "price": "calls", "threshold_percent_of_included": "80"})).await;
    assert_eq!(pct["metric"], "quantity", "{pct}");
    post(&app, "/v1/alerts", json!({"code": "fifty_cents", "subscription": "sub_1", "metric": "amount", "threshold": "0.50"})).await;
    let second = TimeDelta::seconds(1);

    calls(&app, "a", 4, second).await;
    receiver.still(0, Duration::from_millis(1500)).await;
    // The fifth call reaches 5.
    calls(&app, "b", 1, second).await;
    let got = receiver.wait_for(1).await;
    let event = verified(&got[0], &secret);
    assert_eq!(event["type"], "alert.triggered");
    let data = &event["data"];
    assert_eq!(data["alert"], "five_calls", "{event}");
    assert_eq!(
        (data["subscription"].as_str(), data["customer"].as_str()),
        (Some("sub_1"), Some("c1"))
    );
    assert_eq!(
        (data["price"].as_str(), data["metric"].as_str()),
        (Some("calls"), Some("quantity"))
    );
    assert_eq!(
        (dec(&data["threshold"]), dec(&data["value"])),
        (d("5"), d("5"))
    );
    assert!(
        data["period"]["from"].is_string() && data["period"]["to"].is_string(),
        "{event}"
    );

    // 8 is 80% of the 10 included; 15 calls owe 5 × 0.10, the subscription's total.
    calls(&app, "c", 3, second).await;
    let got = receiver.wait_for(2).await;
    let event = verified(&got[1], &secret);
    assert_eq!(event["data"]["alert"], "pro_80pct", "{event}");
    assert_eq!(dec(&event["data"]["threshold"]), d("8"));
    calls(&app, "e", 7, second).await;
    let got = receiver.wait_for(3).await;
    let event = verified(&got[2], &secret);
    assert_eq!(event["data"]["alert"], "fifty_cents", "{event}");
    assert_eq!(dec(&event["data"]["value"]), d("0.50"));
    assert!(event["data"]["price"].is_null());

    // More usage, and a batch sent again: nothing fires twice.
    calls(&app, "f", 5, second).await;
    calls(&app, "b", 1, second).await;
    receiver.still(3, Duration::from_secs(2)).await;

    let ids: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["id"].clone())
        .collect();
    let (status, deliveries) = get_json(&app, "/v1/webhook_deliveries", "admin_key_a").await;
    assert_eq!(status, 200, "{deliveries}");
    let listed = deliveries["data"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{deliveries}");
    for delivery in listed {
        assert!(ids.contains(&delivery["id"]), "{delivery}");
        assert_eq!(delivery["endpoint"], endpoint_id.as_str());
        assert_eq!(delivery["state"], "delivered", "{delivery}");
        assert_eq!(delivery["attempts"][0]["status"], 200, "{delivery}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_late_event_fires_the_alert_of_the_period_it_belongs_to() {
    let app = spawn_app("alerts_late_event").await;
    let receiver = Receiver::start().await;
    // Started 33 days ago: its first period ended about two days ago.
    scenario(&app, 33).await;
    let (_, secret) = endpoint(&app, &receiver).await;
    calls_alert(&app, "three", "3").await;
    calls(&app, "now", 1, TimeDelta::seconds(1)).await;
    calls(&app, "old", 2, TimeDelta::days(20)).await;
    receiver.still(0, Duration::from_millis(1500)).await;
    // A third event of the past period arrives late: that period's alert fires.
    calls(&app, "late", 1, TimeDelta::days(20)).await;
    let got = receiver.wait_for(1).await;
    let event = verified(&got[0], &secret);
    let from =
        chrono::DateTime::parse_from_rfc3339(event["data"]["period"]["from"].as_str().unwrap())
            .unwrap();
    let to = chrono::DateTime::parse_from_rfc3339(event["data"]["period"]["to"].as_str().unwrap())
        .unwrap();
    assert!(
        to < Utc::now() - TimeDelta::days(1),
        "the past period: {event}"
    );
    assert!(from < Utc::now() - TimeDelta::days(20), "{event}");
    assert_eq!(dec(&event["data"]["value"]), d("3"));
    receiver.still(1, Duration::from_secs(1)).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_restart_fires_nothing_again_and_an_alert_added_later_fires_at_once() {
    let mut config = test_config("alerts_restart", &common::clickhouse_url());
    config.webhook_timeout_ms = 2_000;
    let app = spawn_with(config.clone(), true).await;
    let receiver = Receiver::start().await;
    scenario(&app, 1).await;
    let (_, secret) = endpoint(&app, &receiver).await;
    calls_alert(&app, "two", "2").await;
    calls(&app, "a", 2, TimeDelta::seconds(1)).await;
    let first = verified(&receiver.wait_for(1).await[0], &secret);
    app.shutdown().await;

    let app = spawn_with(config, false).await;
    // Usage already past it: an alert made now fires without a new event.
    calls_alert(&app, "one", "1").await;
    let got = receiver.wait_for(2).await;
    let second = verified(&got[1], &secret);
    assert_eq!(second["data"]["alert"], "one", "{second}");
    calls(&app, "b", 1, TimeDelta::seconds(1)).await;
    receiver.still(2, Duration::from_secs(3)).await;
    assert_ne!(first["id"], second["id"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_id_until_it_succeeds() {
    let mut config = test_config("alerts_retries", &common::clickhouse_url());
    config.webhook_timeout_ms = 500;
    let app = spawn_with(config, true).await;
    let receiver = Receiver::start().await;
    receiver.answer(&[
        Answer::Status(500),
        Answer::Late(Duration::from_secs(2)),
        Answer::Status(503),
    ]);
    scenario(&app, 1).await;
    let (_, secret) = endpoint(&app, &receiver).await;
    calls_alert(&app, "one", "1").await;
    calls(&app, "a", 1, TimeDelta::seconds(1)).await;
    let got = receiver.wait_for(4).await;
    let ids: Vec<Value> = got
        .iter()
        .map(|r| verified(r, &secret)["id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    let id = ids[0].as_str().unwrap();
    let delivery = eventually_state(&app, id, "delivered").await;
    let statuses: Vec<Value> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [json!(500), Value::Null, json!(503), json!(200)],
        "{delivery}"
    );
    assert!(
        delivery["attempts"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{delivery}"
    );

    // Asked again: sent again, same id.
    let (status, retried) = status_of(
        &app,
        "POST",
        &format!("/v1/webhook_deliveries/{id}/retry"),
        "admin_key_a",
        None,
    )
    .await;
    assert_eq!(status, 202, "{retried}");
    let got = receiver.wait_for(5).await;
    assert_eq!(verified(&got[4], &secret)["id"], ids[0]);
    let (status, _) = status_of(
        &app,
        "POST",
        "/v1/webhook_deliveries/evt_nothing/retry",
        "admin_key_a",
        None,
    )
    .await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

async fn eventually_state(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, listed) = get_json(
            app,
            &format!("/v1/webhook_deliveries?id={id}"),
            "admin_key_a",
        )
        .await;
        let delivery = listed["data"][0].clone();
        if delivery["state"] == state || Instant::now() > deadline {
            assert_eq!(delivery["state"], state, "{listed}");
            return delivery;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_deleted_endpoint_receives_nothing() {
    let app = spawn_app("alerts_deleted_endpoint").await;
    let kept = Receiver::start().await;
    let dropped = Receiver::start().await;
    scenario(&app, 1).await;
    let (_, secret) = endpoint(&app, &kept).await;
    let (dropped_id, _) = endpoint(&app, &dropped).await;
    let (status, _) = status_of(
        &app,
        "DELETE",
        &format!("/v1/webhook_endpoints/{dropped_id}"),
        "admin_key_a",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = status_of(
        &app,
        "GET",
        &format!("/v1/webhook_endpoints/{dropped_id}"),
        "admin_key_a",
        None,
    )
    .await;
    assert_eq!(status, 404);
    calls_alert(&app, "one", "1").await;
    calls(&app, "a", 1, TimeDelta::seconds(1)).await;
    verified(&kept.wait_for(1).await[0], &secret);
    dropped.still(0, Duration::from_secs(2)).await;
    app.shutdown().await;
}

#[tokio::test]
async fn endpoints_alerts_and_deliveries_belong_to_their_tenant() {
    let app = spawn_app("alerts_tenants").await;
    let receiver = Receiver::start().await;
    scenario(&app, 1).await;
    let (endpoint_id, _) = endpoint(&app, &receiver).await;
    calls_alert(&app, "one", "1").await;
    calls(&app, "a", 1, TimeDelta::seconds(1)).await;
    let event: Value = serde_json::from_str(&receiver.wait_for(1).await[0].body).unwrap();
    let id = event["id"].as_str().unwrap();

    // The secret is shown once: never in a listing.
    let (status, listed) = get_json(&app, "/v1/webhook_endpoints", "admin_key_a").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"][0]["id"], endpoint_id.as_str());
    assert!(listed["data"][0].get("secret").is_none(), "{listed}");

    for path in [
        "/v1/webhook_endpoints",
        "/v1/alerts",
        "/v1/webhook_deliveries",
    ] {
        let (status, other) = get_json(&app, path, "admin_key_b").await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(other["data"], json!([]), "{path}: {other}");
        let (status, _) = get_json(&app, path, "read_key_a").await;
        assert_eq!(status, 403, "{path} needs an admin key");
    }
    for (method, path) in [
        ("GET", format!("/v1/webhook_endpoints/{endpoint_id}")),
        ("DELETE", format!("/v1/webhook_endpoints/{endpoint_id}")),
        ("GET", "/v1/alerts/one".into()),
        ("DELETE", "/v1/alerts/one".into()),
        ("POST", format!("/v1/webhook_deliveries/{id}/retry")),
    ] {
        let (status, body) = status_of(&app, method, &path, "admin_key_b", None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // Beta's alert cannot watch acme's subscription.
    let (status, body) = status_of(
        &app,
        "POST",
        "/v1/alerts",
        "admin_key_b",
        Some(json!({"code": "x", "subscription": "sub_1", "price": "calls", "threshold": "1"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("subscription_not_found")),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_alerts_and_endpoints_are_refused_naming_the_field() {
    let app = spawn_app("alerts_validation").await;
    scenario(&app, 1).await;
    let cases = [
        (
            "/v1/alerts",
            json!({"code": "a", "subscription": "sub_1", "plan": "pro", "threshold": "1"}),
            400,
            "subscription",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "subscription": "sub_1", "price": "calls"}),
            400,
            "threshold",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "subscription": "sub_1", "price": "calls", "threshold": "-1"}),
            400,
            "threshold",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "subscription": "sub_1", "price": "nope", "threshold": "1"}),
            400,
            "price",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "subscription": "sub_1", "metric": "quantity", "threshold": "1"}),
            400,
            "price",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "subscription": "sub_9", "price": "calls", "threshold": "1"}),
            404,
            "subscription",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "plan": "nope", "threshold": "1"}),
            404,
            "plan",
        ),
        (
            "/v1/alerts",
            json!({"code": "a", "plan": "pro", "threshold": "1", "colour": "red"}),
            400,
            "colour",
        ),
        (
            "/v1/webhook_endpoints",
            json!({"url": "ftp://example.com"}),
            400,
            "url",
        ),
        (
            "/v1/webhook_endpoints",
            json!({"url": "http://127.0.0.1:9/x", "events": ["invoice.paid"]}),
            400,
            "events",
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, answer) = status_of(&app, "POST", path, "admin_key_a", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {answer}");
    }
    post(
        &app,
        "/v1/alerts",
        json!({"code": "a", "plan": "pro", "threshold": "1"}),
    )
    .await;
    let (status, _) = status_of(
        &app,
        "POST",
        "/v1/alerts",
        "admin_key_a",
        Some(json!({"code": "a", "plan": "pro", "threshold": "1"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = status_of(
        &app,
        "POST",
        "/v1/alerts",
        "read_key_a",
        Some(json!({"code": "b", "plan": "pro", "threshold": "1"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = status_of(&app, "DELETE", "/v1/alerts/a", "admin_key_a", None).await;
    assert_eq!(status, 204);
    let (status, _) = status_of(&app, "GET", "/v1/alerts/a", "admin_key_a", None).await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

/// Sends `n` calls of c1 to the replica at `base` until acknowledged.
async fn calls_to(http: &reqwest::Client, base: &str, prefix: &str, n: usize) {
    let at = Utc::now().timestamp_millis() - 1_000;
    let body: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "customer": "c1", "type": "api_call", "timestamp": at - i as i64}))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = http
            .post(format!("{base}/v1/events"))
            .bearer_auth("ingest_key_a")
            .json(&body)
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == 202) {
            return;
        }
        assert!(Instant::now() < deadline, "{base} does not take events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fire_each_alert_once_and_a_crash_loses_no_delivery() {
    const DB: &str = "test_alerts_replicas";
    common::empty_database(&test_config("alerts_replicas", &common::clickhouse_url())).await;
    let redis_port = common::free_server_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let _redis = common::start_redis(redis_port, &common::scratch_dir("redis-alerts"));
    common::wait_redis(&redis_url).await;
    let shared = [
        "--redis-url",
        redis_url.as_str(),
        "--webhook-timeout-ms",
        "2000",
    ];
    let ports = [common::free_server_port(), common::free_server_port()];
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut replicas: Vec<common::Service> = ports
        .iter()
        .map(|p| common::serve_process(*p, DB, &shared))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for base in &bases {
        common::wait_ready(&http, base).await;
    }
    let receiver = Receiver::start().await;
    // The first attempt fails: the delivery waits in the outbox for its retry.
    receiver.answer(&[Answer::Status(500)]);
    let start = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 86_400, 0).unwrap();
    common::admin(&http, &bases[0], "/v1/plans", json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
        "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.10"}]})).await;
    admin(
        &http,
        &bases[0],
        "/v1/customers",
        json!({"external_id": "c1"}),
    )
    .await;
    common::admin(&http, &bases[0], "/v1/subscriptions", json!({"external_id": "sub_1", "customer": "c1", "plan": "pro", "start_date": start.to_rfc3339()})).await;
    let endpoint = admin(
        &http,
        &bases[0],
        "/v1/webhook_endpoints",
        json!({"url": receiver.url}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    admin(
        &http,
        &bases[0],
        "/v1/alerts",
        json!({"code": "twenty", "subscription": "sub_1", "price": "calls", "threshold": "20"}),
    )
    .await;
    admin(
        &http,
        &bases[0],
        "/v1/alerts",
        json!({"code": "sixty", "subscription": "sub_1", "price": "calls", "threshold": "60"}),
    )
    .await;
    // Every replica knows the alerts (catalog polling) before the events come.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Half the way on each replica: together they reach 20.
    tokio::join!(
        calls_to(&http, &bases[0], "a", 10),
        calls_to(&http, &bases[1], "b", 10)
    );
    let first = verified(&receiver.wait_for(1).await[0], &secret);
    assert_eq!(first["data"]["alert"], "twenty", "{first}");
    // Both replicas die with the retry pending; one comes back and delivers it.
    for replica in &mut replicas {
        replica.kill();
    }
    replicas[0] = common::serve_process(ports[0], DB, &shared);
    common::wait_ready(&http, &bases[0]).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        verified(&got[1], &secret)["id"],
        first["id"],
        "the retry has the same id"
    );

    replicas[1] = common::serve_process(ports[1], DB, &shared);
    common::wait_ready(&http, &bases[1]).await;
    tokio::join!(
        calls_to(&http, &bases[0], "c", 20),
        calls_to(&http, &bases[1], "d", 20)
    );
    let got = receiver.wait_for(3).await;
    let third = verified(&got[2], &secret);
    assert_eq!(third["data"]["alert"], "sixty", "{third}");
    assert_eq!(dec(&third["data"]["value"]), d("60"));
    // Both replicas look again a few seconds after their batches: nothing fires twice.
    receiver.still(3, Duration::from_secs(5)).await;
}
