//! The catalog API against a real ClickHouse: create, read, list, replace, conflicts, field
//! errors, subscription actions, roles, and visibility across processes.

mod common;

use std::time::Duration;

use common::{TestApp, spawn_app, spawn_with};
use serde_json::{Value, json};

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> (u16, Value) {
    app.post_raw(path, key, "application/json", body.to_string())
        .await
}

async fn put(app: &TestApp, path: &str, key: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .put(format!("{}{path}", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn get(app: &TestApp, path: &str, key: &str) -> (u16, Value) {
    let response = app.get(path, Some(key)).await;
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn pro_plan() -> Value {
    json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month", "interval_count": 1, "trial_days": 0,
           "prices": [
             {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
             {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated", "included_units": "1000",
              "tiers": [{"up_to": "10000", "unit_amount": "0.002", "flat_amount": "0"},
                        {"up_to": null, "unit_amount": "0.001", "flat_amount": "0"}]}]})
}

async fn seed_customer_and_plan(app: &TestApp) {
    assert_eq!(
        post(app, "/v1/plans", "admin_key_a", pro_plan()).await.0,
        201
    );
    let customer = json!({"external_id": "cust_42", "name": "Acme", "email": "billing@acme.test", "timezone": "Europe/Paris"});
    assert_eq!(
        post(app, "/v1/customers", "admin_key_a", customer).await.0,
        201
    );
}

#[tokio::test]
async fn catalog_items_are_created_read_listed_and_replaced() {
    let app = spawn_app("catalog_crud").await;
    seed_customer_and_plan(&app).await;
    let (status, plan) = get(&app, "/v1/plans/pro", "read_key_a").await;
    assert_eq!(status, 200);
    assert_eq!(
        plan["prices"][1]["tiers"][0]["unit_amount"], "0.002",
        "decimals come back as strings"
    );
    let (status, again) = post(&app, "/v1/plans", "admin_key_a", pro_plan()).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("conflict")));

    let mut cheaper = pro_plan();
    cheaper["prices"][0]["amount"] = json!("39.00");
    let (status, replaced) = put(&app, "/v1/plans/pro", "admin_key_a", cheaper).await;
    assert_eq!(
        (status, replaced["prices"][0]["amount"].as_str()),
        (200, Some("39.00"))
    );
    let (status, missing) = put(
        &app,
        "/v1/plans/nope",
        "admin_key_a",
        json!({"code": "nope", "name": "N", "currency": "USD", "interval": "day"}),
    )
    .await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("plan_not_found"))
    );

    let (_, list) = get(&app, "/v1/meters", "read_key_a").await;
    let slugs: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        vec!["calls", "eu_tokens", "tokens"],
        "the seeded meters are catalog items too"
    );
    for (path, code) in [
        ("/v1/meters/x", "meter_not_found"),
        ("/v1/customers/x", "customer_not_found"),
        ("/v1/subscriptions/x", "subscription_not_found"),
    ] {
        let (status, body) = get(&app, path, "read_key_a").await;
        assert_eq!((status, body["code"].as_str()), (404, Some(code)), "{path}");
    }
    let stored = app
        .scalar("SELECT count() FROM catalog FINAL WHERE kind = 'plan'")
        .await;
    assert_eq!(stored, 1, "one plan document, latest version");
    app.shutdown().await;
}

#[tokio::test]
async fn invalid_documents_are_refused_with_the_field_named() {
    let app = spawn_app("catalog_invalid").await;
    let cases = [
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "usd", "interval": "month"}),
            400,
            "currency",
        ),
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "USD", "interval": "fortnight"}),
            400,
            "interval",
        ),
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "USD", "interval": "month",
            "prices": [{"code": "u", "type": "usage", "meter": "calls", "model": "volume", "tiers": [{"up_to": "5", "unit_amount": "1"}]}]}),
            400,
            "prices[0].tiers[0].up_to",
        ),
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "USD", "interval": "month",
            "prices": [{"code": "u", "type": "usage", "meter": "ghost", "model": "per_unit", "unit_amount": "1"}]}),
            404,
            "prices[0].meter",
        ),
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "USD", "interval": "month",
            "prices": [{"code": "b", "type": "flat", "amount": "lots"}]}),
            400,
            "prices[0].amount",
        ),
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "USD", "interval": "month",
            "minimum_commitment": {"amount": "-5"}}),
            400,
            "minimum_commitment.amount",
        ),
        (
            "/v1/plans",
            json!({"code": "p", "name": "P", "currency": "USD", "interval": "month",
            "minimum_commitment": {"amount": "a lot"}}),
            400,
            "minimum_commitment.amount",
        ),
        (
            "/v1/meters",
            json!({"slug": "m", "name": "M", "event_type": "e", "aggregation": "sum"}),
            400,
            "value_property",
        ),
        (
            "/v1/customers",
            json!({"external_id": "c", "timezone": "Mars/Olympus"}),
            400,
            "timezone",
        ),
        (
            "/v1/subscriptions",
            json!({"external_id": "s", "customer": "ghost", "plan": "pro"}),
            404,
            "customer",
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, answer) = post(&app, path, "admin_key_a", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{body}: {answer}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn subscriptions_report_periods_and_can_be_changed_and_canceled() {
    let app = spawn_app("catalog_subscriptions").await;
    seed_customer_and_plan(&app).await;
    let mut scale = pro_plan();
    scale["code"] = json!("scale");
    scale["interval"] = json!("year");
    assert_eq!(post(&app, "/v1/plans", "admin_key_a", scale).await.0, 201);
    let start = (chrono::Utc::now() - chrono::TimeDelta::days(3)).to_rfc3339();
    let body = json!({"external_id": "sub_1", "customer": "cust_42", "plan": "pro", "start_date": start, "billing_anchor": "anniversary"});
    let (status, sub) = post(&app, "/v1/subscriptions", "admin_key_a", body).await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["status"], "active");
    let period_to = sub["current_period"]["to"].as_str().unwrap().to_owned();
    assert_eq!(sub["next_invoice_date"].as_str().unwrap(), period_to);
    let (_, unknown_plan) = post(
        &app,
        "/v1/subscriptions",
        "admin_key_a",
        json!({"external_id": "s2", "customer": "cust_42", "plan": "gold"}),
    )
    .await;
    assert_eq!(unknown_plan["code"], "plan_not_found");

    let (status, changed) = post(
        &app,
        "/v1/subscriptions/sub_1/change_plan",
        "admin_key_a",
        json!({"plan": "scale", "at": "period_end"}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["phases"].as_array().unwrap().len(), 2);
    assert_eq!(
        changed["phases"][1]["from"].as_str().unwrap(),
        period_to,
        "the change takes effect at the period end"
    );
    assert_eq!(changed["plan"], "pro", "the plan in force until the change");

    let (status, canceled) = post(
        &app,
        "/v1/subscriptions/sub_1/cancel",
        "admin_key_a",
        json!({"at": "now"}),
    )
    .await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (200, Some("canceled")),
        "{canceled}"
    );
    assert_eq!(
        canceled["phases"].as_array().unwrap().len(),
        1,
        "the scheduled change is dropped"
    );
    let (status, again) = post(
        &app,
        "/v1/subscriptions/sub_1/cancel",
        "admin_key_a",
        json!({}),
    )
    .await;
    assert_eq!((status, again["code"].as_str()), (409, Some("conflict")));
    app.shutdown().await;
}

#[tokio::test]
async fn roles_limit_who_reads_and_writes_the_catalog() {
    let app = spawn_app("catalog_roles").await;
    seed_customer_and_plan(&app).await;
    let customer = json!({"external_id": "c1", "name": "Bound"});
    assert_eq!(
        post(&app, "/v1/customers", "admin_key_a", customer).await.0,
        201
    );
    let sub = json!({"external_id": "sub_c1", "customer": "c1", "plan": "pro"});
    assert_eq!(
        post(&app, "/v1/subscriptions", "admin_key_a", sub).await.0,
        201
    );
    let sub42 = json!({"external_id": "sub_42", "customer": "cust_42", "plan": "pro"});
    assert_eq!(
        post(&app, "/v1/subscriptions", "admin_key_a", sub42)
            .await
            .0,
        201
    );

    assert_eq!(
        post(&app, "/v1/plans", "read_key_a", pro_plan()).await.0,
        403
    );
    assert_eq!(
        post(&app, "/v1/plans", "ingest_key_a", pro_plan()).await.0,
        403
    );
    assert_eq!(get(&app, "/v1/plans", "ingest_key_a").await.0, 403);
    // cust_key_a is bound to customer c1.
    assert_eq!(get(&app, "/v1/customers/c1", "cust_key_a").await.0, 200);
    assert_eq!(
        get(&app, "/v1/subscriptions/sub_c1", "cust_key_a").await.0,
        200
    );
    assert_eq!(
        get(&app, "/v1/customers/cust_42", "cust_key_a").await.0,
        404
    );
    assert_eq!(
        get(&app, "/v1/subscriptions/sub_42", "cust_key_a").await.0,
        404
    );
    assert_eq!(get(&app, "/v1/customers", "cust_key_a").await.0, 403);
    // Another tenant sees none of it.
    assert_eq!(get(&app, "/v1/plans/pro", "admin_key_b").await.0, 404);
    let (_, list) = get(&app, "/v1/customers", "admin_key_b").await;
    assert_eq!(list["data"], json!([]));
    app.shutdown().await;
}

#[tokio::test]
async fn a_meter_created_through_the_api_applies_to_events_ingested_after_it() {
    let app = spawn_app("catalog_meter_ingest").await;
    let meter = json!({"slug": "gb", "name": "GB", "event_type": "upload", "aggregation": "sum", "value_property": "size.gb"});
    assert_eq!(post(&app, "/v1/meters", "admin_key_a", meter).await.0, 201);
    let (status, _) = app.post_events("ingest_key_a", &json!({"id": "u1", "customer": "c1", "type": "upload", "properties": {"size": {"gb": "1.5"}}})).await;
    assert_eq!(status, 202);
    let total: String = app
        .store()
        .await
        .client()
        .query("SELECT toString(sum(value)) FROM usage_samples WHERE meter = 'gb'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(total, "1.500000000000");
    app.shutdown().await;
}

#[tokio::test]
async fn a_change_through_one_process_is_seen_by_another_within_seconds() {
    let first = spawn_app("catalog_two_processes").await;
    let second = spawn_with(first.config.clone(), false).await;
    let meter =
        json!({"slug": "late", "name": "Late", "event_type": "late_event", "aggregation": "count"});
    assert_eq!(
        post(&first, "/v1/meters", "admin_key_a", meter).await.0,
        201
    );
    let mut seen = false;
    for _ in 0..50 {
        if get(&second, "/v1/meters/late", "read_key_a").await.0 == 200 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the second process must see the meter within 5 s");
    let (status, _) = second
        .post_events(
            "ingest_key_a",
            &json!({"id": "l1", "customer": "c1", "type": "late_event"}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        second
            .scalar("SELECT count() FROM usage_samples WHERE meter = 'late'")
            .await,
        1,
        "and ingest through it uses the meter"
    );
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_every_listed_route_is_served() {
    let app = spawn_app("openapi").await;
    let response = app.get("/openapi.json", None).await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/v1/events", "post"),
        ("/v1/api-keys", "post"),
        ("/v1/meters", "get"),
        ("/v1/meters", "post"),
        ("/v1/meters/{key}", "get"),
        ("/v1/meters/{key}", "put"),
        ("/v1/plans", "get"),
        ("/v1/plans", "post"),
        ("/v1/plans/{key}", "get"),
        ("/v1/plans/{key}", "put"),
        ("/v1/customers", "get"),
        ("/v1/customers", "post"),
        ("/v1/customers/{key}", "get"),
        ("/v1/customers/{key}", "put"),
        ("/v1/subscriptions", "get"),
        ("/v1/subscriptions", "post"),
        ("/v1/subscriptions/{key}", "get"),
        ("/v1/subscriptions/{key}", "put"),
        ("/v1/subscriptions/{key}/cancel", "post"),
        ("/v1/subscriptions/{key}/change_plan", "post"),
        ("/v1/subscriptions/{key}/usage", "get"),
        ("/v1/customers/{key}/usage", "get"),
        ("/v1/customers/{key}/billing_state", "get"),
        ("/v1/meters/{key}/query", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from /openapi.json"
        );
    }
    assert!(
        doc["components"]["schemas"]["Plan"].is_object(),
        "request bodies carry schemas"
    );
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!("{}{}", app.base, path.replace("{key}", "x"));
            let request = app
                .http
                .request(method.to_uppercase().parse().unwrap(), url)
                .bearer_auth("admin_key_a")
                .body("{}");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["code"] != "not_found",
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    app.shutdown().await;
}
