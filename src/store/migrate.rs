//! Forward-only migrations from `sql/`, embedded at build time and recorded in `schema_migrations`.

use super::{Store, StoreError};

/// `(version, name, sql)` in order. Add new files here; never edit a released one.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "events", include_str!("../../sql/0001_events.sql")),
    (
        2,
        "meter_samples",
        include_str!("../../sql/0002_meter_samples.sql"),
    ),
    (3, "api_keys", include_str!("../../sql/0003_api_keys.sql")),
    (4, "catalog", include_str!("../../sql/0004_catalog.sql")),
    (5, "rollups", include_str!("../../sql/0005_rollups.sql")),
    (6, "replay", include_str!("../../sql/0006_replay.sql")),
    (
        7,
        "rollup_dirty",
        include_str!("../../sql/0007_rollup_dirty.sql"),
    ),
    (
        8,
        "usage_by_customer",
        include_str!("../../sql/0008_usage_by_customer.sql"),
    ),
    (
        9,
        "drop_meter_tables",
        include_str!("../../sql/0009_drop_meter_tables.sql"),
    ),
    (
        10,
        "usage_changes",
        include_str!("../../sql/0010_usage_changes.sql"),
    ),
    (
        11,
        "usage_change_batches",
        include_str!("../../sql/0011_usage_change_batches.sql"),
    ),
    (
        12,
        "api_key_revocations",
        include_str!("../../sql/0012_api_key_revocations.sql"),
    ),
    (
        13,
        "ingest_writers",
        include_str!("../../sql/0013_ingest_writers.sql"),
    ),
    (
        14,
        "writer_settled",
        include_str!("../../sql/0014_writer_settled.sql"),
    ),
    (
        15,
        "rollup_days",
        include_str!("../../sql/0015_rollup_days.sql"),
    ),
    (
        16,
        "rollup_hour_granules",
        include_str!("../../sql/0016_rollup_hour_granules.sql"),
    ),
    (17, "webhooks", include_str!("../../sql/0017_webhooks.sql")),
    (
        18,
        "dashboard_secrets",
        include_str!("../../sql/0018_dashboard_secrets.sql"),
    ),
];

#[derive(clickhouse::Row, serde::Serialize)]
struct Applied<'a> {
    version: u32,
    name: &'a str,
    applied_at: u32,
}

/// Applies every migration not yet recorded; returns how many ran.
pub async fn run(store: &Store) -> Result<usize, StoreError> {
    run_until(store, u32::MAX).await
}

/// Applies the migrations not yet recorded up to version `last` (a store as an older release
/// left it, for upgrade tests); returns how many ran.
/// Migrations that copy a table and swap it in: a process ingesting meanwhile would lose rows
/// of the copy. They run only while no writer beats (`ingest_writers`, `ingest_writer_beats`).
const WHILE_NOTHING_INGESTS: &[u32] = &[8, 9, 16];

/// How long a migration of [`WHILE_NOTHING_INGESTS`] waits for writers to stop (a rolling
/// restart) before it refuses.
const WAIT_FOR_WRITERS: std::time::Duration = std::time::Duration::from_secs(10);

/// Writers (by id) that beat in the last 3 seconds, in whichever writer tables exist.
async fn live_writers(store: &Store) -> Result<Vec<String>, StoreError> {
    let tables: Vec<String> = store
        .client()
        .query(super::queries::WRITER_TABLES)
        .fetch_all()
        .await?;
    let mut live = Vec::new();
    for table in tables {
        let sql = format!("SELECT DISTINCT writer FROM {table} WHERE beat >= now() - 3");
        live.extend(store.client().query(&sql).fetch_all::<String>().await?);
    }
    Ok(live)
}

/// Waits for every writer to stop before a migration that must run while nothing ingests;
/// refuses, saying what to do, if one goes on.
async fn wait_for_no_writer(store: &Store, version: u32, name: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_WRITERS;
    loop {
        let live = live_writers(store).await?;
        if live.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Rejected(format!(
                "migration {version:04} ({name}) copies a table and must run while nothing \
                 ingests into database '{}', but {} process(es) still do ({}): stop every \
                 meterhouse process on it, then start one (it migrates), then the others",
                store.database(),
                live.len(),
                live.join(", ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

pub async fn run_until(store: &Store, last: u32) -> Result<usize, StoreError> {
    let client = store.client();
    client
        .query(super::queries::CREATE_MIGRATIONS_LEDGER)
        .execute()
        .await?;
    let done: Vec<u32> = client
        .query(super::queries::APPLIED_MIGRATIONS)
        .fetch_all()
        .await?;
    let mut ran = 0;
    for &(version, name, sql) in MIGRATIONS
        .iter()
        .filter(|(v, ..)| *v <= last && !done.contains(v))
    {
        if WHILE_NOTHING_INGESTS.contains(&version) {
            wait_for_no_writer(store, version, name).await?;
        }
        for statement in statements(sql) {
            client.query(&statement).execute().await?;
        }
        let mut insert = client.insert::<Applied<'_>>("schema_migrations").await?;
        let applied_at = chrono::Utc::now().timestamp() as u32;
        insert
            .write(&Applied {
                version,
                name,
                applied_at,
            })
            .await?;
        insert.end().await?;
        tracing::info!(version, name, "migration applied");
        ran += 1;
    }
    Ok(ran)
}

/// Splits a migration file into statements: `;` at a line end ends one; `--` lines are comments.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            out.push(statement);
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_without_gaps() {
        for (i, (version, ..)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
        }
    }

    #[test]
    fn statements_split_on_line_final_semicolons_and_skip_comments() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE a (x String);\n\nCREATE VIEW b AS\nSELECT ';' AS s;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (x String)",
                "CREATE VIEW b AS\nSELECT ';' AS s"
            ]
        );
    }

    /// Each statement is guarded (`IF [NOT] EXISTS`), or is an `INSERT INTO t` after a
    /// `TRUNCATE TABLE IF EXISTS t` in the same file, so a file can run again after a failure.
    #[test]
    fn every_migration_statement_is_idempotent() {
        for (_, name, sql) in MIGRATIONS {
            let mut emptied = Vec::new();
            let mut dropped = Vec::new();
            for statement in statements(sql) {
                if let Some(table) = statement.strip_prefix("TRUNCATE TABLE IF EXISTS ") {
                    emptied.push(table.trim().to_owned());
                    continue;
                }
                if let Some(table) = statement.strip_prefix("DROP TABLE IF EXISTS ") {
                    dropped.push(table.trim().to_owned());
                }
                // A rename runs again only if each name it takes was freed before: dropped
                // earlier in the file, or renamed away earlier in the same statement.
                if let Some(pairs) = statement.strip_prefix("RENAME TABLE ") {
                    let mut freed = dropped.clone();
                    for pair in pairs.split(',') {
                        let (from, to) = pair.split_once(" TO ").unwrap_or_default();
                        assert!(freed.iter().any(|t| t == to.trim()), "{name}: {statement}");
                        freed.push(from.trim().to_owned());
                    }
                    continue;
                }
                if let Some(rest) = statement.strip_prefix("INSERT INTO ") {
                    let table = rest.split_whitespace().next().unwrap_or_default();
                    assert!(
                        emptied.iter().any(|t| t == table),
                        "{name}: {table} is not emptied before it is filled"
                    );
                    continue;
                }
                assert!(
                    statement.contains("IF NOT EXISTS")
                        || statement.starts_with("DROP TABLE IF EXISTS"),
                    "{name}: {statement}"
                );
            }
        }
    }
}
