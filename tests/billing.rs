//! Usage and charges end to end against a real ClickHouse: events in, the API's quantities and
//! amounts compared with values computed here from the plan's terms.

mod common;

use chrono::{TimeDelta, Utc};
use common::{TestApp, d, dec, get_json as get, post_ok as post, spawn_app, spawn_backfill_app};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// The acme test tenant's meters `calls` (count) and `tokens` (sum by model), a plan on them,
/// a customer and a subscription that started 10 days ago.
async fn scenario(app: &TestApp) -> chrono::DateTime<Utc> {
    post(app, "/v1/plans", json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
          {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated", "included_units": "1000",
           "tiers": [{"up_to": "10000", "unit_amount": "0.002", "flat_amount": "0"}, {"up_to": null, "unit_amount": "0.001", "flat_amount": "0"}]},
          {"code": "tokens", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
           "package_amount": "0.50", "rounding": "up", "minimum_amount": "1.00", "group_by": ["model"]}]})).await;
    post(
        app,
        "/v1/customers",
        json!({"external_id": "c1", "name": "Acme"}),
    )
    .await;
    let start = (Utc::now() - TimeDelta::days(10)).with_nanosecond_zero();
    post(app, "/v1/subscriptions", json!({"external_id": "sub_1", "customer": "c1", "plan": "pro", "start_date": start.to_rfc3339()})).await;
    start
}

trait NanoZero {
    fn with_nanosecond_zero(self) -> Self;
}

impl NanoZero for chrono::DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        chrono::DateTime::from_timestamp(self.timestamp(), 0).unwrap()
    }
}

async fn ingest(app: &TestApp, calls: usize, tokens: &[(&str, u64)]) {
    let now = Utc::now().timestamp_millis();
    let mut body: Vec<Value> = (0..calls)
        .map(|i| json!({"id": format!("call-{i}"), "customer": "c1", "type": "api_call", "timestamp": now - 1000 - i as i64 * 997}))
        .collect();
    for (i, (model, n)) in tokens.iter().enumerate() {
        body.push(json!({"id": format!("tok-{i}"), "customer": "c1", "type": "llm_call", "timestamp": now - 5000,
                         "properties": {"tokens": n, "model": model}}));
    }
    let (status, ack) = app.post_events("ingest_key_a", &json!(body)).await;
    assert_eq!(status, 202, "{ack}");
}

#[tokio::test]
async fn current_period_usage_and_charges_are_exact() {
    let app = spawn_app("billing_current").await;
    let start = scenario(&app).await;
    ingest(
        &app,
        1234,
        &[("gpt-x", 1500), ("gpt-x", 1000), ("small", 300)],
    )
    .await;

    // Independent figures: calls 1234 - 1000 included = 234 at 0.002; tokens by model:
    // gpt-x 2500 -> 3 packages, small 300 -> 1 package, at 0.50; base fee whole.
    let calls_amount = d("234") * d("0.002");
    let tokens_amount = (d("3") + d("1")) * d("0.50");
    let subtotal = calls_amount + tokens_amount + d("49.00");

    let (status, usage) = get(&app, "/v1/subscriptions/sub_1/usage", "read_key_a").await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        usage["from"].as_str().unwrap(),
        start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(
        (usage["currency"].as_str(), usage["plan"].as_str()),
        (Some("USD"), Some("pro"))
    );
    let calls = &usage["charges"][0];
    assert_eq!(
        (
            dec(&calls["quantity"]),
            dec(&calls["billable_quantity"]),
            calls["events_count"].as_u64()
        ),
        (d("1234"), d("234"), Some(1234))
    );
    assert_eq!(dec(&calls["amount"]), calls_amount);
    assert_eq!(dec(&calls["tiers"][0]["quantity"]), d("234"));
    let tokens = &usage["charges"][1];
    assert_eq!(dec(&tokens["amount"]), tokens_amount);
    let groups = common::by_model(tokens, "quantity");
    assert_eq!(
        groups,
        vec![("gpt-x".into(), d("2500")), ("small".into(), d("300"))]
    );
    assert_eq!(dec(&usage["flat_fees"][0]["amount"]), d("49.00"));
    assert_eq!(dec(&usage["subtotal"]), subtotal);
    assert_eq!(usage["total"], "51.47", "51.468 rounds half-even to cents");

    let (_, by_customer) = get(&app, "/v1/customers/c1/usage", "admin_key_a").await;
    assert_eq!(by_customer["total"], usage["total"]);
    let (_, sub) = get(&app, "/v1/subscriptions/sub_1", "read_key_a").await;
    assert_eq!(sub["estimated_next_invoice_amount"], "51.47");
    assert_eq!(sub["usage"][0]["used_units"], "1234");

    let (_, state) = get(&app, "/v1/customers/c1/billing_state", "cust_key_a").await;
    assert_eq!(state["has_active_subscription"], true);
    assert_eq!(state["has_overage"], true, "1234 calls > 1000 included");
    assert_eq!(state["active_subscriptions"][0]["subscription"], "sub_1");
    assert_eq!(state["usage"][0]["included_units"], "1000");
    app.shutdown().await;
}

#[tokio::test]
async fn any_window_is_rated_and_a_minimum_applies() {
    let app = spawn_app("billing_window").await;
    scenario(&app).await;
    ingest(&app, 10, &[("small", 10)]).await;
    let from = (Utc::now() - TimeDelta::hours(2)).to_rfc3339();
    let to = Utc::now().timestamp().to_string();
    let (status, usage) = get(
        &app,
        &format!(
            "/v1/subscriptions/sub_1/usage?from={}&to={to}",
            urlencode(&from)
        ),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        dec(&usage["charges"][0]["amount"]),
        Decimal::ZERO,
        "10 calls are within the 1000 included"
    );
    assert_eq!(
        dec(&usage["charges"][1]["amount"]),
        d("1.00"),
        "one package is 0.50, the minimum is 1.00"
    );
    let (status, bad) = get(
        &app,
        "/v1/subscriptions/sub_1/usage?from=yesterday&to=1",
        "read_key_a",
    )
    .await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = get(
        &app,
        &format!("/v1/subscriptions/sub_1/usage?from={to}&to={to}"),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 400, "an empty window is refused");
    app.shutdown().await;
}

#[tokio::test]
async fn a_plan_change_now_splits_the_period_and_each_part_uses_its_plan() {
    let app = spawn_app("billing_change").await;
    let start = scenario(&app).await;
    post(&app, "/v1/plans", json!({"code": "cheap", "name": "Cheap", "currency": "USD", "interval": "month",
        "prices": [{"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.01"}]})).await;
    ingest(&app, 1500, &[]).await; // before the change: 500 billable on pro
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    post(
        &app,
        "/v1/subscriptions/sub_1/change_plan",
        json!({"plan": "cheap", "at": "now"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let now = Utc::now().timestamp_millis();
    let later: Vec<Value> = (0..7).map(|i| json!({"id": format!("after-{i}"), "customer": "c1", "type": "api_call", "timestamp": now})).collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(later)).await.0, 202);

    let to = (Utc::now() + TimeDelta::seconds(5)).timestamp_millis();
    let (status, usage) = get(
        &app,
        &format!(
            "/v1/subscriptions/sub_1/usage?from={}&to={to}",
            start.timestamp()
        ),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let charges: Vec<(String, Decimal, Decimal)> = usage["charges"]
        .as_array()
        .unwrap()
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
        .collect();
    assert_eq!(
        charges,
        vec![
            ("pro/calls".into(), d("1500"), d("500") * d("0.002")),
            ("pro/tokens".into(), d("0"), d("1.00")),
            ("cheap/calls".into(), d("7"), d("0.07")),
        ]
    );
    let fee = dec(&usage["flat_fees"][0]["amount"]);
    assert!(
        fee > d("0") && fee < d("49.00"),
        "the base fee is prorated to the part of the period on pro: {fee}"
    );
    assert_eq!(usage["plan"], "cheap");
    app.shutdown().await;
}

#[tokio::test]
async fn usage_errors_follow_the_contract() {
    let app = spawn_app("billing_errors").await;
    scenario(&app).await;
    post(&app, "/v1/customers", json!({"external_id": "lonely"})).await;
    let (status, body) = get(&app, "/v1/customers/lonely/usage", "read_key_a").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("no_active_subscription"))
    );
    let (status, body) = get(&app, "/v1/customers/ghost/usage", "read_key_a").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("customer_not_found"))
    );
    let (status, body) = get(&app, "/v1/subscriptions/ghost/usage", "read_key_a").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("subscription_not_found"))
    );
    let (status, _) = get(&app, "/v1/customers/c1/usage", "ingest_key_a").await;
    assert_eq!(status, 403);
    // cust_key_a is bound to c1: lonely's data is "not found" to it.
    assert_eq!(
        get(&app, "/v1/customers/lonely/billing_state", "cust_key_a")
            .await
            .0,
        404
    );
    assert_eq!(
        get(&app, "/v1/customers/c1/usage", "cust_key_a").await.0,
        200
    );
    let (_, state) = get(&app, "/v1/customers/lonely/billing_state", "read_key_a").await;
    assert_eq!(state["has_active_subscription"], false);
    app.shutdown().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn trials_carry_no_flat_fee_and_a_canceled_subscription_has_no_current_period() {
    let app = spawn_app("billing_trial_cancel").await;
    scenario(&app).await;
    post(&app, "/v1/plans", json!({"code": "trial", "name": "Trial", "currency": "EUR", "interval": "month", "trial_days": 14,
        "prices": [{"code": "base", "type": "flat", "amount": "20.00", "timing": "advance", "prorate": false},
                   {"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.10"}]})).await;
    post(
        &app,
        "/v1/customers",
        json!({"external_id": "c2", "timezone": "Asia/Tokyo"}),
    )
    .await;
    let start = (Utc::now() - TimeDelta::days(2)).with_nanosecond_zero();
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_t", "customer": "c2", "plan": "trial", "start_date": start.to_rfc3339()})).await;
    let now = Utc::now().timestamp_millis();
    let calls: Vec<Value> = (0..3).map(|i| json!({"id": format!("t-{i}"), "customer": "c2", "type": "api_call", "timestamp": now - 1000})).collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(calls)).await.0, 202);

    let (_, sub) = get(&app, "/v1/subscriptions/sub_t", "read_key_a").await;
    assert_eq!(sub["status"], "trialing");
    assert_eq!(sub["current_period"]["trial"], true);
    let (_, usage) = get(&app, "/v1/subscriptions/sub_t/usage", "read_key_a").await;
    assert_eq!(usage["flat_fees"], json!([]), "no flat fee in a trial");
    assert_eq!(
        dec(&usage["charges"][0]["amount"]),
        d("0.30"),
        "usage in a trial is rated"
    );
    assert_eq!(usage["total"], "0.30");

    let (status, canceled) =
        post_status(&app, "/v1/subscriptions/sub_1/cancel", json!({"at": "now"})).await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (200, Some("canceled"))
    );
    let (status, body) = get(&app, "/v1/subscriptions/sub_1/usage", "read_key_a").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("no_active_subscription"))
    );
    let from = (Utc::now() - TimeDelta::days(20)).timestamp();
    let (status, past) = get(
        &app,
        &format!(
            "/v1/subscriptions/sub_1/usage?from={from}&to={}",
            Utc::now().timestamp() + 60
        ),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{past}");
    let fee = dec(&past["flat_fees"][0]["amount"]);
    assert!(
        fee > d("0") && fee < d("49.00"),
        "the last period's fee is prorated to the cancellation: {fee}"
    );
    let (_, state) = get(&app, "/v1/customers/c1/billing_state", "read_key_a").await;
    assert_eq!(state["has_active_subscription"], false);
    app.shutdown().await;
}

async fn post_status(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    app.post_raw(path, "admin_key_a", "application/json", body.to_string())
        .await
}

/// Daily calendar periods in Paris across both DST changes, found from the clock (the latest
/// end of summer time, a 25-hour day, and the latest start, a 23-hour day, before today; the
/// tenant allows backfill since they may be months old). An event at 23:30 local time belongs
/// to its day's period and one at 00:30 to the next, whatever UTC says; the repeated hour of
/// the autumn change counts twice.
///
/// `scripts/test` runs this suite a second time under libfaketime with the clock a year and
/// some days ahead (`FAKETIME=+400d`), which is the check that would have caught dates written
/// into the test.
#[tokio::test]
async fn usage_across_a_dst_change_follows_the_customers_local_days() {
    let app = spawn_backfill_app("billing_dst").await;
    post(&app, "/v1/plans", json!({"code": "daily", "name": "Daily", "currency": "EUR", "interval": "day",
        "prices": [{"code": "base", "type": "flat", "amount": "24.00", "timing": "arrears", "prorate": true},
                   {"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.50"}]})).await;
    post(
        &app,
        "/v1/customers",
        json!({"external_id": "paris", "timezone": "Europe/Paris"}),
    )
    .await;
    let (autumn, autumn_midnight) = common::latest_paris_day_of(25);
    let (spring, spring_midnight) = common::latest_paris_day_of(23);
    let start = autumn_midnight.min(spring_midnight) - TimeDelta::days(3) + TimeDelta::hours(8);
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_p", "customer": "paris", "plan": "daily",
        "start_date": start.to_rfc3339(), "billing_anchor": "calendar"}),
    )
    .await;
    let hour = TimeDelta::hours(1);
    let half = TimeDelta::minutes(30);
    for (season, midnight, day_hours) in [
        ("autumn", autumn_midnight, 25),
        ("spring", spring_midnight, 23),
    ] {
        let next_midnight = midnight + hour * day_hours;
        // The day before's 23:30; 2½ and 3½ hours after midnight (in autumn 02:30 CEST and
        // 02:30 CET, the repeated hour; in spring 03:30 and 04:30 CEST, after the skipped one);
        // the day's 23:30; the next day's 00:30.
        let instants = [
            midnight - half,
            midnight + hour * 2 + half,
            midnight + hour * 3 + half,
            next_midnight - half,
            next_midnight + half,
        ];
        let events: Vec<Value> = instants
            .iter()
            .enumerate()
            .map(|(i, ts)| {
                json!({"id": format!("dst-{season}-{i}"), "customer": "paris", "type": "api_call",
                                  "timestamp": ts.to_rfc3339()})
            })
            .collect();
        let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
        assert_eq!(status, 202, "{ack}");

        let after = next_midnight + TimeDelta::days(1);
        let (status, usage) = get(
            &app,
            &format!(
                "/v1/subscriptions/sub_p/usage?from={}&to={}",
                midnight.timestamp(),
                after.timestamp()
            ),
            "read_key_a",
        )
        .await;
        assert_eq!(status, 200, "{usage}");
        let periods: Vec<(Value, Value, Value)> = usage["charges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["from"].clone(), c["to"].clone(), c["quantity"].clone()))
            .collect();
        let utc =
            |t: chrono::DateTime<Utc>| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        assert_eq!(
            periods,
            vec![
                (utc(midnight), utc(next_midnight), json!("3")),
                (utc(next_midnight), utc(after), json!("1")),
            ],
            "{season} ({autumn} / {spring}): {usage}"
        );
        // Each local day is one full period: the flat fee once each, not prorated by the 25 or
        // 23 hours.
        let fees: Vec<&Value> = usage["flat_fees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| &f["amount"])
            .collect();
        assert_eq!(fees.len(), 2, "{usage}");
        assert!(fees.iter().all(|a| dec(a) == d("24")), "{usage}");
        // 4 calls in the window at 0.50 + 2 days at 24.00.
        assert_eq!(usage["total"], "50.00", "{season}: {usage}");
    }
}

#[tokio::test]
async fn prices_grouping_one_meter_differently_are_each_exact() {
    let app = spawn_app("billing_groupings").await;
    post(
        &app,
        "/v1/meters",
        json!({"slug": "seats", "name": "Seats", "event_type": "seat",
        "aggregation": "unique_count", "value_property": "user", "group_by": ["region"]}),
    )
    .await;
    post(&app, "/v1/plans", json!({"code": "mix", "name": "Mix", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "tokens_total", "type": "usage", "meter": "tokens", "model": "per_unit", "unit_amount": "0.001"},
          {"code": "tokens_by_model", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
           "package_amount": "0.50", "rounding": "up", "group_by": ["model"]},
          {"code": "seats_by_region", "type": "usage", "meter": "seats", "model": "per_unit", "unit_amount": "2", "group_by": ["region"]},
          {"code": "seats_total", "type": "usage", "meter": "seats", "model": "per_unit", "unit_amount": "1"}]})).await;
    post(&app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start = (Utc::now() - TimeDelta::days(3)).with_nanosecond_zero();
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_mix", "customer": "c1", "plan": "mix", "start_date": start.to_rfc3339()})).await;
    ingest(&app, 0, &[("gpt-x", 1500), ("gpt-x", 1000), ("small", 300)]).await;
    let now = Utc::now().timestamp_millis();
    let seats = [
        ("u1", "eu"),
        ("u2", "eu"),
        ("u1", "us"),
        ("u3", "us"),
        ("u3", "us"),
    ];
    let body: Vec<Value> = seats
        .iter()
        .enumerate()
        .map(|(i, (user, region))| {
            json!({"id": format!("seat-{i}"), "customer": "c1", "type": "seat",
            "timestamp": now - 3_000 - i as i64, "properties": {"user": user, "region": region}})
        })
        .collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(body)).await.0, 202);

    // Tokens: 2,800 in all at 0.001; by model 3 + 1 packages at 0.50. Seats: two distinct users
    // in each region at 2 each; three distinct users in all (u1 is in both regions) at 1 each.
    let (status, usage) = get(&app, "/v1/subscriptions/sub_mix/usage", "read_key_a").await;
    assert_eq!(status, 200, "{usage}");
    let figures: Vec<(&str, Decimal, Decimal)> = usage["charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["price"].as_str().unwrap(),
                dec(&c["quantity"]),
                dec(&c["amount"]),
            )
        })
        .collect();
    assert_eq!(
        figures,
        vec![
            ("tokens_total", d("2800"), d("2.8")),
            ("tokens_by_model", d("2800"), d("2.0")),
            ("seats_by_region", d("4"), d("8")),
            ("seats_total", d("3"), d("3")),
        ]
    );
    let regions: Vec<(&str, Decimal)> = usage["charges"][2]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"]["region"].as_str().unwrap(), dec(&g["quantity"])))
        .collect();
    assert_eq!(regions, vec![("eu", d("2")), ("us", d("2"))]);
    app.shutdown().await;
}

/// Reads of `/metrics`: (usage reads answered from memory, from ClickHouse).
async fn cache_counts(app: &TestApp) -> (u64, u64) {
    let text = app.get("/metrics", None).await.text().await.unwrap();
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    (
        counter("meterhouse_usage_cache_hits_total "),
        counter("meterhouse_usage_cache_misses_total "),
    )
}

async fn calls_used(app: &TestApp) -> Decimal {
    let (status, usage) = get(app, "/v1/subscriptions/sub_1/usage", "read_key_a").await;
    assert_eq!(status, 200, "{usage}");
    dec(&usage["charges"][0]["quantity"])
}

/// Waits (at most 10 s) for the subscription's calls to read `expected` through `app`.
async fn eventually_calls(app: &TestApp, expected: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let used = calls_used(app).await;
        if used == d(expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: calls still {used}, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A usage read repeated while nothing changed is answered from memory; a write through this
/// process shows at once, and writes by another process, straight into ClickHouse, or through
/// the replay table (as `backfill` writes) show within the poll interval.
#[tokio::test]
async fn usage_is_answered_from_memory_until_the_customer_changes() {
    let app = spawn_app("billing_usage_cache").await;
    scenario(&app).await;
    post(&app, "/v1/customers", json!({"external_id": "c2"})).await;
    ingest(&app, 5, &[]).await;
    assert_eq!(calls_used(&app).await, d("5"));
    let (hits, misses) = cache_counts(&app).await;
    assert_eq!(calls_used(&app).await, d("5"));
    assert_eq!(
        cache_counts(&app).await,
        (hits + 1, misses),
        "read again from memory"
    );

    // Another customer's events leave c1's answer in place.
    let other = json!([{"id": "c2-call", "customer": "c2", "type": "api_call"}]);
    assert_eq!(app.post_events("ingest_key_a", &other).await.0, 202);
    assert_eq!(calls_used(&app).await, d("5"));
    assert_eq!(cache_counts(&app).await, (hits + 2, misses));

    // This process's own write: added to the answer in memory, so the very next read shows it
    // without ClickHouse, and so do reads after the polls that see its batch.
    let more = json!([{"id": "own-1", "customer": "c1", "type": "api_call"}]);
    assert_eq!(app.post_events("ingest_key_a", &more).await.0, 202);
    assert_eq!(calls_used(&app).await, d("6"));
    assert_eq!(
        cache_counts(&app).await,
        (hits + 3, misses),
        "own write folded"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(calls_used(&app).await, d("6"));
    assert_eq!(
        cache_counts(&app).await,
        (hits + 4, misses),
        "a poll does not drop what its own batch changed"
    );

    // Another replica of the service on the same database.
    let replica = common::spawn_with(app.config.clone(), false).await;
    let theirs = json!([{"id": "replica-1", "customer": "c1", "type": "api_call"},
                        {"id": "replica-2", "customer": "c1", "type": "api_call"}]);
    assert_eq!(replica.post_events("ingest_key_a", &theirs).await.0, 202);
    eventually_calls(&app, "8", "a replica's events").await;
    replica.shutdown().await;

    // A write that no service made: samples replayed as a backfill replays them.
    let now = Utc::now().timestamp_millis();
    app.store()
        .await
        .client()
        .query(
            "INSERT INTO events_replay (tenant, id, customer, event_type, ts_ms, ts, properties, ingested_ms, ingested_at, batch_id, \
             sample_meter, sample_value, sample_value_str, sample_group_keys, sample_group_values) \
             SELECT 'acme', concat('replayed-', toString(number)), 'c1', 'api_call', toInt64(?), toDateTime(intDiv(toInt64(?), 1000)), '{}', \
             toInt64(?), toDateTime(intDiv(toInt64(?), 1000)), 9, ['calls'], [toDecimal128(1, 12)], [''], [[]], [[]] FROM numbers(3)",
        )
        .bind(now - 2000)
        .bind(now - 2000)
        .bind(now)
        .bind(now)
        .execute()
        .await
        .unwrap();
    eventually_calls(&app, "11", "replayed samples").await;
    app.shutdown().await;
}

/// Batches written through this process are added to the usage it holds in memory: after
/// each, its answer equals that of a process holding nothing (so reading ClickHouse), for
/// every aggregation, and the batches whose samples can be added exactly were never read from
/// ClickHouse again.
#[tokio::test]
async fn own_writes_added_to_memory_match_clickhouse() {
    let app = spawn_app("billing_fold").await;
    for (slug, event_type, aggregation, property) in [
        ("peak", "job", "max", "load"),
        ("floor", "job", "min", "load"),
        ("users", "login", "unique_count", "user"),
        ("last", "login", "latest", "load"),
    ] {
        post(
            &app,
            "/v1/meters",
            json!({"slug": slug, "name": slug, "event_type": event_type,
            "aggregation": aggregation, "value_property": property}),
        )
        .await;
    }
    let prices: Vec<Value> = ["calls", "tokens", "peak", "floor", "users", "last"]
        .iter()
        .map(|m| {
            let mut price = json!({"code": m, "type": "usage", "meter": m, "model": "per_unit", "unit_amount": "0.01"});
            if *m == "tokens" {
                price["group_by"] = json!(["model"]);
            }
            price
        })
        .collect();
    post(
        &app,
        "/v1/plans",
        json!({"code": "all", "name": "All", "currency": "USD",
        "interval": "month", "prices": prices}),
    )
    .await;
    post(&app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start = (Utc::now() - TimeDelta::days(3)).with_nanosecond_zero();
    post(
        &app,
        "/v1/subscriptions",
        json!({"external_id": "sub_1", "customer": "c1", "plan": "all",
        "start_date": start.to_rfc3339()}),
    )
    .await;
    let mut plain = app.config.clone();
    plain.usage_cache_customers = 0;
    let plain = common::spawn_with(plain, false).await;
    let charges = |app: &TestApp| {
        let http = app.http.clone();
        let url = format!("{}/v1/subscriptions/sub_1/usage", app.base);
        async move {
            let usage: Value = http
                .get(url)
                .bearer_auth("read_key_a")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            usage["charges"].clone()
        }
    };
    assert_eq!(charges(&app).await, charges(&plain).await);

    let now = Utc::now().timestamp_millis();
    for round in 0..6_i64 {
        // Even rounds: counts, sums (a new group in round 4), minima and maxima, which are
        // added in memory. Odd rounds: distinct counts and latest values, which a second
        // sample of a group cannot update without ClickHouse's state.
        let ts = |i: i64| now - 60_000 * (round * 10 + i) - 3_600_000 * i;
        let body: Vec<Value> = if round % 2 == 0 {
            let model = if round == 4 {
                "tiny"
            } else {
                ["gpt-x", "small"][(round / 2) as usize % 2]
            };
            (0..5)
                .flat_map(|i| {
                    [
                        json!({"id": format!("call-{round}-{i}"), "customer": "c1", "type": "api_call", "timestamp": ts(i)}),
                        json!({"id": format!("tok-{round}-{i}"), "customer": "c1", "type": "llm_call", "timestamp": ts(i),
                               "properties": {"tokens": 100 * round + i, "model": model}}),
                        json!({"id": format!("job-{round}-{i}"), "customer": "c1", "type": "job", "timestamp": ts(i),
                               "properties": {"load": format!("{}.{}", 10 - round + i * 3, i)}}),
                    ]
                })
                .collect()
        } else {
            (0..3)
                .map(|i| json!({"id": format!("login-{round}-{i}"), "customer": "c1", "type": "login", "timestamp": ts(i),
                                "properties": {"user": format!("u{}", (round + i) % 4), "load": round * 10 + i}}))
                .collect()
        };
        let (status, ack) = app.post_events("ingest_key_a", &json!(body)).await;
        assert_eq!(status, 202, "{ack}");
        // Past a few polls of the changes table, which lists this batch too.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let (hits, misses) = cache_counts(&app).await;
        let ours = charges(&app).await;
        let expected = charges(&plain).await;
        assert_eq!(ours, expected, "round {round}");
        let counted = if round % 2 == 0 {
            (hits + 1, misses)
        } else {
            (hits, misses + 1)
        };
        assert_eq!(cache_counts(&app).await, counted, "round {round}");
    }
    plain.shutdown().await;
    app.shutdown().await;
}

/// Reads of `/metrics`: current-period answers loaded into memory in bulk.
async fn loaded_count(app: &TestApp) -> u64 {
    let text = app.get("/metrics", None).await.text().await.unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("meterhouse_usage_cache_loaded_total ")?
                .parse()
                .ok()
        })
        .expect("meterhouse_usage_cache_loaded_total missing from /metrics")
}

/// Waits (at most 10 s) until `app` has loaded `n` answers in bulk.
async fn eventually_loaded(app: &TestApp, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while loaded_count(app).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "loaded {} answers, expected {n}",
            loaded_count(app).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A process loads the current period of every subscription into memory in bulk, before
/// anyone reads it: after a restart, the first read of each subscription (usage, billing
/// state) is answered from memory and equals what ClickHouse answers, with usage or without.
/// A subscription created while it runs is loaded by its next round; one without a current
/// period is not loaded.
#[tokio::test]
async fn current_periods_are_in_memory_before_their_first_read() {
    let app = spawn_app("billing_preload").await;
    scenario(&app).await;
    ingest(&app, 7, &[("gpt-x", 1500), ("small", 10)]).await;
    for customer in ["c2", "c3", "c4"] {
        post(&app, "/v1/customers", json!({"external_id": customer})).await;
    }
    let start = |days: i64| (Utc::now() + TimeDelta::days(days)).with_nanosecond_zero();
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_2", "customer": "c2", "plan": "pro", "start_date": start(-2).to_rfc3339()})).await;
    // c2 has two subscriptions, with two windows: read by two statements.
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_2b", "customer": "c2", "plan": "pro", "start_date": start(-5).to_rfc3339()})).await;
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_3", "customer": "c3", "plan": "pro", "start_date": start(2).to_rfc3339()})).await;
    // Three calls three days ago (inside sub_2b's window only), two a day ago (inside both).
    let day = |n: i64| Utc::now().timestamp_millis() - n * 86_400_000;
    let body: Vec<Value> = [day(3), day(3), day(3), day(1), day(1)]
        .iter()
        .enumerate()
        .map(|(i, ts)| json!({"id": format!("c2-{i}"), "customer": "c2", "type": "api_call", "timestamp": ts + i as i64}))
        .collect();
    assert_eq!(app.post_events("ingest_key_a", &json!(body)).await.0, 202);
    let ingested = std::time::Instant::now();
    let config = app.config.clone();
    app.shutdown().await;
    // Each poll of changes looks back 10 s (`readmodel::changes`): until these events are
    // older than that, every poll drops c1's and c2's answers again, and a read between a poll
    // and the next bulk load is not answered from memory.
    tokio::time::sleep(std::time::Duration::from_secs(11).saturating_sub(ingested.elapsed())).await;

    let mut plain = config.clone();
    plain.usage_cache_customers = 0;
    let plain = common::spawn_with(plain, false).await;
    let mut loading = config;
    loading.usage_preload_every_s = 1;
    let app = common::spawn_with(loading, false).await;
    eventually_loaded(&app, 3).await;
    let (hits, misses) = cache_counts(&app).await;
    let read = |app: &TestApp, path: String| {
        let (http, url) = (app.http.clone(), format!("{}{path}", app.base));
        async move {
            let response = http
                .get(url)
                .bearer_auth("read_key_a")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    for (sub, calls) in [("sub_1", "7"), ("sub_2", "2"), ("sub_2b", "5")] {
        let path = format!("/v1/subscriptions/{sub}/usage");
        let ours = read(&app, path.clone()).await;
        let expected = read(&plain, path).await;
        assert_eq!(ours["charges"], expected["charges"], "{sub}");
        assert_eq!(ours["charges"][0]["quantity"], calls, "{sub}");
    }
    for customer in ["c1", "c2"] {
        let path = format!("/v1/customers/{customer}/billing_state");
        let state = read(&app, path.clone()).await;
        assert_eq!(
            state["usage"],
            read(&plain, path).await["usage"],
            "{customer}"
        );
    }
    assert_eq!(
        cache_counts(&app).await,
        (hits + 6, misses),
        "first reads answered from memory"
    );
    assert_eq!(loaded_count(&app).await, 3, "sub_3 has no current period");

    // Created while the process runs, with usage from before: loaded by the next round.
    let body = json!([{"id": "c4-call", "customer": "c4", "type": "api_call"}]);
    assert_eq!(app.post_events("ingest_key_a", &body).await.0, 202);
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_4", "customer": "c4", "plan": "pro", "start_date": start(-1).to_rfc3339()})).await;
    eventually_loaded(&app, 4).await;
    let (hits, misses) = cache_counts(&app).await;
    let path = "/v1/subscriptions/sub_4/usage".to_owned();
    let ours = read(&app, path.clone()).await;
    assert_eq!(ours["charges"], read(&plain, path).await["charges"]);
    assert_eq!(ours["charges"][0]["quantity"], "1");
    assert_eq!(cache_counts(&app).await, (hits + 1, misses));
    plain.shutdown().await;
    app.shutdown().await;
}

/// The `percentage` model (a payment volume): rate% of the sum past the included units, plus a
/// fixed amount per event past the free ones, per group; only on a sum meter, with its terms
/// checked field by field.
#[tokio::test]
async fn a_percentage_price_takes_its_share_and_a_fee_per_event_past_the_free_ones() {
    let app = spawn_app("billing_percentage").await;
    let refused = [
        (
            json!({"code": "p", "type": "usage", "meter": "calls", "model": "percentage", "rate": "2.5"}),
            "prices[0].model",
        ),
        (
            json!({"code": "p", "type": "usage", "meter": "tokens", "model": "percentage"}),
            "prices[0].rate",
        ),
        (
            json!({"code": "p", "type": "usage", "meter": "tokens", "model": "percentage", "rate": "-1"}),
            "prices[0].rate",
        ),
        (
            json!({"code": "p", "type": "usage", "meter": "tokens", "model": "per_unit", "unit_amount": "1", "free_events": 3}),
            "prices[0].free_events",
        ),
    ];
    for (price, field) in refused {
        let plan = json!({"code": "bad", "name": "Bad", "currency": "USD", "interval": "month", "prices": [price]});
        let (status, body) = post_status(&app, "/v1/plans", plan).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    post(&app, "/v1/plans", json!({"code": "pay", "name": "Pay", "currency": "USD", "interval": "month",
        "prices": [
          {"code": "volume", "type": "usage", "meter": "tokens", "model": "percentage", "rate": "2.5",
           "fixed_amount": "0.10", "free_events": 2, "included_units": "100"},
          {"code": "by_model", "type": "usage", "meter": "tokens", "model": "percentage", "rate": "1",
           "fixed_amount": "0.25", "free_events": 2, "group_by": ["model"]}]})).await;
    post(&app, "/v1/customers", json!({"external_id": "c1"})).await;
    let start = (Utc::now() - TimeDelta::days(3)).with_nanosecond_zero();
    post(&app, "/v1/subscriptions", json!({"external_id": "sub_p", "customer": "c1", "plan": "pay", "start_date": start.to_rfc3339()})).await;
    ingest(
        &app,
        0,
        &[("a", 100), ("a", 200), ("a", 300), ("b", 400), ("b", 500)],
    )
    .await;

    let (status, report) = get(&app, "/v1/subscriptions/sub_p/usage", "read_key_a").await;
    assert_eq!(status, 200, "{report}");
    let charges = report["charges"].as_array().unwrap();
    // 2.5% of (1,500 − 100) = 35.00, and 3 events past the 2 free at 0.10: 35.30.
    assert_eq!(charges[0]["price"], "volume");
    assert_eq!(dec(&charges[0]["amount"]), d("35.30"), "{report}");
    assert_eq!(charges[0]["events_count"], 5);
    // Per model: a: 1% of 600 + 1 event × 0.25 = 6.25; b: 1% of 900, 2 events free = 9.
    assert_eq!(dec(&charges[1]["amount"]), d("15.25"), "{report}");
    let groups = common::by_model(&charges[1], "amount");
    assert_eq!(
        groups,
        [("a".to_owned(), d("6.25")), ("b".to_owned(), d("9"))]
    );
    assert_eq!(dec(&report["subtotal"]), d("50.55"));
    app.shutdown().await;
}
