//! The migrations and every query of `store::queries` on current ClickHouse (chDB, in-process),
//! beside the 18.16 server the other suites use. `scripts/test` installs chDB into
//! `target/chdb-venv`; `METERHOUSE_CHDB_PYTHON` may name another interpreter that has it.

use std::path::PathBuf;
use std::process::Command;

use meterhouse::catalog::Aggregation;
use meterhouse::store::usage::{
    Part, Windows, combined_statement, several_statement, split, statement,
};
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

/// Substitutes `?` placeholders in order, as the client's binding would.
fn bind(sql: &str, values: &[&str]) -> String {
    let mut parts = sql.split('?');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for (part, value) in parts.zip(values.iter().chain(std::iter::repeat(&"?"))) {
        out.push_str(value);
        out.push_str(part);
    }
    out
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
    statements.push("INSERT INTO catalog VALUES ('t', 'meter', 'm', '{\"v\":1}', 5), ('t', 'meter', 'm', '{\"v\":2}', 9)".into());
    // The usage read: an hour from the hour rollup and a ragged edge from samples; the
    // event (11:06:40) falls in the edge.
    let (from, to) = (1_794_996_000_000, 1_795_000_030_500);
    let parts = split(from, to, true);
    assert!(matches!(
        parts.as_slice(),
        [Part::Hours(..), Part::Samples(..)]
    ));
    let mut values = Vec::new();
    for part in &parts {
        let (a, b) = match *part {
            Part::Hours(a, b) => (a / 1000, b / 1000),
            Part::Samples(a, b) => (a, b),
        };
        values.extend([
            "'model'".to_string(),
            "'t'".into(),
            "'tokens'".into(),
            "'c'".into(),
            a.to_string(),
            b.to_string(),
        ]);
    }
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let usage_sql = format!(
        "SELECT grp, value, events FROM ({})",
        bind(&statement(&parts, 1, Aggregation::Sum), &values)
    );
    let users: Vec<&str> = values
        .iter()
        .map(|v| if *v == "'tokens'" { "'users'" } else { v })
        .collect();
    let users_sql = bind(&statement(&parts, 1, Aggregation::UniqueCount), &users);
    // The combined read of a subscription's meters (one statement for all its prices).
    let meters = [
        ("tokens", Aggregation::Sum),
        ("users", Aggregation::UniqueCount),
    ];
    let (hour_from, hour_to) = match parts[0] {
        Part::Hours(a, b) => ((a / 1000).to_string(), (b / 1000).to_string()),
        Part::Samples(..) => unreachable!("checked above"),
    };
    let (edge_from, edge_to) = match parts[1] {
        Part::Samples(a, b) => (a.to_string(), b.to_string()),
        Part::Hours(..) => unreachable!("checked above"),
    };
    let scope = ["'t'", "'c'", "'tokens'", "'users'"];
    let mut combined = vec!["'tokens'", "'tokens'", "'users'", "'users'"];
    combined.extend(scope);
    combined.extend([hour_from.as_str(), hour_to.as_str()]);
    combined.extend(scope);
    combined.extend([edge_from.as_str(), edge_to.as_str()]);
    let combined_sql = format!(
        "SELECT meter, group_values, value, events FROM ({}) ORDER BY meter",
        bind(&combined_statement(&parts, &meters), &combined)
    );
    // The same read of several customers at once, each over its own window (loading current
    // periods into memory): c over the window above, nobody over a window without usage.
    let window = Windows::new(&[("c", (from, to))]);
    let list = |v: i64, none: i64, scale: i64| format!("[{}, {}]", v / scale, none);
    let customers = "['c', 'nobody']".to_owned();
    let (h0, h1) = (window.h0[0], window.h1[0]);
    let hour_bounds = [list(h0, 0, 1000), list(h1, 0, 1000)];
    let ms_bounds = [
        list(from, 0, 1),
        list(to, 1, 1),
        list(h0, 0, 1),
        list(h1, 0, 1),
    ];
    let (span_from, span_to) = (from.min(0).to_string(), to.to_string());
    let mut several: Vec<&str> = vec!["'tokens'", "'tokens'", "'users'", "'users'"];
    several.extend(["'t'", "'tokens'", "'users'", "'c'", "'nobody'"]);
    several.extend([hour_from.as_str(), hour_to.as_str()]);
    for bounds in &hour_bounds {
        several.extend([customers.as_str(), bounds.as_str()]);
    }
    several.extend(["'t'", "'tokens'", "'users'", "'c'", "'nobody'"]);
    several.extend([span_from.as_str(), span_to.as_str()]);
    for bounds in &ms_bounds {
        several.extend([customers.as_str(), bounds.as_str()]);
    }
    let several_sql = format!(
        "SELECT customer, meter, value, events FROM ({}) ORDER BY meter",
        bind(&several_statement(&meters, 2, true), &several)
    );
    let checks = vec![
        json!({"sql": usage_sql, "expect": "['gpt-x']\t1250.5\t1"}),
        json!({"sql": combined_sql, "expect": "tokens\t['gpt-x']\t1250.5\t1\nusers\t[]\t1\t1"}),
        json!({"sql": users_sql, "expect": "['']\t1\t1"}),
        json!({"sql": several_sql, "expect": "c\ttokens\t1250.5\t1\nc\tusers\t1\t1"}),
        json!({"sql": "SELECT meter, arrayStringConcat(group_values, ','), toString(value), value_str FROM usage_samples ORDER BY meter",
               "expect": "tokens\tgpt-x\t1250.5\t\nusers\t\t1\tu7"}),
        json!({"sql": queries::APPLIED_MIGRATIONS, "expect": "1"}),
        json!({"sql": format!("SELECT count() FROM ({})", queries::SERVER_NOW), "expect": "1"}),
        json!({"sql": bind(queries::USAGE_CHANGED_SINCE, &["0", "[]"]), "expect": "t\tc"}),
        json!({"sql": bind(queries::USAGE_CHANGED_SINCE, &["0", "[41, 43]"]), "expect": "t\tc"}),
        json!({"sql": bind(queries::USAGE_CHANGED_SINCE, &["0", "[41, 42]"]), "expect": ""}),
        json!({"sql": bind(queries::MARK_USAGE_CHANGED, &["1795000000000", "[41, 42]"]), "expect": ""}),
        json!({"sql": "SELECT tenant, arrayStringConcat(customers, ','), arrayStringConcat(arrayMap(b -> toString(b), batches), ',') FROM usage_change_batches", "expect": "t\tc\t42\nt\tc\t42"}),
        json!({"sql": queries::OLD_USAGE_CHANGE_DAYS, "expect": ""}),
        json!({"sql": bind(queries::DROP_USAGE_CHANGE_DAY, &["'2000-01-01'"]), "expect": ""}),
        json!({"sql": bind(queries::ACCEPTED_SINCE, &["1795000000000"]), "expect": "t\te1\t1795000000500"}),
        json!({"sql": bind(queries::LANDED_BATCHES, &["1795000000000", "[41, 42]"]), "expect": "42\t2"}),
        json!({"sql": bind(queries::BATCH_SAMPLES, &["1795000000000", "[41, 42]"]), "expect": "42\t2"}),
        json!({"sql": "TRUNCATE TABLE usage_samples", "expect": ""}),
        json!({"sql": bind(queries::REPAIR_BATCH_SAMPLES, &["42"]), "expect": ""}),
        json!({"sql": "SELECT meter, toString(value), batch_id FROM usage_samples ORDER BY meter", "expect": "tokens\t1250.5\t42\nusers\t1\t42"}),
        json!({"sql": bind(queries::MARK_DIRTY_HOURS, &["1795000001000", "1795000000000", "[42]"]), "expect": ""}),
        json!({"sql": queries::ANY_DIRTY_HOURS, "expect": "2"}),
        json!({"sql": bind(queries::DIRTY_HOURS, &["'t'", "'tokens'", "1794999000", "1795003600"]), "expect": "1794999600000"}),
        json!({"sql": bind(queries::DIRTY_HOURS_OF_CUSTOMER, &["'t'", "'users'", "1794999000", "1795003600", "'c'"]), "expect": "1794999600000"}),
        json!({"sql": bind(queries::CATALOG_SINCE, &["3"]), "expect": "t\tmeter\tm\t{\"v\":2}\t9"}),
        json!({"sql": bind(queries::SAMPLED_EVENT_IDS, &["'t'", "'tokens'", "1795000000000", "1795000000001"]), "expect": "e1"}),
        json!({"sql": bind(queries::EVENTS_OF_TYPE, &["'t'", "'llm'", "0", "1795000000001"]), "expect": "e1\tc\t1795000000000\t{}"}),
        json!({"sql": "INSERT INTO events_replay SELECT * FROM events", "expect": ""}),
        json!({"sql": "SELECT count() FROM usage_samples WHERE meter = 'tokens'", "expect": "2"}),
        json!({"sql": "SELECT countMerge(samples) FROM usage_rollup_hour WHERE meter = 'tokens'", "expect": "2"}),
        json!({"sql": "SELECT count() FROM events_replay", "expect": "0"}),
        json!({"sql": "SELECT count() FROM usage_change_batches", "expect": "3"}),
        json!({"sql": queries::STORED_KEYS, "expect": "ab\tt\tread\t\tn\t2026-11-18 11:06:40\t1"}),
        json!({"sql": queries::REVOKED_KEYS, "expect": "ab"}),
    ];
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
