//! Vendor-shaped endpoints against a real ClickHouse: every field of each vendor's example
//! response (tests/compat/*.json) is present in ours with the example's JSON type, and the
//! figures match what this file computes from the plan's terms.

mod common;

use chrono::{TimeDelta, Utc};
use common::{TestApp, post_ok, spawn_app};
use serde_json::{Value, json};

/// An exact JSON number, as the service writes decimals (`3.00` is not `3.0`).
fn num(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn seed(name: &str) -> Value {
    let path = format!("{}/tests/compat/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every field of `seed` is in `ours` with the same JSON type. Array elements of ours are each
/// checked against the seed's first element. `null` is accepted only at `nullable` paths (the
/// vendor's own types declare them nullable) and where the seed shows `<unknown>`; `retyped`
/// paths may carry a string where the example shows a number (the vendor's client types them
/// as strings). Paths write array elements as `[]`.
fn conforms(seed: &Value, ours: &Value, nullable: &[&str], retyped: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    walk(seed, ours, "", nullable, retyped, &mut errors);
    errors
}

fn walk(
    seed: &Value,
    ours: &Value,
    path: &str,
    nullable: &[&str],
    retyped: &[&str],
    errors: &mut Vec<String>,
) {
    if seed == "<unknown>" || seed.is_null() {
        return;
    }
    if ours.is_null() {
        if !nullable.contains(&path) {
            errors.push(format!("{path}: null, the example has {seed}"));
        }
        return;
    }
    match (seed, ours) {
        (Value::Object(s), Value::Object(o)) => {
            for (key, value) in s {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match o.get(key) {
                    Some(mine) => walk(value, mine, &at, nullable, retyped, errors),
                    None => errors.push(format!("{at}: missing")),
                }
            }
        }
        (Value::Array(s), Value::Array(o)) => {
            if let Some(first) = s.first() {
                for mine in o {
                    walk(first, mine, &format!("{path}[]"), nullable, retyped, errors);
                }
            }
        }
        (Value::Number(_), Value::String(_)) if retyped.contains(&path) => {}
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        _ => errors.push(format!("{path}: {ours} where the example has {seed}")),
    }
}

fn assert_conforms(name: &str, ours: &Value, nullable: &[&str], retyped: &[&str]) {
    let errors = conforms(&seed(name), ours, nullable, retyped);
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{ours:#}");
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", app.base);
    let request = match method {
        "GET" => app.http.get(url),
        _ => app.http.post(url).json(&body.unwrap_or(Value::Null)),
    };
    let response = request.bearer_auth(key).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Plan `pro`: 49.00 a month; `calls` graduated past 1,000 included (0.002 to 10,000, then
/// 0.001); `tokens` 0.50 per started 1,000, per model. Customer `c1` subscribed 10 days ago,
/// with 1,500 calls and 2,500 + 400 tokens this period.
async fn scenario(app: &TestApp) {
    post_ok(app, "/v1/plans", json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance"},
          {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated", "included_units": "1000",
           "tiers": [{"up_to": "10000", "unit_amount": "0.002"}, {"up_to": null, "unit_amount": "0.001"}]},
          {"code": "tokens", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
           "package_amount": "0.50", "rounding": "up", "group_by": ["model"]}]})).await;
    post_ok(
        app,
        "/v1/plans",
        json!({"code": "scale", "name": "Scale", "currency": "USD", "interval": "month",
        "prices": [{"code": "base", "type": "flat", "amount": "99.00"}]}),
    )
    .await;
    post_ok(
        app,
        "/v1/customers",
        json!({"external_id": "c1", "name": "Acme", "email": "billing@acme.test"}),
    )
    .await;
    let start = Utc::now() - TimeDelta::days(10);
    post_ok(
        app,
        "/v1/subscriptions",
        json!({"external_id": "sub_1", "customer": "c1", "plan": "pro",
        "start_date": start.to_rfc3339()}),
    )
    .await;
    let now = Utc::now().timestamp_millis();
    let mut events: Vec<Value> = (0..1500)
        .map(|i| json!({"id": format!("call-{i}"), "customer": "c1", "type": "api_call", "timestamp": now - 1000 - i}))
        .collect();
    for (i, (model, tokens)) in [("gpt-a", 2500), ("gpt-b", 400)].iter().enumerate() {
        events.push(json!({"id": format!("tok-{i}"), "customer": "c1", "type": "llm_call", "timestamp": now - 5000,
                           "properties": {"tokens": tokens, "model": model}}));
    }
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
}

#[tokio::test]
async fn lark_billing_state_has_the_seed_shape_and_the_figures() {
    let app = spawn_app("compat_lark").await;
    scenario(&app).await;
    let (status, state) = send(
        &app,
        "GET",
        "/lark/customer-access/c1/billing-state",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_conforms("lark", &state, &[], &[]);
    assert_eq!(
        state["active_subscriptions"],
        json!([{"rate_card_id": "pro", "subscription_id": "sub_1"}])
    );
    assert_eq!(state["has_active_subscription"], true);
    assert_eq!(
        state["has_overage_for_usage"], true,
        "1,500 calls with 1,000 included"
    );
    assert_eq!(
        state["usage_data"],
        json!([{"included_units": 1000, "pricing_metric_id": "calls", "rate_name": "Calls", "used_units": "1500"},
               {"included_units": 0, "pricing_metric_id": "tokens", "rate_name": "Tokens", "used_units": "2900"}])
    );
    // A customer with no subscription: nothing active, nothing used.
    post_ok(
        &app,
        "/v1/customers",
        json!({"external_id": "c2", "name": "Idle"}),
    )
    .await;
    let (_, idle) = send(
        &app,
        "GET",
        "/lark/customer-access/c2/billing-state",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(
        idle,
        json!({"active_subscriptions": [], "has_active_subscription": false, "has_overage_for_usage": false, "usage_data": []})
    );
    let (status, missing) = send(
        &app,
        "GET",
        "/lark/customer-access/nobody/billing-state",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(
        (status, &missing["code"]),
        (404, &json!("customer_not_found"))
    );
    // Another tenant's key sees nothing of this one.
    let (status, _) = send(
        &app,
        "GET",
        "/lark/customer-access/c1/billing-state",
        "admin_key_b",
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn lago_current_usage_has_lagos_shape_figures_and_errors() {
    let app = spawn_app("compat_lago").await;
    scenario(&app).await;
    let path = "/lago/api/v1/customers/c1/current_usage?external_subscription_id=sub_1";
    let (status, body) = send(&app, "GET", path, "read_key_a", None).await;
    assert_eq!(status, 200, "{body}");
    assert_conforms(
        "lago",
        &body,
        &["customer_usage.charges_usage[].charge.invoice_display_name"],
        &[],
    );
    let usage = &body["customer_usage"];
    // calls: 500 past the included 1,000 at 0.002 = 1.00; tokens: 3 + 1 packages at 0.50 = 2.00.
    assert_eq!(usage["amount_cents"], 300);
    assert_eq!(usage["total_amount_cents"], 300);
    assert_eq!(usage["currency"], "USD");
    let calls = &usage["charges_usage"][0];
    assert_eq!(
        (
            &calls["units"],
            &calls["events_count"],
            &calls["amount_cents"]
        ),
        (&json!("1500"), &json!(1500), &json!(100))
    );
    assert_eq!(calls["charge"]["charge_model"], "graduated");
    assert_eq!(
        calls["billable_metric"],
        json!({"lago_id": "calls", "code": "calls", "name": "Calls", "aggregation_type": "count_agg"})
    );
    let tokens = &usage["charges_usage"][1];
    assert_eq!(
        (&tokens["units"], &tokens["amount_cents"]),
        (&json!("2900"), &json!(200))
    );
    let groups: Vec<(Value, Value)> = tokens["grouped_usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["grouped_by"].clone(), g["amount_cents"].clone()))
        .collect();
    assert_eq!(
        groups,
        vec![
            (json!({"model": "gpt-a"}), json!(150)),
            (json!({"model": "gpt-b"}), json!(50))
        ]
    );
    // Without external_subscription_id: the customer's active subscription.
    let (_, same) = send(
        &app,
        "GET",
        "/lago/api/v1/customers/c1/current_usage",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(same["customer_usage"]["amount_cents"], 300);
    // Lago's errors: 401 unknown key, 404 customer_not_found, 405 no_active_subscription.
    let (status, body) = send(&app, "GET", path, "no_such_key_1", None).await;
    assert_eq!(
        (status, &body["status"], &body["error"]),
        (401, &json!(401), &json!("Unauthorized"))
    );
    let (status, body) = send(
        &app,
        "GET",
        "/lago/api/v1/customers/nobody/current_usage",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(
        (status, &body["error"], &body["code"]),
        (404, &json!("Not Found"), &json!("customer_not_found"))
    );
    post_ok(
        &app,
        "/v1/customers",
        json!({"external_id": "c2", "name": "Idle"}),
    )
    .await;
    let (status, body) = send(
        &app,
        "GET",
        "/lago/api/v1/customers/c2/current_usage",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(
        (status, &body["status"], &body["error"], &body["code"]),
        (
            405,
            &json!(405),
            &json!("Method Not Allowed"),
            &json!("no_active_subscription")
        )
    );
}

#[tokio::test]
async fn lago_and_flexprice_events_are_stored_once_through_the_ingest_path() {
    let app = spawn_app("compat_ingest").await;
    scenario(&app).await;
    let now = Utc::now().timestamp();
    // Lago: one event by subscription, with fractional Unix seconds; then a batch that repeats it.
    let event = json!({"transaction_id": "lago-1", "external_subscription_id": "sub_1", "code": "api_call",
                       "timestamp": format!("{now}.250"), "properties": {}});
    let (status, body) = send(
        &app,
        "POST",
        "/lago/api/v1/events",
        "ingest_key_a",
        Some(json!({"event": event})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["transaction_id"], "lago-1");
    assert_eq!(
        body["event"]["timestamp"],
        json!(chrono::DateTime::from_timestamp_millis(now * 1000 + 250).unwrap())
    );
    let batch = json!({"events": [event, {"transaction_id": "lago-2", "external_subscription_id": "sub_1", "code": "api_call", "timestamp": now}]});
    let (status, body) = send(
        &app,
        "POST",
        "/lago/api/v1/events/batch",
        "ingest_key_a",
        Some(batch),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An unknown subscription is refused, and nothing of that batch is written.
    let bad = json!({"events": [{"transaction_id": "lago-3", "external_subscription_id": "sub_1", "code": "api_call"},
                                {"transaction_id": "lago-4", "external_subscription_id": "nope", "code": "api_call"}]});
    let (status, body) = send(
        &app,
        "POST",
        "/lago/api/v1/events/batch",
        "ingest_key_a",
        Some(bad),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("subscription_not_found")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("events[1].external_subscription_id"),
        "{body}"
    );
    // Flexprice: with and without event_id; string properties are read as numbers by meters.
    let flex = json!({"event_name": "llm_call", "external_customer_id": "c1", "event_id": "flex-1",
                      "properties": {"tokens": "700", "model": "gpt-a"}});
    let (status, body) = send(
        &app,
        "POST",
        "/flexprice/v1/events",
        "ingest_key_a",
        Some(flex.clone()),
    )
    .await;
    assert_eq!(
        (status, &body["event_id"]),
        (202, &json!("flex-1")),
        "{body}"
    );
    let (status, _) = send(
        &app,
        "POST",
        "/flexprice/v1/events",
        "ingest_key_a",
        Some(flex),
    )
    .await;
    assert_eq!(status, 202);
    let anonymous = json!({"event_name": "api_call", "external_customer_id": "c1"});
    let (status, body) = send(
        &app,
        "POST",
        "/flexprice/v1/events",
        "ingest_key_a",
        Some(anonymous),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["event_id"].as_str().unwrap().starts_with("evt_"),
        "{body}"
    );
    let bulk = json!({"events": [{"event_name": "api_call", "external_customer_id": "c1", "event_id": "flex-2"}]});
    let (status, _) = send(
        &app,
        "POST",
        "/flexprice/v1/events/bulk",
        "ingest_key_a",
        Some(bulk),
    )
    .await;
    assert_eq!(status, 202);
    // Validation is the ingest path's: a missing customer names the field.
    let (status, body) = send(
        &app,
        "POST",
        "/flexprice/v1/events",
        "ingest_key_a",
        Some(json!({"event_name": "api_call"})),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_events")),
        "{body}"
    );
    // Roles: a read key may not send events.
    let (status, _) = send(
        &app,
        "POST",
        "/lago/api/v1/events",
        "read_key_a",
        Some(json!({"event": {}})),
    )
    .await;
    assert_eq!(status, 403);

    let count = |ids: &str| {
        format!(
            "SELECT count() FROM test_compat_ingest.events WHERE tenant = 'acme' AND id IN ({ids})"
        )
    };
    assert_eq!(
        app.scalar(&count("'lago-1', 'lago-2'")).await,
        2,
        "each Lago event once"
    );
    assert_eq!(
        app.scalar(&count("'lago-3', 'lago-4'")).await,
        0,
        "a refused batch writes nothing"
    );
    assert_eq!(
        app.scalar(&count("'flex-1', 'flex-2'")).await,
        2,
        "each Flexprice event once"
    );
    // The usage read sees them: 1,500 + 2 Lago + 2 Flexprice calls; 2,900 + 700 tokens.
    let (_, state) = send(
        &app,
        "GET",
        "/v1/customers/c1/billing_state",
        "read_key_a",
        None,
    )
    .await;
    let used: Vec<&Value> = state["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["used_units"])
        .collect();
    assert_eq!(used, vec![&json!("1504"), &json!("3600")], "{state}");
}

#[tokio::test]
async fn flexprice_subscription_usage_has_the_seed_shape_and_the_figures() {
    let app = spawn_app("compat_flexprice").await;
    scenario(&app).await;
    let (status, body) = send(
        &app,
        "POST",
        "/flexprice/v1/subscriptions/usage",
        "read_key_a",
        Some(json!({"subscription_id": "sub_1"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Flexprice's client types price amounts and tier amounts as decimal strings.
    let retyped = [
        "charges[].price.amount",
        "charges[].price.tiers[].flat_amount",
        "charges[].price.tiers[].unit_amount",
    ];
    // Null where the price's model has no such field, or meterhouse keeps no such data.
    let nullable = [
        "charges[].price.tiers[].up_to",
        "charges[].price.amount",
        "charges[].price.display_amount",
        "charges[].price.tier_mode",
        "charges[].price.tiers",
        "charges[].price.transform_quantity",
        "charges[].price.created_by",
        "charges[].price.updated_by",
        "charges[].price.description",
        "charges[].price.environment_id",
    ];
    assert_conforms("flexprice", &body, &nullable, &retyped);
    assert_eq!(body["amount"], num("3.00"));
    assert_eq!(
        body["amount"].to_string(),
        "3.00",
        "exact decimal, not a float"
    );
    assert_eq!(body["display_amount"], "$3.00");
    let calls = &body["charges"][0];
    assert_eq!(
        (&calls["quantity"], &calls["amount"], &calls["meter_id"]),
        (&json!(1500), &num("1.00"), &json!("calls"))
    );
    assert_eq!(calls["price"]["billing_model"], "TIERED");
    assert_eq!(calls["price"]["tier_mode"], "SLAB");
    assert_eq!(
        calls["price"]["tiers"][0],
        json!({"up_to": 10000, "unit_amount": "0.002", "flat_amount": "0"})
    );
    let tokens = &body["charges"][1];
    assert_eq!(tokens["price"]["billing_model"], "PACKAGE");
    assert_eq!(
        tokens["price"]["transform_quantity"],
        json!({"divide_by": 1000, "round": "up"})
    );
    assert_eq!(tokens["amount"], num("2.00"));
    // An explicit window that holds none of the usage.
    let (status, empty) = send(&app, "POST", "/flexprice/v1/subscriptions/usage", "read_key_a",
        Some(json!({"subscription_id": "sub_1", "start_time": (Utc::now() - TimeDelta::days(9)).to_rfc3339(),
                    "end_time": (Utc::now() - TimeDelta::days(8)).to_rfc3339()}))).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["amount"], num("0.00"));
    // Lifetime: from the start to now, the same usage.
    let (_, lifetime) = send(
        &app,
        "POST",
        "/flexprice/v1/subscriptions/usage",
        "read_key_a",
        Some(json!({"subscription_id": "sub_1", "lifetime_usage": true})),
    )
    .await;
    assert_eq!(lifetime["amount"], num("3.00"), "{lifetime}");
    let (status, body) = send(
        &app,
        "POST",
        "/flexprice/v1/subscriptions/usage",
        "read_key_a",
        Some(json!({"subscription_id": "nope"})),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("subscription_not_found"))
    );
    let (status, _) = send(
        &app,
        "POST",
        "/flexprice/v1/subscriptions/usage",
        "read_key_a",
        Some(json!({"subscription_id": "sub_1", "start_time": "2026-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn flowglad_billing_has_the_seed_shape_and_the_balances() {
    let app = spawn_app("compat_flowglad").await;
    scenario(&app).await;
    let (status, body) = send(
        &app,
        "GET",
        "/flowglad/api/v1/customers/c1/billing",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Null where Flowglad's own types allow it and meterhouse has no such data.
    let mut nullable: Vec<String> = [
        "domain",
        "iconURL",
        "logoURL",
        "invoiceNumberBase",
        "userId",
        "billingAddress",
    ]
    .iter()
    .map(|k| format!("customer.{k}"))
    .collect();
    nullable.push("billingPortalUrl".into());
    for subs in [
        "subscriptions[]",
        "currentSubscriptions[]",
        "currentSubscription",
    ] {
        for key in [
            "defaultPaymentMethodId",
            "backupPaymentMethodId",
            "cancellationReason",
            "replacedBySubscriptionId",
            "doNotCharge",
            "canceledAt",
            "cancelScheduledAt",
            "metadata",
        ] {
            nullable.push(format!("{subs}.{key}"));
        }
        for key in [
            "externalId",
            "expiredAt",
            "metadata",
            "price.productId",
            "price.trialPeriodDays",
        ] {
            nullable.push(format!("{subs}.subscriptionItems[].{key}"));
        }
    }
    for model in ["catalog", "pricingModel"] {
        for product in ["products[]", "defaultProduct"] {
            for key in [
                "description",
                "imageURL",
                "singularQuantityLabel",
                "pluralQuantityLabel",
            ] {
                nullable.push(format!("{model}.{product}.{key}"));
            }
            for prices in ["prices[]", "defaultPrice"] {
                nullable.push(format!("{model}.{product}.{prices}.productId"));
                nullable.push(format!("{model}.{product}.{prices}.trialPeriodDays"));
            }
        }
    }
    let nullable: Vec<&str> = nullable.iter().map(String::as_str).collect();
    // The example shows a `defaultProduct`; meterhouse has no default plan, so it checks the rest.
    let mut seed = seed("flowglad");
    for model in ["catalog", "pricingModel"] {
        seed[model]
            .as_object_mut()
            .unwrap()
            .remove("defaultProduct");
    }
    let errors = conforms(&seed, &body, &nullable, &[]);
    assert!(errors.is_empty(), "{errors:#?}");

    assert_eq!(body["customer"]["externalId"], "c1");
    assert_eq!(body["customer"]["email"], "billing@acme.test");
    let current = &body["currentSubscription"];
    assert_eq!(
        (&current["id"], &current["status"], &current["interval"]),
        (&json!("sub_1"), &json!("active"), &json!("month"))
    );
    assert_eq!(body["currentSubscriptions"].as_array().unwrap().len(), 1);
    // Balances: included units left, negative past them.
    let balances: Vec<(Value, Value)> = current["experimental"]["usageMeterBalances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["slug"].clone(), b["availableBalance"].clone()))
        .collect();
    assert_eq!(
        balances,
        vec![
            (json!("calls"), json!(-500)),
            (json!("tokens"), json!(-2900))
        ]
    );
    // Prices count in cents: the 49.00 base is 4900; a call past the included ones 0.2.
    let items = current["subscriptionItems"].as_array().unwrap();
    let unit_prices: Vec<(Value, Value)> = items
        .iter()
        .map(|i| (i["priceId"].clone(), i["unitPrice"].clone()))
        .collect();
    assert_eq!(
        unit_prices,
        vec![
            (json!("base"), json!(4900)),
            (json!("calls"), json!(0.2)),
            (json!("tokens"), json!(50))
        ]
    );
    assert_eq!(items[2]["price"]["usageEventsPerUnit"], json!(1000));
    assert_eq!(
        (
            &body["invoices"],
            &body["paymentMethods"],
            &body["purchases"]
        ),
        (&json!([]), &json!([]), &json!([]))
    );
    let products: Vec<&Value> = body["pricingModel"]["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["id"])
        .collect();
    assert_eq!(products, vec![&json!("pro"), &json!("scale")]);
}

#[tokio::test]
async fn diga_subscription_is_the_customer_keys_own_with_minutes_and_next_phase() {
    let app = spawn_app("compat_diga").await;
    scenario(&app).await;
    let (status, body) = send(
        &app,
        "GET",
        "/diga/v1/billing/subscription/",
        "cust_key_a",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_conforms("diga", &body, &["next_phase"], &[]);
    assert_eq!(
        (&body["name"], &body["period"], &body["currency"]),
        (&json!("Pro"), &json!("month"), &json!("USD"))
    );
    assert_eq!(
        (&body["included_minutes"], &body["minutes_count"]),
        (&json!(1000), &json!(1500))
    );
    assert_eq!(body["price"].to_string(), "49.00");
    assert_eq!(body["overage_price_per_minute"], json!(0.002));
    // 49.00 + 1.00 calls + 2.00 tokens.
    assert_eq!(body["next_invoice_amount"].to_string(), "52.00");
    assert_eq!(body["next_invoice_date"], body["period_end"]);
    assert_eq!(body["next_phase"], Value::Null);
    // A plan change at the period's end shows as the next phase.
    post_ok(
        &app,
        "/v1/subscriptions/sub_1/change_plan",
        json!({"plan": "scale", "at": "period_end"}),
    )
    .await;
    let (_, body) = send(
        &app,
        "GET",
        "/diga/v1/billing/subscription",
        "cust_key_a",
        None,
    )
    .await;
    assert_eq!(
        body["next_phase"],
        json!({"name": "Scale", "period": "month", "price": num("99.00")}),
        "{body}"
    );
    assert_conforms("diga", &body, &[], &[]);
    // Only customer keys: the route answers for the key's own customer.
    let (status, body) = send(
        &app,
        "GET",
        "/diga/v1/billing/subscription/",
        "read_key_a",
        None,
    )
    .await;
    assert_eq!((status, &body["code"]), (403, &json!("forbidden")));
    // A cancelled subscription announces no next invoice.
    post_ok(
        &app,
        "/v1/subscriptions/sub_1/cancel",
        json!({"at": "period_end"}),
    )
    .await;
    let (_, body) = send(
        &app,
        "GET",
        "/diga/v1/billing/subscription/",
        "cust_key_a",
        None,
    )
    .await;
    assert_eq!(body["next_invoice_date"], Value::Null, "{body}");
}

#[tokio::test]
async fn vendor_routes_are_in_the_openapi_document() {
    let app = spawn_app("compat_openapi").await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    for path in [
        "/lark/customer-access/{subject_id}/billing-state",
        "/lago/api/v1/customers/{external_customer_id}/current_usage",
        "/lago/api/v1/events",
        "/lago/api/v1/events/batch",
        "/flowglad/api/v1/customers/{externalId}/billing",
        "/flexprice/v1/subscriptions/usage",
        "/flexprice/v1/events",
        "/flexprice/v1/events/bulk",
        "/diga/v1/billing/subscription/",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
}

/// Under c1's customer key every vendor shape shows c1's own plans and figures only: a plan
/// of another customer's (with its telltale price) appears in none, and the other customer's
/// routes are refused.
#[tokio::test]
async fn vendor_shapes_under_a_customer_key_show_only_that_customer() {
    let app = spawn_app("compat_customer_key").await;
    scenario(&app).await;
    post_ok(
        &app,
        "/v1/plans",
        json!({"code": "bigco-secret-deal", "name": "Secret", "currency": "USD",
        "interval": "month", "prices": [{"code": "secret_calls", "type": "usage", "meter": "calls",
        "model": "per_unit", "unit_amount": "99999.00"}]}),
    )
    .await;
    post_ok(
        &app,
        "/v1/customers",
        json!({"external_id": "c2", "name": "Bigco"}),
    )
    .await;
    post_ok(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_2", "customer": "c2",
        "plan": "bigco-secret-deal", "start_date": (Utc::now() - TimeDelta::days(3)).to_rfc3339()}),
    )
    .await;
    let own: [(&str, &str, Option<Value>); 5] = [
        (
            "GET",
            "/lago/api/v1/customers/c1/current_usage?external_subscription_id=sub_1",
            None,
        ),
        (
            "POST",
            "/flexprice/v1/subscriptions/usage",
            Some(json!({"subscription_id": "sub_1"})),
        ),
        ("GET", "/flowglad/api/v1/customers/c1/billing", None),
        ("GET", "/lark/customer-access/c1/billing-state", None),
        ("GET", "/diga/v1/billing/subscription/", None),
    ];
    for (method, path, body) in own {
        let (status, answer) = send(&app, method, path, "cust_key_a", body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let text = answer.to_string();
        for secret in [
            "bigco-secret-deal",
            "secret_calls",
            "99999",
            "sub_2",
            "\"c2\"",
        ] {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
    }
    let (_, admin_view) = send(
        &app,
        "GET",
        "/flowglad/api/v1/customers/c1/billing",
        "read_key_a",
        None,
    )
    .await;
    assert!(
        admin_view.to_string().contains("bigco-secret-deal"),
        "a read key sees the tenant's whole pricing model"
    );
    let theirs: [(&str, &str, Option<Value>); 4] = [
        (
            "GET",
            "/lago/api/v1/customers/c2/current_usage?external_subscription_id=sub_2",
            None,
        ),
        (
            "POST",
            "/flexprice/v1/subscriptions/usage",
            Some(json!({"subscription_id": "sub_2"})),
        ),
        ("GET", "/flowglad/api/v1/customers/c2/billing", None),
        ("GET", "/lark/customer-access/c2/billing-state", None),
    ];
    for (method, path, body) in theirs {
        let (status, answer) = send(&app, method, path, "cust_key_a", body).await;
        assert!(status == 403 || status == 404, "{path}: {status} {answer}");
        assert!(
            !answer.to_string().contains("bigco-secret-deal"),
            "{path}: {answer}"
        );
    }
    app.shutdown().await;
}
