//! The migrations and every statement of `store` (its fixed queries, the usage reads, the
//! series, the overview's week, the reads as of a moment, a dynamic price's samples, a weighted meter's samples) on current ClickHouse (chDB, in-process),
//! beside the 18.16 server the other suites use. `scripts/test` installs chDB into
//! `target/chdb-venv`; `METERHOUSE_CHDB_PYTHON` may name another interpreter that has it.

use std::path::PathBuf;
use std::process::Command;

use meterhouse::domain::Aggregation;
use meterhouse::readmodel::window::{split, windows_of};
use meterhouse::store::as_of_sql::{
    LateWindow, as_of_statement, late_events_of_meter, late_events_statement, late_hours_statement,
};
use meterhouse::store::combined_sql::{combined_statement, customers_statement};
use meterhouse::store::dashboard::{WeekMeter, week_volumes_statement};
use meterhouse::store::priced_sql::{PricedScope, priced_samples_statement};
use meterhouse::store::series_sql::{SeriesQuery, WindowSize, series_statement};
use meterhouse::store::to_date_sql::{self, ToDate};
use meterhouse::store::usage_sql::{Part, Scope, usage_statement};
use meterhouse::store::weighted_grain;
use meterhouse::store::weighted_sql::{WeightedScope, weighted_statement};
use meterhouse::store::{migrate, queries};
use serde_json::json;

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("METERHOUSE_CHDB_PYTHON") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chdb-venv/bin/python");
    assert!(
        venv.exists(),
        "chDB is not installed: run scripts/test (it creates {})",
        venv.display()
    );
    venv
}

#[test]
fn migrations_and_queries_run_on_current_clickhouse() {
    let mut statements = vec![queries::CREATE_MIGRATIONS_LEDGER.to_owned()];
    for (_, _, sql) in migrate::MIGRATIONS {
        statements.extend(migrate::statements(sql));
    }
    // Twice: every migration must be idempotent.
    statements.extend(statements.clone());
    statements.push(
        "INSERT INTO events (tenant, id, customer, event_type, ts_ms, ts, properties, ingested_ms, ingested_at, batch_id, \
         sample_meter, sample_value, sample_value_str, sample_group_keys, sample_group_values) VALUES \
         ('t', 'e1', 'c', 'llm', 1795000000000, 1795000000, '{}', 1795000000500, 1795000000, 42, \
          ['tokens', 'users'], [toDecimal128('1250.5', 12), toDecimal128('1', 12)], ['', 'u7'], [['model'], []], [['gpt-x'], []])"
            .into(),
    );
    statements.push("INSERT INTO schema_migrations VALUES (1, 'events', 1795000000)".into());
    statements
        .push("INSERT INTO api_keys VALUES ('ab', 't', 'read', '', 'n', 1795000000, 1)".into());
    statements.push("INSERT INTO api_key_revocations VALUES ('ab', 't', 1795000001)".into());
    statements.push("INSERT INTO alert_firings VALUES ('t', 'evt_1', 'a', 's', 1795000000000, '{}', 1795000000500)".into());
    statements.push(
        "INSERT INTO webhook_deliveries VALUES \
         ('t', 'evt_1', 'we_1', 'alert.triggered', '{}', 1795000000500, 'pending', 0, 1795000000500, 0, '', 0), \
         ('t', 'evt_1', 'we_1', 'alert.triggered', '{}', 1795000000500, 'pending', 1, 1795000009000, 500, 'answered 500', 7), \
         ('t', 'evt_1', 'we_2', 'alert.triggered', '{}', 1795000000500, 'delivered', 1, 1795000000500, 200, '', 8)"
            .into(),
    );
    statements.push("INSERT INTO webhook_attempts VALUES ('t', 'evt_1', 'we_1', 1, 1795000001000, 500, 'answered 500', 12)".into());
    statements.push("INSERT INTO weighted_grain VALUES ('t', 'tokens', ['model'], toDateTime(1794960000), toDateTime(1795046400), 5)".into());
    statements.push(
        "INSERT INTO usage_weighted_hour VALUES ('t', 'tokens', 'c', ['model'], ['gpt-x'], toDateTime(1794999600), 3600, \
         [['model']], [['gpt-x']], ['1250.5'], [1], 1795000000000, 1795000000000, '1250.5', ['model'], ['gpt-x'], 7)"
            .into(),
    );
    statements.push("INSERT INTO catalog VALUES ('t', 'meter', 'm', '{\"v\":1}', 5), ('t', 'meter', 'm', '{\"v\":2}', 9)".into());
    // The usage read: an hour from the hour rollup and a ragged edge from samples; the
    // event (11:06:40) falls in the edge.
    let (from, to) = (1_794_996_000_000, 1_795_000_030_500);
    let parts = split(from, to, true);
    assert!(matches!(
        parts.as_slice(),
        [Part::Hours(..), Part::Samples(..)]
    ));
    let scope = |meter| Scope {
        tenant: "t",
        meter,
        customer: Some("c"),
        filters: &[],
        as_of_ms: None,
    };
    let model = ["model".to_owned()];
    let model_filter = [("model".to_owned(), vec!["gpt-x".to_owned()])];
    let usage_sql = format!(
        "SELECT grp, value, events FROM ({})",
        usage_statement(&parts, Aggregation::Sum, &model, &scope("tokens")).render()
    );
    let users_sql =
        usage_statement(&parts, Aggregation::UniqueCount, &model, &scope("users")).render();
    // The combined read of a subscription's meters (one statement for all its prices).
    let meters = [
        ("tokens", Aggregation::Sum),
        ("users", Aggregation::UniqueCount),
    ];
    let combined_sql = format!(
        "SELECT meter, group_values, value, events FROM ({}) ORDER BY meter",
        combined_statement("t", "c", &parts, &meters).render()
    );
    // Period-to-date states of those meters, from a start before the event to the end of its
    // day, written and read back with the rest of a window after them.
    let to_date = ToDate {
        tenant: "t",
        customer: "c",
        start_ms: 1_794_990_000_000,
        until_ms: 1_795_046_400_000,
    };
    let to_date_build = to_date_sql::build_statement(
        &to_date,
        &[Part::Samples(to_date.start_ms, to_date.until_ms)],
        &meters,
    )
    .render();
    let to_date_read = format!(
        "SELECT meter, group_values, value, events FROM ({}) ORDER BY meter DESC",
        to_date_sql::to_date_statement(
            &to_date,
            &split(to_date.until_ms, to_date.until_ms + 7_200_000, true),
            &meters
        )
        .render()
    );
    // The same read of several customers at once, each over its own window (loading current
    // periods into memory): c over the window above, nobody over a window without usage.
    let windows = windows_of(&[("c", (from, to)), ("nobody", (0, 1))]);
    let several_sql = format!(
        "SELECT customer, meter, value, events FROM ({}) ORDER BY meter",
        customers_statement("t", &windows, &meters).render()
    );
    // The overview's week over the same window: each meter folded per customer.
    let week = [
        WeekMeter {
            slug: "tokens",
            aggregation: Aggregation::Sum,
            parts: parts.clone(),
        },
        WeekMeter {
            slug: "users",
            aggregation: Aggregation::UniqueCount,
            parts: parts.clone(),
        },
    ];
    let week_sql = format!(
        "SELECT meter, customer, value FROM ({}) ORDER BY meter",
        week_volumes_statement("t", "UTC", &week).render()
    );
    // A series over the same window, hourly in a timezone with a half-hour offset.
    let series = SeriesQuery {
        scope: Scope {
            customer: None,
            ..scope("tokens")
        },
        aggregation: Aggregation::Sum,
        from_ms: from,
        to_ms: to,
        window_size: WindowSize::Hour,
        timezone: "Asia/Kolkata",
        hours_align: false,
        utc_days: false,
        group_by: &[],
    };
    let series_sql = format!(
        "SELECT window, customer, value FROM ({})",
        series_statement(&split(from, to, false), &series).render()
    );
    let hour = [(
        "t".to_owned(),
        "tokens".to_owned(),
        "c".to_owned(),
        1794999600,
    )];
    // The day grain: the UTC day of the events, and reads of it.
    let day = 1794960000u32;
    let day_ms = i64::from(day) * 1000;
    let customer_day = [("t".to_owned(), "c".to_owned(), day)];
    let days = [Part::Days(day_ms, day_ms + 86_400_000)];
    let day_usage_sql = format!(
        "SELECT grp, value, events FROM ({})",
        usage_statement(&days, Aggregation::Sum, &model, &scope("tokens")).render()
    );
    let day_combined_sql = format!(
        "SELECT meter, group_values, value, events FROM ({}) ORDER BY meter",
        combined_statement("t", "c", &days, &meters).render()
    );
    // Reads as of a moment: the event was ingested at 1795000000500, so a read as of a
    // millisecond before has nothing and counts it late.
    let (before, at) = (1_795_000_000_499, 1_795_000_000_500);
    let as_of_sql = |as_of_ms| {
        format!(
            "SELECT meter, group_values, value, events FROM ({}) ORDER BY meter",
            as_of_statement("t", "c", &split(from, to, true), as_of_ms, &meters).render()
        )
    };
    let late_sql = |as_of_ms| {
        let windows = [LateWindow {
            meters: vec!["tokens", "users"],
            from_ms: from,
            to_ms: to,
        }];
        late_events_statement("t", "c", &windows, as_of_ms).render()
    };
    let as_of_scope = |as_of_ms| Scope {
        as_of_ms: Some(as_of_ms),
        filters: &model_filter,
        ..scope("tokens")
    };
    let meter_as_of_sql = |as_of_ms| {
        format!(
            "SELECT grp, value, events FROM ({})",
            usage_statement(
                &split(from, to, false),
                Aggregation::Sum,
                &model,
                &as_of_scope(as_of_ms)
            )
            .render()
        )
    };
    let meter_late_sql =
        |as_of_ms| late_events_of_meter(&as_of_scope(as_of_ms), (from, to)).render();
    // A dynamic price's samples in counting order (the event has no priced sample: its unit
    // amount reads as 0).
    let gpt = ["gpt-x".to_owned()];
    let priced_scope = |as_of_ms| PricedScope {
        tenant: "t",
        customer: "c",
        meter: "tokens",
        priced_meter: "tokens#unit_price",
        group_by: &model,
        group: &gpt,
        from_ms: from,
        to_ms: to,
        as_of_ms,
    };
    let priced_sql = |as_of_ms| priced_samples_statement(&priced_scope(as_of_ms)).render();
    // A weighted meter's samples: the event inside the window, or carried into a later one.
    let weighted_sql = |(from_ms, to_ms), as_of_ms| {
        let w = WeightedScope {
            scope: Scope {
                as_of_ms,
                ..scope("tokens")
            },
            series_by: &model,
            group_by: &model,
            from_ms,
            to_ms,
        };
        weighted_statement(&w, &[(w.from_ms, w.to_ms)]).render()
    };
    let later = (to, to + 3_600_000);
    let grain_meter = weighted_grain::WeightedMeter {
        tenant: "t".into(),
        meter: "tokens".into(),
        series_keys: model.to_vec(),
    };
    let checks = vec![
        json!({"sql": usage_sql, "expect": "['gpt-x']\t1250.5\t1"}),
        json!({"sql": priced_sql(None), "expect": "0\te1\t1250.5"}),
        json!({"sql": priced_sql(Some(before)), "expect": ""}),
        json!({"sql": weighted_sql((from, to), None), "expect": "c\t['gpt-x']\t['gpt-x']\t1795000000000\t1250.5\t0"}),
        json!({"sql": weighted_sql(later, Some(at)), "expect": "c\t['gpt-x']\t['gpt-x']\t1795000000000\t1250.5\t1"}),
        json!({"sql": weighted_sql(later, Some(before)), "expect": ""}),
        json!({"sql": as_of_sql(at), "expect": "tokens\t['gpt-x']\t1250.5\t1\nusers\t[]\t1\t1"}),
        json!({"sql": as_of_sql(before), "expect": ""}),
        json!({"sql": late_hours_statement("t", "c", (from, to), before, &meters).render(), "expect": "1794999600000"}),
        json!({"sql": late_hours_statement("t", "c", (from, to), at, &meters).render(), "expect": ""}),
        json!({"sql": late_sql(before), "expect": "1"}),
        json!({"sql": late_sql(at), "expect": "0"}),
        json!({"sql": meter_as_of_sql(at), "expect": "['gpt-x']\t1250.5\t1"}),
        json!({"sql": meter_as_of_sql(before), "expect": ""}),
        json!({"sql": meter_late_sql(before), "expect": "1"}),
        json!({"sql": meter_late_sql(at), "expect": "0"}),
        json!({"sql": combined_sql, "expect": "tokens\t['gpt-x']\t1250.5\t1\nusers\t[]\t1\t1"}),
        json!({"sql": to_date_build, "expect": ""}),
        json!({"sql": to_date_read, "expect": "users\t[]\t1\t1\ntokens\t['gpt-x']\t1250.5\t1\n\t[]\t0\t0"}),
        json!({"sql": to_date_sql::hour_rows_statement("t", "c", &meters, 1_794_999_600_000).render(), "expect": "1"}),
        json!({"sql": to_date_sql::hour_rows_statement("t", "c", &meters, 1_795_003_200_000).render(), "expect": "0"}),
        // A late event of an hour the states cover, marked after they were written: not read.
        json!({"sql": "INSERT INTO rollup_hours_late VALUES ('t', 'c', toDateTime(1794999600), toDateTime(4000000000))", "expect": ""}),
        json!({"sql": to_date_read, "expect": ""}),
        json!({"sql": format!("SELECT `toUInt32(max(at))` FROM ({})", to_date_sql::late_mark_statement(&to_date).render()), "expect": "4000000000"}),
        json!({"sql": to_date_sql::partitions_statement("rollup_hours_late").render(), "expect": "20775"}),
        json!({"sql": to_date_sql::drop_partition("rollup_hours_late", 20_775).render(), "expect": ""}),
        json!({"sql": to_date_read, "expect": "users\t[]\t1\t1\ntokens\t['gpt-x']\t1250.5\t1\n\t[]\t0\t0"}),
        json!({"sql": to_date_sql::partitions_statement("usage_rollup_to_date").render(), "expect": "498624"}),
        json!({"sql": to_date_sql::drop_partition("usage_rollup_to_date", 498_624).render(), "expect": ""}),
        json!({"sql": "SELECT count() FROM usage_rollup_to_date", "expect": "0"}),
        json!({"sql": users_sql, "expect": "['']\t1\t1"}),
        json!({"sql": several_sql, "expect": "c\ttokens\t1250.5\t1\nc\tusers\t1\t1"}),
        json!({"sql": series_sql, "expect": "1794997800\tc\t1250.5"}),
        json!({"sql": week_sql, "expect": "tokens\tc\t1250.5\nusers\tc\t1"}),
        json!({"sql": "SELECT meter, arrayStringConcat(group_values, ','), toString(value), value_str FROM usage_samples ORDER BY meter",
               "expect": "tokens\tgpt-x\t1250.5\t\nusers\t\t1\tu7"}),
        json!({"sql": weighted_grain::coverage_statement(Some(("t", "tokens"))).render(),
               "expect": "t\ttokens\t['model']\t1794960000\t1795046400\t5"}),
        json!({"sql": weighted_grain::day_samples_statement(&grain_meter, 1_794_960_000, 86_400, &["c"]).render(),
               "expect": "c\t['gpt-x']\t['model']\t['gpt-x']\t1795000000000\t1250.5"}),
        json!({"sql": weighted_grain::spans_statement(("t", Some("c"), "tokens"), &model, (&[], &[(1_794_999_600_000, 1_795_003_200_000)])).render(),
               "expect": "t\ttokens\tc\t['model']\t['gpt-x']\t1794999600\t3600\t[['model']]\t[['gpt-x']]\t['1250.5']\t[1]\t1795000000000\t1795000000000\t1250.5\t['model']\t['gpt-x']\t7"}),
        json!({"sql": weighted_grain::spans_statement(("t", None, "tokens"), &[], (&[(1_794_960_000_000, 1_795_046_400_000)], &[(1_794_999_600_000, 1_795_003_200_000)])).render(),
               "expect": ""}),
        json!({"sql": queries::APPLIED_MIGRATIONS, "expect": "1"}),
        json!({"sql": format!("SELECT count() FROM ({})", queries::WRITER_TABLES), "expect": "2"}),
        json!({"sql": format!("SELECT count() FROM ({})", queries::SERVER_NOW), "expect": "1"}),
        json!({"sql": queries::usage_changed_since(0, &[]).render(), "expect": "t\tc"}),
        json!({"sql": queries::usage_changed_since(0, &[41, 43]).render(), "expect": "t\tc"}),
        json!({"sql": queries::usage_changed_since(0, &[41, 42]).render(), "expect": ""}),
        json!({"sql": queries::mark_usage_changed(1795000000000, &[41, 42]).render(), "expect": ""}),
        json!({"sql": "SELECT tenant, arrayStringConcat(customers, ','), arrayStringConcat(arrayMap(b -> toString(b), batches), ',') FROM usage_change_batches", "expect": "t\tc\t42\nt\tc\t42"}),
        json!({"sql": queries::old_days("usage_change_batches").render(), "expect": ""}),
        json!({"sql": queries::drop_day("usage_change_batches", "2000-01-01").render(), "expect": ""}),
        json!({"sql": queries::writer_beat("w1", "shared", "h", 7, i64::MAX).render(), "expect": ""}),
        json!({"sql": queries::live_writers("w2", 3600).render(), "expect": "w1\tshared\th\t7"}),
        json!({"sql": queries::writer_beat("w2", "embedded", "h", 8, 1795000000000).render(), "expect": ""}),
        json!({"sql": format!("SELECT count() FROM ({})", queries::unsettled_writers("w1").render()), "expect": "1"}),
        json!({"sql": queries::writer_settled("w2").render(), "expect": ""}),
        json!({"sql": format!("SELECT count() FROM ({})", queries::unsettled_writers("w1").render()), "expect": "0"}),
        json!({"sql": queries::batches_since(1795000000000).render(), "expect": "42"}),
        json!({"sql": queries::kill_queries("mh-nothing-%").render(), "expect": ""}),
        json!({"sql": queries::accepted_since(1795000000000).render(), "expect": "t\te1\t1795000000500"}),
        json!({"sql": queries::landed_batches(1795000000000, &[41, 42]).render(), "expect": "42\t2"}),
        json!({"sql": queries::batch_samples(1795000000000, &[41, 42]).render(), "expect": "42\t2"}),
        json!({"sql": "TRUNCATE TABLE usage_samples", "expect": ""}),
        json!({"sql": queries::repair_batch_samples(42).render(), "expect": ""}),
        json!({"sql": "SELECT meter, toString(value), batch_id FROM usage_samples ORDER BY meter", "expect": "tokens\t1250.5\t42\nusers\t1\t42"}),
        json!({"sql": queries::mark_dirty_hours(1795000000000, &[42]).render(), "expect": ""}),
        json!({"sql": queries::ANY_DIRTY_HOURS, "expect": "2"}),
        json!({"sql": queries::dirty_hours("t", "tokens", (1794999000, 1795003600), None).render(), "expect": "1794999600000"}),
        json!({"sql": queries::dirty_hours("t", "users", (1794999000, 1795003600), Some("c")).render(), "expect": "1794999600000"}),
        json!({"sql": format!("SELECT * FROM ({}) ORDER BY meter", queries::dirty_hours_marked_before(i64::MAX, 10).render()), "expect": "t\ttokens\tc\t1794999600\nt\tusers\tc\t1794999600"}),
        json!({"sql": "SET mutations_sync = 2", "expect": ""}),
        json!({"sql": queries::delete_rollup_hours(&hour).render(), "expect": ""}),
        json!({"sql": "SELECT count() FROM usage_rollup_hour WHERE meter = 'tokens'", "expect": "0"}),
        json!({"sql": queries::rebuild_rollup_hours(&hour).render(), "expect": ""}),
        json!({"sql": "SELECT countMerge(samples), toString(sumMerge(sum_value)) FROM usage_rollup_hour WHERE meter = 'tokens'", "expect": "1\t1250.5"}),
        json!({"sql": queries::pending_mutations("usage_rollup_hour").render(), "expect": "0"}),
        json!({"sql": format!("SELECT length(({})) > 0", queries::newest_mutation("usage_rollup_hour").render()), "expect": "1"}),
        json!({"sql": queries::mutations_known_and_pending("usage_rollup_hour", "x").render(), "expect": "0\t0"}),
        json!({"sql": queries::rollup_rows_of_hours(&hour).render(), "expect": "1"}),
        json!({"sql": queries::REPLICATION_LAG, "expect": "0"}),
        json!({"sql": format!("SELECT count() > 0 FROM ({})", queries::recent_changes_of(0, &hour).render()), "expect": "1"}),
        json!({"sql": format!("SELECT * FROM ({}) ORDER BY meter", queries::hours_of_batches(&hour, &[42]).render()), "expect": "t\ttokens\tc\t1794999600\nt\tusers\tc\t1794999600"}),
        json!({"sql": queries::unmark_dirty_hours(&hour, i64::MAX).render(), "expect": ""}),
        json!({"sql": queries::ANY_DIRTY_HOURS, "expect": "1"}),
        json!({"sql": queries::FIRST_ROLLUP_HOUR, "expect": "1794999600"}),
        json!({"sql": queries::seal_day(day, 5).render(), "expect": ""}),
        json!({"sql": day_usage_sql, "expect": "['gpt-x']\t1250.5\t1"}),
        json!({"sql": day_combined_sql, "expect": "tokens\t['gpt-x']\t1250.5\t1\nusers\t[]\t1\t1"}),
        json!({"sql": queries::reopen_dirty_days(day).render(), "expect": ""}),
        json!({"sql": queries::days_sealed(day + 86_400).render(), "expect": ""}),
        json!({"sql": queries::DAYS_SEALED_UNTIL, "expect": "1795046400"}),
        json!({"sql": format!("SELECT count() > 0 FROM ({})", queries::ANY_REOPENED_DAYS), "expect": "1"}),
        json!({"sql": queries::reopened_days_before(u32::MAX, day + 86_400, 10).render(), "expect": "t\tc\t1794960000"}),
        json!({"sql": queries::dirty_days_of(&customer_day).render(), "expect": "t\tc\t1794960000"}),
        json!({"sql": queries::rows_of_day(day).render(), "expect": "2"}),
        json!({"sql": queries::rows_of_version(5).render(), "expect": "2"}),
        json!({"sql": queries::older_rows_of_days(&customer_day, 6).render(), "expect": "2"}),
        json!({"sql": queries::weighted_rows_of_days(&customer_day, 6).render(), "expect": "1"}),
        json!({"sql": queries::delete_customer_days(&customer_day).render(), "expect": ""}),
        json!({"sql": queries::rows_of_day(day).render(), "expect": "0"}),
        json!({"sql": queries::reseal_days(&customer_day, 6).render(), "expect": ""}),
        json!({"sql": day_usage_sql, "expect": "['gpt-x']\t1250.5\t1"}),
        json!({"sql": queries::unmark_reopened_days(&customer_day, u32::MAX).render(), "expect": ""}),
        json!({"sql": queries::ANY_REOPENED_DAYS, "expect": "0"}),
        json!({"sql": queries::unmark_sealed_days(day, day + 86_400, u32::MAX).render(), "expect": ""}),
        json!({"sql": queries::delete_day(day).render(), "expect": ""}),
        json!({"sql": queries::rows_of_day(day).render(), "expect": "0"}),
        json!({"sql": queries::reopen_days_of(&hour).render(), "expect": ""}),
        json!({"sql": queries::reopened_days("t", Some("c"), (1794960000, 1795046400)).render(), "expect": "1794960000000"}),
        json!({"sql": queries::catalog_since(3).render(), "expect": "t\tmeter\tm\t{\"v\":2}\t9"}),
        json!({"sql": queries::sampled_event_ids("t", "tokens", 1795000000000, 1795000000001).render(), "expect": "e1"}),
        json!({"sql": queries::events_of_type("t", "llm", 0, 1795000000001).render(), "expect": "e1\tc\t1795000000000\t{}"}),
        json!({"sql": "INSERT INTO events_replay SELECT * FROM events", "expect": ""}),
        json!({"sql": "SELECT count() FROM usage_samples WHERE meter = 'tokens'", "expect": "2"}),
        json!({"sql": "SELECT countMerge(samples) FROM usage_rollup_hour WHERE meter = 'tokens'", "expect": "2"}),
        json!({"sql": "SELECT count() FROM events_replay", "expect": "0"}),
        json!({"sql": "SELECT count() FROM usage_change_batches", "expect": "3"}),
        json!({"sql": queries::STORED_KEYS, "expect": "ab\tt\tread\t\tn\t2026-11-18 11:06:40\t1"}),
        json!({"sql": queries::REVOKED_KEYS, "expect": "ab"}),
        json!({"sql": "INSERT INTO dashboard_secrets VALUES ('ab12', 1795000000000), ('cd34', 1794000000000)", "expect": ""}),
        json!({"sql": queries::DASHBOARD_SECRETS, "expect": "cd34\nab12"}),
        json!({"sql": queries::events_per_hour("t", 1794999600, 1795003600).render(), "expect": "1794999600\t1"}),
        json!({"sql": queries::events_per_hour("t", 1795003600, 1795007200).render(), "expect": ""}),
        json!({"sql": queries::fired_among("t", &["evt_1".to_owned(), "evt_2".to_owned()]).render(), "expect": "evt_1"}),
        json!({"sql": queries::fired_among("u", &["evt_1".to_owned()]).render(), "expect": ""}),
        json!({"sql": format!("SELECT endpoint, state, attempts, version FROM ({})", queries::deliveries_of("t", None, None, 10).render()),
               "expect": "we_1\tpending\t1\t7\nwe_2\tdelivered\t1\t8"}),
        json!({"sql": format!("SELECT endpoint FROM ({})", queries::deliveries_of("t", Some("evt_1"), Some("we_2"), 10).render()), "expect": "we_2"}),
        json!({"sql": format!("SELECT endpoint, next_attempt_ms FROM ({})", queries::due_deliveries(1795000010000, 0, 10).render()), "expect": "we_1\t1795000009000"}),
        json!({"sql": format!("SELECT count() FROM ({})", queries::due_deliveries(1795000001000, 0, 10).render()), "expect": "0"}),
        json!({"sql": queries::attempts_of("t", &["evt_1".to_owned()]).render(), "expect": "t\tevt_1\twe_1\t1\t1795000001000\t500\tanswered 500\t12"}),
    ];
    // The cluster form of every migration (tests/cluster.rs runs it on 18.16): chDB has no
    // ZooKeeper nor remote_servers, so current ClickHouse parses it without running it.
    let mut checks = checks;
    let ledger = std::iter::once((0, queries::CREATE_MIGRATIONS_LEDGER.to_owned()));
    let all = migrate::MIGRATIONS
        .iter()
        .flat_map(|(v, _, sql)| migrate::statements(sql).into_iter().map(move |s| (*v, s)));
    for (version, statement) in ledger.chain(all) {
        if let migrate::Step::OnCluster(sql) =
            migrate::clustered(&statement, "mh", "mh", version).unwrap()
        {
            let literal = sql.replace('\\', "\\\\").replace('\'', "\\'");
            checks.push(
                json!({"sql": format!("SELECT formatQuery('{literal}') != ''"), "expect": "1"}),
            );
        }
    }
    let plan = json!({"statements": statements, "checks": checks});
    let dir = std::env::temp_dir().join(format!("meterhouse-chdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/chdb/run_sql.py");
    let output = Command::new(python())
        .arg(script)
        .arg(&plan_path)
        .env("TZ", "UTC")
        .output()
        .expect("running python");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "on current ClickHouse:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
