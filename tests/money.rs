//! What a subscription owes when its period is not one plain period: plan changes inside it
//! (upgrade and downgrade, flat fees in advance and in arrears, prorated and not), a
//! cancellation inside it, partial first and last calendar periods in a zone with a DST change
//! inside them, and anniversaries on the 29th, 30th and 31st. Every expected amount is computed
//! here from the plan's terms, and every current figure (usage, subscription, customer usage,
//! billing state, the Lago and Flexprice shapes) must equal the explicit-window figure of the
//! same period.
//!
//! Dates come from the clock (the tenant allows backfill, so periods months old may be read);
//! `scripts/test` runs this suite again with the clock 400 days ahead.

mod common;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use common::{TestApp, d, dec, get_json, post_ok, spawn_backfill_app};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

/// `amount` × `active` / `full`, in milliseconds, multiplied first as the service does.
fn prorated(amount: &str, active: TimeDelta, full: TimeDelta) -> Decimal {
    d(amount) * Decimal::from(active.num_milliseconds()) / Decimal::from(full.num_milliseconds())
}

fn cents(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven)
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not an instant: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Now, to the second, less `days`.
fn days_ago(days: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap() - TimeDelta::days(days)
}

/// A monthly plan: one flat fee and one per-unit price on `calls`.
async fn plan(app: &TestApp, code: &str, flat: &str, timing: &str, prorate: bool, unit: &str) {
    post_ok(app, "/v1/plans", json!({"code": code, "name": code, "currency": "USD", "interval": "month",
        "prices": [{"code": "base", "type": "flat", "amount": flat, "timing": timing, "prorate": prorate},
                   {"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": unit}]}))
        .await;
}

async fn subscribe(
    app: &TestApp,
    customer: &str,
    timezone: &str,
    subscription: &str,
    plan: &str,
    start: DateTime<Utc>,
    anchor: &str,
) {
    post_ok(
        app,
        "/v1/customers",
        json!({"external_id": customer, "timezone": timezone}),
    )
    .await;
    post_ok(
        app,
        "/v1/subscriptions",
        json!({"external_id": subscription, "customer": customer, "plan": plan,
        "start_date": start.to_rfc3339(), "billing_anchor": anchor}),
    )
    .await;
}

/// `n` calls of `customer` at `at`.
async fn calls(app: &TestApp, customer: &str, prefix: &str, n: usize, at: DateTime<Utc>) {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}-{i}"), "customer": customer, "type": "api_call",
                        "timestamp": at.timestamp_millis()})
        })
        .collect();
    let (status, ack) = app.post_events("ingest_key_a", &json!(events)).await;
    assert_eq!(status, 202, "{ack}");
}

async fn usage(app: &TestApp, subscription: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let path = format!(
        "/v1/subscriptions/{subscription}/usage?from={}&to={}",
        from.timestamp_millis(),
        to.timestamp_millis()
    );
    let (status, body) = get_json(app, &path, "read_key_a").await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The current period's figures, checked to agree everywhere they appear: the subscription's
/// usage and summary, the customer's usage and billing state, the Lago and Flexprice shapes,
/// and the explicit window of the same period. Returns the usage report.
async fn current(app: &TestApp, customer: &str, subscription: &str) -> Value {
    let (status, report) = get_json(
        app,
        &format!("/v1/subscriptions/{subscription}/usage"),
        "read_key_a",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let (from, to) = (instant(&report["from"]), instant(&report["to"]));

    let (_, summary) = get_json(
        app,
        &format!("/v1/subscriptions/{subscription}"),
        "read_key_a",
    )
    .await;
    assert_eq!(
        (
            instant(&summary["current_period"]["from"]),
            instant(&summary["current_period"]["to"])
        ),
        (from, to),
        "{summary}"
    );
    assert_eq!(
        summary["estimated_next_invoice_amount"], report["total"],
        "{summary}"
    );
    assert_eq!(instant(&summary["next_invoice_date"]), to, "{summary}");
    assert!(
        summary.get("current_plan").is_none(),
        "one plan field: {summary}"
    );

    let explicit = usage(app, subscription, from, to).await;
    for field in ["subtotal", "total", "usage_amount", "plan"] {
        assert_eq!(
            explicit[field], report[field],
            "{field}: {explicit} vs {report}"
        );
    }
    assert_eq!(explicit["flat_fees"], report["flat_fees"]);

    let (_, by_customer) = get_json(
        app,
        &format!("/v1/customers/{customer}/usage?subscription={subscription}"),
        "read_key_a",
    )
    .await;
    assert_eq!(by_customer["total"], report["total"], "{by_customer}");

    let (_, state) = get_json(
        app,
        &format!("/v1/customers/{customer}/billing_state"),
        "read_key_a",
    )
    .await;
    let used: Decimal = state["usage"]
        .as_array()
        .unwrap_or_else(|| panic!("{state}"))
        .iter()
        .map(|line| dec(&line["used_units"]))
        .sum();
    let reported: Decimal = report["charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| dec(&c["quantity"]))
        .sum();
    assert_eq!(used, reported, "every phase's usage: {state}");
    for line in state["usage"].as_array().unwrap() {
        assert!(dec(&line["remaining_units"]) >= Decimal::ZERO, "{line}");
    }

    let usage_cents = cents(dec(&report["usage_amount"])) * Decimal::ONE_HUNDRED;
    let (_, lago) = get_json(
        app,
        &format!("/lago/api/v1/customers/{customer}/current_usage?external_subscription_id={subscription}"),
        "read_key_a",
    )
    .await;
    let lago = &lago["customer_usage"];
    assert_eq!(
        (
            instant(&lago["from_datetime"]),
            instant(&lago["to_datetime"])
        ),
        (from, to),
        "{lago}"
    );
    assert_eq!(
        Decimal::from(lago["amount_cents"].as_i64().unwrap()),
        usage_cents,
        "{lago}"
    );

    let (status, flexprice) = app
        .post_raw(
            "/flexprice/v1/subscriptions/usage",
            "read_key_a",
            "application/json",
            json!({"subscription_id": subscription}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{flexprice}");
    assert_eq!(instant(&flexprice["start_time"]), from, "{flexprice}");
    assert_eq!(
        Decimal::try_from(flexprice["amount"].as_f64().unwrap()).unwrap() * Decimal::ONE_HUNDRED,
        usage_cents,
        "{flexprice}"
    );
    report
}

/// The subtotal is the expected amount to the last digit a 28-digit decimal keeps, and the
/// total is it rounded to cents.
fn assert_amount(report: &Value, expected: Decimal) {
    let subtotal = dec(&report["subtotal"]);
    assert!(
        (subtotal - expected).abs() < d("0.000000000000000001"),
        "subtotal {subtotal}, expected {expected}: {report}"
    );
    assert_eq!(dec(&report["total"]), cents(expected), "{report}");
}

async fn change_plan(app: &TestApp, subscription: &str, plan: &str, at: &str) -> DateTime<Utc> {
    let changed = post_ok(
        app,
        &format!("/v1/subscriptions/{subscription}/change_plan"),
        json!({"plan": plan, "at": at}),
    )
    .await;
    instant(&changed["phases"].as_array().unwrap().last().unwrap()["from"])
}

/// After `change`, by at least a millisecond.
fn after(change: DateTime<Utc>) -> DateTime<Utc> {
    Utc::now().max(change + TimeDelta::milliseconds(1))
}

#[tokio::test]
async fn an_immediate_upgrade_keeps_the_period_and_every_figure_holds_both_plans() {
    let app = spawn_backfill_app("money_upgrade").await;
    plan(&app, "a", "30.00", "advance", true, "0.10").await;
    plan(&app, "b", "60.00", "advance", true, "0.05").await;
    let start = days_ago(10);
    subscribe(&app, "c1", "UTC", "s_pc", "a", start, "anniversary").await;
    calls(&app, "c1", "on-a", 7, Utc::now() - TimeDelta::hours(1)).await;
    let change = change_plan(&app, "s_pc", "b", "now").await;
    calls(&app, "c1", "on-b", 4, after(change)).await;

    let report = current(&app, "c1", "s_pc").await;
    let end = start.checked_add_months(Months::new(1)).unwrap();
    assert_eq!(
        (instant(&report["from"]), instant(&report["to"])),
        (start, end)
    );
    let full = end - start;
    let expected = prorated("30.00", change - start, full)
        + d("0.70")
        + prorated("60.00", end - change, full)
        + d("0.20");
    assert_amount(&report, expected);
    assert_eq!(report["plan"], "b");
    let (_, summary) = get_json(&app, "/v1/subscriptions/s_pc", "read_key_a").await;
    assert_eq!(summary["plan"], "b", "the plan in force now: {summary}");
    assert_eq!(summary["phases"][0]["plan"], "a");
    let plans: Vec<(&str, &str)> = summary["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["plan"].as_str().unwrap(),
                l["used_units"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(plans, [("a", "7"), ("b", "4")], "{summary}");
    // The shapes that show one figure per meter count both phases' usage of it.
    let (_, diga) = get_json(&app, "/diga/v1/billing/subscription/", "cust_key_a").await;
    assert_eq!(
        (diga["name"].as_str(), diga["minutes_count"].as_i64()),
        (Some("b"), Some(11)),
        "{diga}"
    );
    let (_, flowglad) = get_json(&app, "/flowglad/api/v1/customers/c1/billing", "read_key_a").await;
    let balances = &flowglad["currentSubscription"]["experimental"]["usageMeterBalances"];
    let balances: Vec<(&str, i64)> = balances
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["slug"].as_str().unwrap(),
                b["availableBalance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(balances, [("calls", -11)], "one balance per meter");
    app.shutdown().await;
}

#[tokio::test]
async fn an_immediate_downgrade_in_arrears_without_proration_charges_each_fee_once() {
    let app = spawn_backfill_app("money_downgrade").await;
    plan(&app, "big", "60.00", "arrears", false, "0.05").await;
    plan(&app, "small", "30.00", "arrears", false, "0.10").await;
    let start = days_ago(20);
    subscribe(&app, "u2", "UTC", "s_down", "big", start, "anniversary").await;
    calls(&app, "u2", "on-big", 5, Utc::now() - TimeDelta::hours(1)).await;
    let change = change_plan(&app, "s_down", "small", "now").await;
    calls(&app, "u2", "on-small", 3, after(change)).await;

    let report = current(&app, "u2", "s_down").await;
    assert_eq!(instant(&report["from"]), start);
    // Without proration each plan's fee is charged in full for its part of the period.
    assert_amount(&report, d("60.00") + d("0.25") + d("30.00") + d("0.30"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_change_at_the_period_end_leaves_the_current_period_on_the_old_plan() {
    let app = spawn_backfill_app("money_period_end").await;
    plan(&app, "a", "30.00", "advance", true, "0.10").await;
    plan(&app, "b", "60.00", "advance", true, "0.05").await;
    let start = days_ago(10);
    subscribe(&app, "u3", "UTC", "s_pe", "a", start, "anniversary").await;
    calls(&app, "u3", "on-a", 2, Utc::now() - TimeDelta::hours(1)).await;
    let end = start.checked_add_months(Months::new(1)).unwrap();
    assert_eq!(change_plan(&app, "s_pe", "b", "period_end").await, end);

    let report = current(&app, "u3", "s_pe").await;
    assert_eq!(instant(&report["to"]), end);
    assert_eq!(report["plan"], "a");
    assert_amount(&report, d("30.00") + d("0.20"));
    let next = usage(
        &app,
        "s_pe",
        end,
        end.checked_add_months(Months::new(1)).unwrap(),
    )
    .await;
    assert_eq!(next["plan"], "b");
    assert_amount(&next, d("60.00"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_cancellation_inside_the_period_prorates_its_last_part() {
    let app = spawn_backfill_app("money_cancel").await;
    plan(&app, "a", "30.00", "advance", true, "0.10").await;
    let start = days_ago(10);
    subscribe(&app, "u4", "UTC", "s_cx", "a", start, "anniversary").await;
    calls(&app, "u4", "on-a", 3, Utc::now() - TimeDelta::hours(1)).await;
    let cancel_at = days_ago(-5);
    post_ok(
        &app,
        "/v1/subscriptions/s_cx/cancel",
        json!({"at": cancel_at.to_rfc3339()}),
    )
    .await;

    let report = current(&app, "u4", "s_cx").await;
    assert_eq!(
        (instant(&report["from"]), instant(&report["to"])),
        (start, cancel_at)
    );
    let end = start.checked_add_months(Months::new(1)).unwrap();
    assert_amount(
        &report,
        prorated("30.00", cancel_at - start, end - start) + d("0.30"),
    );
    app.shutdown().await;
}

/// Local midnight of `date` in New York, in UTC.
fn new_york_midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(0, 0, 0)
        .and_then(|t| {
            t.and_local_timezone(chrono_tz::America::New_York)
                .earliest()
        })
        .unwrap()
        .with_timezone(&Utc)
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap()
}

#[tokio::test]
async fn partial_first_and_last_calendar_periods_prorate_over_their_months_dst_included() {
    let app = spawn_backfill_app("money_calendar").await;
    plan(&app, "cal", "49.00", "advance", true, "0.10").await;

    // The case, as reported: started 2026-10-10 00:00 in New York; October's share is
    // 22 of its 31 days, 49.00 × 22/31 = 34.77.
    subscribe(
        &app,
        "nyc_oct",
        "America/New_York",
        "s_oct",
        "cal",
        new_york_midnight(date(2026, 10, 10)),
        "calendar",
    )
    .await;
    let october = usage(
        &app,
        "s_oct",
        new_york_midnight(date(2026, 10, 10)),
        new_york_midnight(date(2026, 11, 1)),
    )
    .await;
    assert_eq!(october["total"], "34.77", "{october}");

    // The latest year whose November 20th (New York) is past: started March 2nd, before that
    // spring's DST change (second Sunday of March), canceled November 20th, after that
    // autumn's (first Sunday of November).
    let now = Utc::now();
    let year = (now.year() - 1..=now.year())
        .rev()
        .find(|&y| new_york_midnight(date(y, 11, 20)) < now)
        .unwrap();
    let midnight = |month, day| new_york_midnight(date(year, month, day));
    subscribe(
        &app,
        "nyc",
        "America/New_York",
        "s_ny",
        "cal",
        midnight(3, 2),
        "calendar",
    )
    .await;
    calls(&app, "nyc", "march", 2, midnight(3, 20)).await;
    calls(&app, "nyc", "november", 1, midnight(11, 10)).await;
    post_ok(
        &app,
        "/v1/subscriptions/s_ny/cancel",
        json!({"at": midnight(11, 20).to_rfc3339()}),
    )
    .await;

    let first = usage(&app, "s_ny", midnight(3, 2), midnight(4, 1)).await;
    let first_fee = prorated(
        "49.00",
        midnight(4, 1) - midnight(3, 2),
        midnight(4, 1) - midnight(3, 1),
    );
    assert_eq!(dec(&first["flat_fees"][0]["amount"]), first_fee, "{first}");
    assert_amount(&first, first_fee + d("0.20"));

    let last = usage(&app, "s_ny", midnight(11, 1), midnight(11, 20)).await;
    let last_fee = prorated(
        "49.00",
        midnight(11, 20) - midnight(11, 1),
        midnight(12, 1) - midnight(11, 1),
    );
    assert_eq!(dec(&last["flat_fees"][0]["amount"]), last_fee, "{last}");
    assert_amount(&last, last_fee + d("0.10"));

    // The whole life: both partial months and seven whole ones, April to October.
    let life = usage(&app, "s_ny", midnight(3, 2), midnight(11, 20)).await;
    assert_eq!(life["flat_fees"].as_array().unwrap().len(), 9, "{life}");
    assert_amount(
        &life,
        first_fee + last_fee + d("49.00") * d("7") + d("0.30"),
    );
    app.shutdown().await;
}

#[tokio::test]
async fn anniversaries_on_the_29th_30th_and_31st_follow_month_ends() {
    let app = spawn_backfill_app("money_month_ends").await;
    plan(&app, "a", "30.00", "advance", true, "0.10").await;
    let now = Utc::now();
    // The latest year whose April 30th is past.
    let year = (now.year() - 1..=now.year())
        .rev()
        .find(|&y| date(y, 5, 1).and_hms_opt(0, 0, 0).unwrap().and_utc() < now)
        .unwrap();
    let at = |month, day| {
        date(year, month, day)
            .and_hms_opt(9, 0, 0)
            .unwrap()
            .and_utc()
    };
    let february_end = if date(year, 3, 1).pred_opt().unwrap().day() == 29 {
        29
    } else {
        28
    };
    for day in [29, 30, 31] {
        let (customer, subscription) = (format!("m{day}"), format!("s_m{day}"));
        let start = at(1, day);
        subscribe(
            &app,
            &customer,
            "UTC",
            &subscription,
            "a",
            start,
            "anniversary",
        )
        .await;
        let feb = at(2, february_end.min(day));
        // One call a second before the February boundary, one on it.
        let (before, on) = (format!("before-{day}"), format!("on-{day}"));
        calls(&app, &customer, &before, 1, feb - TimeDelta::seconds(1)).await;
        calls(&app, &customer, &on, 1, feb).await;
        let (mar, apr) = (at(3, day), at(4, day.min(30)));
        let report = usage(&app, &subscription, start, apr).await;
        let periods: Vec<(DateTime<Utc>, DateTime<Utc>, String)> = report["charges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    instant(&c["from"]),
                    instant(&c["to"]),
                    c["quantity"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = vec![
            (start, feb, "1".to_owned()),
            (feb, mar, "1".to_owned()),
            (mar, apr, "0".to_owned()),
        ];
        assert_eq!(periods, expected, "started on the {day}th: {report}");
        // Whole periods: each fee in full, however long the month.
        assert_amount(&report, d("90.00") + d("0.20"));
    }
    app.shutdown().await;
}

/// A plan's minimum commitment: a period billed below it gets the difference as a
/// `commitment_true_up`, counted in the subtotal and in every figure of the period; a period
/// billed above it gets none; across a plan change inside the period, each plan's commitment is
/// prorated over its part, like a flat fee, and compared with that part's charges.
#[tokio::test]
async fn a_minimum_commitment_tops_up_a_short_period_prorated_across_a_plan_change() {
    let app = spawn_backfill_app("money_commitment").await;
    for (code, commitment) in [("small", "500.00"), ("large", "900.00")] {
        post_ok(&app, "/v1/plans", json!({"code": code, "name": code, "currency": "USD", "interval": "month",
            "minimum_commitment": {"amount": commitment},
            "prices": [{"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
                       {"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.10"}]}))
            .await;
    }
    let start = days_ago(10);
    subscribe(&app, "c1", "UTC", "s_short", "small", start, "anniversary").await;
    subscribe(&app, "c2", "UTC", "s_over", "small", start, "anniversary").await;
    calls(&app, "c1", "short", 7, Utc::now() - TimeDelta::hours(1)).await;
    calls(&app, "c2", "over", 5_000, Utc::now() - TimeDelta::hours(1)).await;

    // 49.00 + 0.70 billed: 450.30 added, 500.00 in all.
    let report = current(&app, "c1", "s_short").await;
    let true_up = &report["commitment_true_up"];
    assert_eq!(dec(&true_up["amount"]), d("450.30"), "{report}");
    assert_eq!(dec(&true_up["billed"]), d("49.70"), "{report}");
    assert_eq!(dec(&true_up["minimum_commitment"]), d("500"), "{report}");
    assert_eq!(
        dec(&report["usage_amount"]),
        d("0.70"),
        "apart from the charges"
    );
    assert_amount(&report, d("500.00"));
    // 49.00 + 500.00 billed: above the commitment, nothing added.
    let report = current(&app, "c2", "s_over").await;
    assert!(report["commitment_true_up"].is_null(), "{report}");
    assert_amount(&report, d("549.00"));

    // Onto the larger commitment inside the period: each plan's part of the period carries its
    // share of its commitment and of the flat fee, and is topped up on its own.
    let change = change_plan(&app, "s_short", "large", "now").await;
    calls(&app, "c1", "short-after", 3, after(change)).await;
    let report = current(&app, "c1", "s_short").await;
    let end = start.checked_add_months(Months::new(1)).unwrap();
    let full = end - start;
    let (before, after_change) = (change - start, end - change);
    let billed_small = prorated("49.00", before, full) + d("0.70");
    let billed_large = prorated("49.00", after_change, full) + d("0.30");
    let committed = prorated("500.00", before, full) + prorated("900.00", after_change, full);
    let added = prorated("500.00", before, full) - billed_small
        + prorated("900.00", after_change, full)
        - billed_large;
    let true_up = &report["commitment_true_up"];
    assert!(
        (dec(&true_up["minimum_commitment"]) - committed).abs() < d("0.000000000001"),
        "{report}"
    );
    assert!(
        (dec(&true_up["amount"]) - added).abs() < d("0.000000000001"),
        "{report}"
    );
    assert_amount(&report, committed);
    app.shutdown().await;
}
