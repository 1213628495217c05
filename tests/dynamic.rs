//! The `dynamic` model end to end against a real ClickHouse: each event priced at its own unit
//! amount (a property), the first included units of a group free, groups, minimum and maximum;
//! events without a usable unit amount refused at ingest; figures as of a moment. Amounts are
//! computed here, event by event, from what was sent.

mod common;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use common::{TestApp, d, dec, get_json as get, post_ok as post, spawn_app};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// A tokens event (meter `tokens`: sum of `tokens` by `model`) priced at `unit_price`.
struct Tokens {
    id: &'static str,
    model: &'static str,
    tokens: u64,
    unit_price: &'static str,
    days_ago: i64,
}

impl Tokens {
    fn event(&self, now_ms: i64) -> Value {
        json!({"id": self.id, "customer": "c1", "type": "llm_call",
               "timestamp": now_ms - self.days_ago * 86_400_000,
               "properties": {"tokens": self.tokens, "model": self.model, "unit_price": self.unit_price}})
    }
}

/// What `model`'s events cost with its first `included` tokens (oldest first) free.
fn expected(events: &[&Tokens], model: &str, included: u64) -> Decimal {
    let mut of_model: Vec<&&Tokens> = events.iter().filter(|e| e.model == model).collect();
    of_model.sort_by_key(|e| (std::cmp::Reverse(e.days_ago), e.id));
    let mut used = 0;
    let mut amount = Decimal::ZERO;
    for e in of_model {
        let free = e.tokens.min(included.saturating_sub(used));
        used += e.tokens;
        amount += Decimal::from(e.tokens - free) * d(e.unit_price);
    }
    amount
}

async fn post_status(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    app.post_raw(path, "admin_key_a", "application/json", body.to_string())
        .await
}

async fn scenario(app: &TestApp) {
    post(
        app,
        "/v1/plans",
        json!({"code": "llm", "name": "LLM", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "tokens_cost", "type": "usage", "meter": "tokens", "model": "dynamic",
           "unit_amount_property": "unit_price", "included_units": "1000", "group_by": ["model"]},
          {"code": "tokens_capped", "type": "usage", "meter": "tokens", "model": "dynamic",
           "unit_amount_property": "unit_price", "maximum_amount": "4.00"},
          {"code": "calls_cost", "type": "usage", "meter": "calls", "model": "dynamic",
           "unit_amount_property": "cost", "minimum_amount": "1.00"}]}),
    )
    .await;
    post(app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start =
        DateTime::from_timestamp((Utc::now() - TimeDelta::days(10)).timestamp(), 0).unwrap();
    post(app, "/v1/subscriptions", json!({"external_id": "sub_1", "customer": "c1", "plan": "llm", "start_date": start.to_rfc3339()})).await;
}

fn charge<'a>(report: &'a Value, price: &str) -> &'a Value {
    report["charges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["price"] == price)
        .unwrap_or_else(|| panic!("no charge {price}: {report}"))
}

#[tokio::test]
async fn each_event_is_priced_at_its_own_unit_amount_past_the_first_included_units() {
    let app = spawn_app("dynamic_priced").await;
    scenario(&app).await;
    let now = Utc::now().timestamp_millis();
    let sent = [
        Tokens {
            id: "t1",
            model: "gpt-x",
            tokens: 600,
            unit_price: "0.002",
            days_ago: 3,
        },
        Tokens {
            id: "t2",
            model: "gpt-x",
            tokens: 700,
            unit_price: "0.003",
            days_ago: 2,
        },
        Tokens {
            id: "t3",
            model: "gpt-x",
            tokens: 500,
            unit_price: "0.001",
            days_ago: 1,
        },
        Tokens {
            id: "t4",
            model: "small",
            tokens: 800,
            unit_price: "0.0005",
            days_ago: 2,
        },
        Tokens {
            id: "t5",
            model: "small",
            tokens: 900,
            unit_price: "0.0004",
            days_ago: 1,
        },
    ];
    let mut body: Vec<Value> = sent.iter().map(|t| t.event(now)).collect();
    for (i, cost) in [json!(0.10), json!("0.25"), json!(0.05)]
        .into_iter()
        .enumerate()
    {
        body.push(json!({"id": format!("call-{i}"), "customer": "c1", "type": "api_call",
                         "timestamp": now - 3_600_000 * (i as i64 + 1), "properties": {"cost": cost}}));
    }
    let (status, ack) = app.post_events("ingest_key_a", &json!(body)).await;
    assert_eq!(status, 202, "{ack}");

    let (status, report) = get(&app, "/v1/subscriptions/sub_1/usage", "read_key_a").await;
    assert_eq!(status, 200, "{report}");
    let all: Vec<&Tokens> = sent.iter().collect();
    let (gpt, small) = (expected(&all, "gpt-x", 1000), expected(&all, "small", 1000));
    // gpt-x: 600 free, then 400 of 700 free: 300 × 0.003 + 500 × 0.001 = 1.4.
    assert_eq!(gpt, d("1.4"));
    let cost = charge(&report, "tokens_cost");
    assert_eq!(
        common::by_model(cost, "amount"),
        vec![("gpt-x".into(), gpt), ("small".into(), small)]
    );
    assert_eq!(dec(&cost["amount"]), gpt + small);
    assert_eq!(dec(&cost["quantity"]), d("3500"));
    assert_eq!(
        dec(&cost["billable_quantity"]),
        d("1500"),
        "800 + 700 past 1,000 per model"
    );
    // Every token at its price, capped at 4.00: 1.2 + 2.1 + 0.5 + 0.4 + 0.36 = 4.56.
    let uncapped = expected(&all, "gpt-x", 0) + expected(&all, "small", 0);
    assert_eq!(uncapped, d("4.56"));
    assert_eq!(dec(&charge(&report, "tokens_capped")["amount"]), d("4.00"));
    // Three calls at their own cost, 0.40, raised to the 1.00 minimum.
    let calls = charge(&report, "calls_cost");
    assert_eq!(
        (dec(&calls["quantity"]), dec(&calls["amount"])),
        (d("3"), d("1.00"))
    );
    assert_eq!(
        dec(&report["subtotal"]),
        gpt + small + d("4.00") + d("1.00")
    );

    // A late event, older than all the others: it takes the first included units, so the
    // figures change; as of before it, they do not.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = Tokens {
        id: "t0",
        model: "gpt-x",
        tokens: 200,
        unit_price: "0.01",
        days_ago: 4,
    };
    let (status, ack) = app
        .post_events("ingest_key_a", &json!([late.event(now)]))
        .await;
    assert_eq!(status, 202, "{ack}");
    let (_, now_report) = get(&app, "/v1/subscriptions/sub_1/usage", "read_key_a").await;
    let with_late: Vec<&Tokens> = sent.iter().chain([&late]).collect();
    let gpt_now = expected(&with_late, "gpt-x", 1000);
    assert_eq!(
        gpt_now,
        d("2.0"),
        "t0 and t1 free, 200 of t2 free: 500 × 0.003 + 0.5"
    );
    assert_eq!(
        common::by_model(charge(&now_report, "tokens_cost"), "amount"),
        vec![("gpt-x".into(), gpt_now), ("small".into(), small)]
    );
    let as_of = at
        .to_rfc3339_opts(SecondsFormat::Millis, true)
        .replace(':', "%3A");
    let (status, then) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?as_of={as_of}"),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(
        common::by_model(charge(&then, "tokens_cost"), "amount"),
        vec![("gpt-x".into(), gpt), ("small".into(), small)]
    );
    assert_eq!(then["late_events"], 1);
    app.shutdown().await;
}

#[tokio::test]
async fn events_without_a_usable_unit_amount_and_bad_dynamic_prices_are_refused() {
    let app = spawn_app("dynamic_refused").await;
    scenario(&app).await;
    let now = Utc::now().timestamp_millis();
    let good = json!({"id": "ok", "customer": "c1", "type": "llm_call", "timestamp": now,
                      "properties": {"tokens": 5, "model": "a", "unit_price": 1}});
    for (properties, why) in [
        (json!({"tokens": 5, "model": "a"}), "required"),
        (
            json!({"tokens": 5, "model": "a", "unit_price": "about 1"}),
            "a number",
        ),
        (
            json!({"tokens": 5, "model": "a", "unit_price": [1]}),
            "a number",
        ),
    ] {
        let bad = json!({"id": "bad", "customer": "c1", "type": "llm_call", "timestamp": now, "properties": properties});
        let (status, body) = app.post_events("ingest_key_a", &json!([good, bad])).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_events")),
            "{body}"
        );
        let error = &body["errors"][0];
        assert_eq!(
            (error["index"].as_u64(), error["field"].as_str()),
            (Some(1), Some("properties.unit_price")),
            "{body}"
        );
        assert!(error["message"].as_str().unwrap().contains(why), "{body}");
    }
    // A call without its cost; an event other meters ignore needs none.
    let call = json!({"id": "call", "customer": "c1", "type": "api_call", "timestamp": now});
    let (status, body) = app.post_events("ingest_key_a", &json!([call])).await;
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (400, Some("properties.cost")),
        "{body}"
    );
    let other = json!({"id": "other", "customer": "c1", "type": "page_view", "timestamp": now});
    assert_eq!(
        app.post_events("ingest_key_a", &json!([other])).await.0,
        202
    );
    assert_eq!(
        app.scalar("SELECT count() FROM events WHERE id IN ('ok', 'bad', 'call')")
            .await,
        0,
        "a refused request writes nothing"
    );

    post(
        &app,
        "/v1/meters",
        json!({"slug": "users", "name": "Users", "event_type": "login",
        "aggregation": "unique_count", "value_property": "user"}),
    )
    .await;
    for (price, field) in [
        (
            json!({"code": "p", "type": "usage", "meter": "tokens", "model": "dynamic"}),
            "prices[0].unit_amount_property",
        ),
        (
            json!({"code": "p", "type": "usage", "meter": "users", "model": "dynamic", "unit_amount_property": "x"}),
            "prices[0].model",
        ),
        (
            json!({"code": "p", "type": "usage", "meter": "tokens", "model": "per_unit", "unit_amount": "1", "unit_amount_property": "x"}),
            "prices[0].unit_amount_property",
        ),
    ] {
        let plan = json!({"code": "bad", "name": "Bad", "currency": "USD", "interval": "month", "prices": [price]});
        let (status, body) = post_status(&app, "/v1/plans", plan).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{field}: {body}"
        );
    }
    app.shutdown().await;
}

/// A price may group by a property its meter does not: the samples carry it all the same.
#[tokio::test]
async fn a_dynamic_price_groups_by_a_property_its_meter_does_not() {
    let app = spawn_app("dynamic_price_groups").await;
    post(&app, "/v1/plans", json!({"code": "regional", "name": "Regional", "currency": "USD", "interval": "month",
        "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "dynamic",
                    "unit_amount_property": "cost", "included_units": "1", "group_by": ["region"]}]})).await;
    post(&app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start = DateTime::from_timestamp((Utc::now() - TimeDelta::days(3)).timestamp(), 0).unwrap();
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_r", "customer": "c1", "plan": "regional", "start_date": start.to_rfc3339()})).await;
    let now = Utc::now().timestamp_millis();
    let calls = [
        ("eu", "0.10", 3),
        ("eu", "0.20", 2),
        ("us", "0.40", 1),
        ("us", "0.80", 2),
    ];
    let body: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (region, cost, hours_ago))| {
            json!({"id": format!("c{i}"), "customer": "c1", "type": "api_call",
                   "timestamp": now - hours_ago * 3_600_000 - i as i64, "properties": {"region": region, "cost": cost}})
        })
        .collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(body)).await.0, 202);
    let (status, report) = get(&app, "/v1/subscriptions/sub_r/usage", "read_key_a").await;
    assert_eq!(status, 200, "{report}");
    let groups: Vec<(String, Decimal)> = report["charges"][0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"]["region"].as_str().unwrap().to_owned(),
                dec(&g["amount"]),
            )
        })
        .collect();
    // Per region, the oldest call is the included one: eu 0.10 free, 0.20 paid; us 0.80 (two
    // hours ago) free, 0.40 paid.
    assert_eq!(
        groups,
        vec![("eu".into(), d("0.20")), ("us".into(), d("0.40"))]
    );
    app.shutdown().await;
}
