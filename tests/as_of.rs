//! Reads as of a past moment (`?as_of=`) against a real ClickHouse: events ingested, a moment
//! noted, late events ingested into the same window; the figures as of that moment compared
//! with amounts computed here from the plan's terms, and the late events counted.

mod common;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use common::{TestApp, d, dec, get_json as get, post_ok as post, spawn_app};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Plan `pro` (a prorated base fee, calls graduated past 1,000 included, tokens in packages
/// of 1,000 per model with a 1.00 minimum), customer c1, and its subscription from 10 days ago.
async fn scenario(app: &TestApp) -> DateTime<Utc> {
    post(app, "/v1/plans", json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
          {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated", "included_units": "1000",
           "tiers": [{"up_to": "10000", "unit_amount": "0.002", "flat_amount": "0"}, {"up_to": null, "unit_amount": "0.001", "flat_amount": "0"}]},
          {"code": "tokens", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
           "package_amount": "0.50", "rounding": "up", "minimum_amount": "1.00", "group_by": ["model"]}]})).await;
    post(app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start =
        DateTime::from_timestamp((Utc::now() - TimeDelta::days(10)).timestamp(), 0).unwrap();
    post(app, "/v1/subscriptions", json!({"external_id": "sub_1", "customer": "c1", "plan": "pro", "start_date": start.to_rfc3339()})).await;
    start
}

/// `n` calls of c1 at `at_ms` (a millisecond apart), ids `{prefix}-{i}`.
fn calls(prefix: &str, n: usize, at_ms: i64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "customer": "c1", "type": "api_call", "timestamp": at_ms + i as i64}))
        .collect()
}

fn tokens(id: &str, model: &str, n: u64, at_ms: i64) -> Value {
    json!({"id": id, "customer": "c1", "type": "llm_call", "timestamp": at_ms,
           "properties": {"tokens": n, "model": model}})
}

async fn ingest(app: &TestApp, events: Vec<Value>) -> Value {
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
    ack
}

/// A moment strictly between what was ingested before and what is ingested after it.
async fn moment() -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    at
}

fn query(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
        .replace(':', "%3A")
        .replace('+', "%2B")
}

/// Each charge as (plan/price, quantity, amount).
fn charges(report: &Value) -> Vec<(String, Decimal, Decimal)> {
    report["charges"]
        .as_array()
        .unwrap_or_else(|| panic!("no charges: {report}"))
        .iter()
        .map(|c| {
            (
                format!(
                    "{}/{}",
                    c["plan"].as_str().unwrap(),
                    c["price"].as_str().unwrap()
                ),
                dec(&c["quantity"]),
                dec(&c["amount"]),
            )
        })
        .collect()
}

/// The `pro` plan's usage amounts, computed from its terms: calls past 1,000 at 0.002 (all
/// below 10,000 here), tokens in packages of 1,000 (rounded up) per model at 0.50, at least 1.00.
fn pro_amounts(calls: u64, tokens_by_model: &[u64]) -> (Decimal, Decimal) {
    let calls_amount = Decimal::from(calls.saturating_sub(1000)) * d("0.002");
    let packages: u64 = tokens_by_model.iter().map(|n| n.div_ceil(1000)).sum();
    let tokens_amount = (Decimal::from(packages) * d("0.50")).max(d("1.00"));
    (calls_amount, tokens_amount)
}

#[tokio::test]
async fn as_of_reproduces_the_figures_before_late_events_arrived() {
    let app = spawn_app("as_of_late_events").await;
    scenario(&app).await;
    let now = Utc::now().timestamp_millis();
    let day = 86_400_000;
    // Before the moment: 1,200 calls and tokens (gpt-x 1,500, small 300) two days ago.
    let mut before = calls("early", 1200, now - 2 * day);
    before.push(tokens("tok-1", "gpt-x", 1500, now - 2 * day));
    before.push(tokens("tok-2", "small", 300, now - 2 * day + 5));
    ingest(&app, before).await;
    let at = moment().await;
    // After it, into the same period: 300 calls and gpt-x 700 three days ago (before the
    // earlier ones), and a repeat of an earlier id, which is a duplicate and no late event.
    let mut late = calls("late", 300, now - 3 * day);
    late.push(tokens("tok-3", "gpt-x", 700, now - 3 * day));
    late.push(json!({"id": "early-0", "customer": "c1", "type": "api_call", "timestamp": now}));
    let ack = ingest(&app, late).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (Some(301), Some(1))
    );

    // Today's figures first, so that they are kept in memory: an as_of read must not use them.
    let (status, current) = get(&app, "/v1/subscriptions/sub_1/usage", "read_key_a").await;
    assert_eq!(status, 200, "{current}");
    assert!(
        current.get("late_events").is_none(),
        "only reads as of a moment say it: {current}"
    );
    let (calls_now, tokens_now) = pro_amounts(1500, &[2200, 300]);
    assert_eq!(
        charges(&current),
        vec![
            ("pro/calls".into(), d("1500"), calls_now),
            ("pro/tokens".into(), d("2500"), tokens_now)
        ]
    );

    let path = format!("/v1/subscriptions/sub_1/usage?as_of={}", query(at));
    let (status, then) = get(&app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{then}");
    let (calls_then, tokens_then) = pro_amounts(1200, &[1500, 300]);
    assert_eq!(
        charges(&then),
        vec![
            ("pro/calls".into(), d("1200"), calls_then),
            ("pro/tokens".into(), d("1800"), tokens_then)
        ]
    );
    let groups = common::by_model(&then["charges"][1], "quantity");
    assert_eq!(
        groups,
        vec![("gpt-x".into(), d("1500")), ("small".into(), d("300"))]
    );
    assert_eq!(
        then["late_events"], 301,
        "300 calls and one tokens event: {then}"
    );
    let stated: DateTime<Utc> = then["as_of"].as_str().unwrap().parse().unwrap();
    assert_eq!(stated.timestamp_millis(), at.timestamp_millis());
    assert_eq!(
        (&then["from"], &then["to"]),
        (&current["from"], &current["to"]),
        "the same period"
    );
    let fee = dec(&then["flat_fees"][0]["amount"]);
    assert_eq!(dec(&then["subtotal"]), calls_then + tokens_then + fee);
    assert!(dec(&current["subtotal"]) > dec(&then["subtotal"]));

    // The same read by customer, and the billing state, as of the moment.
    let (_, by_customer) = get(
        &app,
        &format!("/v1/customers/c1/usage?as_of={}", query(at)),
        "cust_key_a",
    )
    .await;
    assert_eq!(
        (&by_customer["total"], &by_customer["late_events"]),
        (&then["total"], &then["late_events"])
    );
    let (status, state) = get(
        &app,
        &format!("/v1/customers/c1/billing_state?as_of={}", query(at)),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["usage"][0]["used_units"], "1200", "{state}");
    assert_eq!(state["late_events"], 301);
    assert_eq!(state["as_of"], then["as_of"]);
    let (_, sub) = get(
        &app,
        &format!("/v1/subscriptions/sub_1?as_of={}", query(at)),
        "read_key_a",
    )
    .await;
    assert_eq!(sub["usage"][0]["used_units"], "1200", "{sub}");
    assert_eq!(
        (&sub["estimated_next_invoice_amount"], &sub["late_events"]),
        (&then["total"], &json!(301))
    );
    let (_, sub_now) = get(&app, "/v1/subscriptions/sub_1", "read_key_a").await;
    assert_eq!(sub_now["estimated_next_invoice_amount"], current["total"]);
    assert!(sub_now.get("late_events").is_none(), "{sub_now}");
    let (_, state_now) = get(&app, "/v1/customers/c1/billing_state", "read_key_a").await;
    assert_eq!(state_now["usage"][0]["used_units"], "1500");
    assert!(state_now.get("late_events").is_none(), "{state_now}");

    // A window holding only the late events' day: nothing then, and all of them late.
    let (from, to) = (
        (now - 3 * day - 3_600_000) / 1000,
        (now - 3 * day + 3_600_000) / 1000,
    );
    let path = format!(
        "/v1/subscriptions/sub_1/usage?from={from}&to={to}&as_of={}",
        query(at)
    );
    let (_, window) = get(&app, &path, "read_key_a").await;
    assert_eq!(window["charges"][0]["quantity"], "0", "{window}");
    assert_eq!(window["late_events"], 301);

    // As of now, the raw samples agree with the fast path's rollups and memory.
    let (_, all) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?as_of={}", query(Utc::now())),
        "read_key_a",
    )
    .await;
    assert_eq!(charges(&all), charges(&current));
    assert_eq!(
        (&all["subtotal"], &all["late_events"]),
        (&current["subtotal"], &json!(0))
    );

    // The meter's series: two days of calls as of the moment.
    let (from, to) = ((now - 4 * day) / 1000, now / 1000 + 60);
    let path = format!(
        "/v1/meters/calls/query?from={from}&to={to}&window_size=day&customer=c1&as_of={}",
        query(at)
    );
    let (status, series) = get(&app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{series}");
    let total: Decimal = series["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| dec(&p["value"]))
        .sum();
    assert_eq!(
        (total, &series["late_events"]),
        (d("1200"), &json!(300)),
        "{series}"
    );

    // Flexprice's usage read takes it in its body.
    let (status, flexprice) = app
        .post_raw(
            "/flexprice/v1/subscriptions/usage",
            "read_key_a",
            "application/json",
            json!({"subscription_id": "sub_1", "as_of": at.to_rfc3339()}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{flexprice}");
    assert_eq!(
        d(&flexprice["amount"].to_string()),
        calls_then + tokens_then
    );
    assert_eq!(flexprice["late_events"], 301);
    app.shutdown().await;
}

#[tokio::test]
async fn as_of_in_the_future_or_unreadable_is_refused_with_what_to_fix() {
    let app = spawn_app("as_of_refused").await;
    scenario(&app).await;
    let future = query(Utc::now() + TimeDelta::minutes(5));
    let now = Utc::now().timestamp();
    for path in [
        format!("/v1/subscriptions/sub_1/usage?as_of={future}"),
        format!("/v1/customers/c1/usage?as_of={future}"),
        format!("/v1/customers/c1/billing_state?as_of={future}"),
        format!("/v1/subscriptions/sub_1?as_of={future}"),
        format!(
            "/v1/meters/calls/query?from={}&to={now}&as_of={future}",
            now - 3600
        ),
    ] {
        let (status, body) = get(&app, &path, "read_key_a").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("as_of:") && message.contains("future"),
            "{message}"
        );
    }
    for bad in ["yesterday", "2026-13-01T00:00:00Z", ""] {
        let path = format!("/v1/subscriptions/sub_1/usage?as_of={bad}");
        let (status, body) = get(&app, &path, "read_key_a").await;
        assert_eq!(
            (status, body["status"].as_u64()),
            (400, Some(400)),
            "{bad}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("as_of:") && message.contains("RFC 3339"),
            "{message}"
        );
    }
    let (status, body) = app
        .post_raw(
            "/flexprice/v1/subscriptions/usage",
            "read_key_a",
            "application/json",
            json!({"subscription_id": "sub_1", "as_of": "soon"}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn as_of_rates_each_phase_of_a_plan_change_with_the_events_it_had() {
    let app = spawn_app("as_of_plan_change").await;
    let start = scenario(&app).await;
    post(&app, "/v1/plans", json!({"code": "cheap", "name": "Cheap", "currency": "USD", "interval": "month",
        "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.01"}]})).await;
    let now = Utc::now().timestamp_millis();
    ingest(&app, calls("pro", 1500, now - 86_400_000)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    post(
        &app,
        "/v1/subscriptions/sub_1/change_plan",
        json!({"plan": "cheap", "at": "now"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    ingest(&app, calls("cheap", 7, Utc::now().timestamp_millis())).await;
    let at = moment().await;
    // Late into both phases: 100 calls a day and a half ago (pro), 5 now (cheap).
    ingest(&app, calls("late-pro", 100, now - 129_600_000)).await;
    ingest(&app, calls("late-cheap", 5, Utc::now().timestamp_millis())).await;

    let to = (Utc::now() + TimeDelta::seconds(5)).timestamp_millis();
    let window = format!("from={}&to={to}", start.timestamp());
    let (status, then) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?{window}&as_of={}", query(at)),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{then}");
    let (pro_then, _) = pro_amounts(1500, &[]);
    assert_eq!(
        charges(&then),
        vec![
            ("pro/calls".into(), d("1500"), pro_then),
            ("pro/tokens".into(), d("0"), d("1.00")),
            ("cheap/calls".into(), d("7"), d("7") * d("0.01")),
        ]
    );
    assert_eq!(then["late_events"], 105, "{then}");
    let (_, current) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?{window}"),
        "read_key_a",
    )
    .await;
    let (pro_now, _) = pro_amounts(1600, &[]);
    assert_eq!(
        charges(&current),
        vec![
            ("pro/calls".into(), d("1600"), pro_now),
            ("pro/tokens".into(), d("0"), d("1.00")),
            ("cheap/calls".into(), d("12"), d("12") * d("0.01")),
        ]
    );
    // The flat fees depend on the phases, not on when events arrived.
    assert_eq!(then["flat_fees"], current["flat_fees"]);
    assert_eq!(
        dec(&current["subtotal"]) - dec(&then["subtotal"]),
        (pro_now - pro_then) + d("5") * d("0.01")
    );
    // The current period as of the moment: the same period, the same figures.
    let (_, period) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?as_of={}", query(at)),
        "read_key_a",
    )
    .await;
    assert_eq!(charges(&period), charges(&then));
    assert_eq!(period["late_events"], 105);
    app.shutdown().await;
}
