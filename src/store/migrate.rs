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
    (
        19,
        "weighted_hours",
        include_str!("../../sql/0019_weighted_hours.sql"),
    ),
    (
        20,
        "seal_days_sooner",
        include_str!("../../sql/0020_seal_days_sooner.sql"),
    ),
    (
        21,
        "rollup_hour_granules_32",
        include_str!("../../sql/0021_rollup_hour_granules_32.sql"),
    ),
    (
        22,
        "usage_to_date",
        include_str!("../../sql/0022_usage_to_date.sql"),
    ),
    (
        23,
        "late_hours",
        include_str!("../../sql/0023_late_hours.sql"),
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
/// of the copy; and 0020 and 0023, whose views an insert begun before them would not go
/// through (its events of yesterday would not re-open that day; its late events of an hour
/// would leave no mark, and states written meanwhile would miss them). They run only while no
/// writer beats (`ingest_writers`, `ingest_writer_beats`).
const WHILE_NOTHING_INGESTS: &[u32] = &[8, 9, 16, 20, 21, 23];

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
    // On a cluster, `ON CLUSTER` waits for every node: only when the ledger is missing.
    let ledger: u64 = store
        .client()
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'schema_migrations'")
        .fetch_one()
        .await?;
    if ledger == 0 || store.cluster().is_none() {
        run_statement(store, super::queries::CREATE_MIGRATIONS_LEDGER, 0).await?;
    }
    let client = store.client();
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
            run_statement(store, &statement, version).await?;
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

/// Runs one statement of migration `version`: as written on one server; in cluster mode in
/// its cluster form ([`clustered`]).
async fn run_statement(store: &Store, statement: &str, version: u32) -> Result<(), StoreError> {
    let Some(cluster) = store.cluster() else {
        return Ok(store.client().query(statement).execute().await?);
    };
    let step = clustered(statement, cluster.name(), store.database(), version)
        .map_err(StoreError::Rejected)?;
    match step {
        Step::OnCluster(sql) => {
            store
                .client()
                .query(&sql)
                .with_setting("distributed_ddl_task_timeout", "120")
                .execute()
                .await?
        }
        Step::OnEachShard(sql) => {
            for shard in store.shards() {
                shard.client().query(&sql).execute().await?;
            }
        }
        Step::Once(sql) => store.client().query(&sql).execute().await?,
    }
    Ok(())
}

/// How a migration statement runs on a cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// DDL, once for the whole cluster (`ON CLUSTER`): every node runs it.
    OnCluster(String),
    /// A write into a table of customers' rows: on one node of each shard (its replicas copy it).
    OnEachShard(String),
    /// A write into a table every node holds: on one node.
    Once(String),
}

/// The cluster form of a migration statement of `version`: DDL gains `ON CLUSTER`, and each
/// table's engine its replicated form, within its shard for the tables of [`SHARDED`] and on
/// every node for the others. Its ZooKeeper path names the database, the table and the
/// migration, so that a table made again under a name used before gets a path of its own.
/// A statement of another shape is refused, so a new migration must fit these.
///
/// [`SHARDED`]: super::cluster::SHARDED
pub fn clustered(
    statement: &str,
    cluster: &str,
    database: &str,
    version: u32,
) -> Result<Step, String> {
    let on_cluster = format!(" ON CLUSTER {}", super::quote_ident(cluster));
    let refused = || format!("migration {version:04} cannot run on a cluster: {statement}");
    let name_after = |prefix: &str| -> Option<(String, usize)> {
        let rest = statement.strip_prefix(prefix)?;
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty()).then(|| (name.clone(), prefix.len() + name.len()))
    };
    if let Some((name, end)) = name_after("CREATE TABLE IF NOT EXISTS ") {
        let sharded = super::cluster::SHARDED.contains(&name.as_str());
        if !sharded && !super::cluster::EVERYWHERE.contains(&name.as_str()) {
            return Err(format!(
                "{}: table {name} is in neither cluster::SHARDED nor cluster::EVERYWHERE",
                refused()
            ));
        }
        let created = format!("{}{on_cluster}{}", &statement[..end], &statement[end..]);
        let path = match sharded {
            true => format!("/clickhouse/tables/{{shard}}/{database}/{name}_{version}"),
            false => format!("/clickhouse/tables/all/{database}/{name}_{version}"),
        };
        let replica = match sharded {
            true => "{replica}",
            false => "{shard}_{replica}",
        };
        let mut replicated = replicated_engine(&created, &path, replica).ok_or_else(refused)?;
        // A batch retried after a timeout is the same block, dropped if it landed: keep the
        // blocks of the last minutes' batches, not only the last hundred.
        if name == "events" {
            replicated.push_str(match replicated.contains("SETTINGS") {
                true => ", replicated_deduplication_window = 10000",
                false => "\nSETTINGS replicated_deduplication_window = 10000",
            });
        }
        return Ok(Step::OnCluster(qualified(&replicated, database)));
    }
    if let Some((_, end)) = name_after("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
        let sql = format!("{}{on_cluster}{}", &statement[..end], &statement[end..]);
        return Ok(Step::OnCluster(qualified(&sql, database)));
    }
    for prefix in [
        "DROP TABLE IF EXISTS ",
        "TRUNCATE TABLE IF EXISTS ",
        "RENAME TABLE ",
    ] {
        if name_after(prefix).is_some() {
            let sql = format!("{statement}{on_cluster}");
            return Ok(Step::OnCluster(qualified(&sql, database)));
        }
    }
    if let Some((name, _)) = name_after("INSERT INTO ") {
        return Ok(match super::cluster::SHARDED.contains(&name.as_str()) {
            true => Step::OnEachShard(statement.to_owned()),
            false => Step::Once(statement.to_owned()),
        });
    }
    Err(refused())
}

/// `statement` with the tables and views it names qualified with `database`: a node runs a
/// statement `ON CLUSTER` in its own default database, and qualifies only the name it creates,
/// not the tables a view reads or writes, nor those of `AS`.
fn qualified(statement: &str, database: &str) -> String {
    let views = MIGRATIONS.iter().flat_map(|(.., sql)| {
        sql.split("MATERIALIZED VIEW IF NOT EXISTS ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
    });
    let known: Vec<&str> = super::cluster::SHARDED
        .iter()
        .chain(super::cluster::EVERYWHERE)
        .copied()
        .chain(views)
        .collect();
    let database = super::quote_ident(database);
    let mut out = String::with_capacity(statement.len() + 64);
    let mut previous = "";
    let mut rest = statement;
    while !rest.is_empty() {
        let word_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if word_len == 0 {
            let c = rest.chars().next().unwrap_or(' ');
            if !c.is_whitespace() {
                previous = &rest[..c.len_utf8()];
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let word = &rest[..word_len];
        let after_keyword = matches!(
            previous,
            "FROM" | "JOIN" | "TO" | "AS" | "INTO" | "TABLE" | "EXISTS" | ","
        );
        if after_keyword && known.contains(&word) && !out.ends_with('.') {
            out.push_str(&database);
            out.push('.');
        }
        out.push_str(word);
        previous = word;
        rest = &rest[word_len..];
    }
    out
}

/// `statement` with its `ENGINE = X[(args)]` made `ReplicatedX(path, replica[, args])`; as it
/// is for `Null`; `None` without an engine.
fn replicated_engine(statement: &str, path: &str, replica: &str) -> Option<String> {
    let at = statement.find("ENGINE = ")? + "ENGINE = ".len();
    let rest = &statement[at..];
    let engine: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if engine == "Null" {
        return Some(statement.to_owned());
    }
    if !engine.ends_with("MergeTree") {
        return None;
    }
    let after = &rest[engine.len()..];
    let (args, tail) = match after.strip_prefix('(') {
        Some(inner) => {
            let close = inner.find(')')?;
            (inner[..close].trim(), &inner[close + 1..])
        }
        None => ("", after),
    };
    let args = match args {
        "" => String::new(),
        args => format!(", {args}"),
    };
    Some(format!(
        "{}Replicated{engine}('{path}', '{replica}'{args}){tail}",
        &statement[..at]
    ))
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
    fn every_migration_has_a_cluster_form() {
        let ledger = std::iter::once((0, super::super::queries::CREATE_MIGRATIONS_LEDGER));
        let all = MIGRATIONS
            .iter()
            .flat_map(|(v, _, sql)| statements(sql).into_iter().map(move |s| (*v, s)));
        for (version, statement) in ledger.map(|(v, s)| (v, s.to_owned())).chain(all) {
            let step = clustered(&statement, "mh", "db", version).unwrap();
            if let Step::OnCluster(sql) = &step {
                assert!(sql.contains(" ON CLUSTER `mh`"), "{sql}");
                if sql.contains("MergeTree") {
                    assert!(sql.contains("ENGINE = Replicated"), "{sql}");
                }
            }
        }
    }

    #[test]
    fn tables_are_replicated_in_their_shard_or_everywhere() {
        let events =
            "CREATE TABLE IF NOT EXISTS events\n(a String)\nENGINE = MergeTree\nORDER BY a";
        assert_eq!(
            clustered(events, "mh", "db", 1).unwrap(),
            Step::OnCluster(
                "CREATE TABLE IF NOT EXISTS `db`.events ON CLUSTER `mh`\n(a String)\nENGINE = \
                 ReplicatedMergeTree('/clickhouse/tables/{shard}/db/events_1', '{replica}')\n\
                 ORDER BY a\nSETTINGS replicated_deduplication_window = 10000"
                    .into()
            )
        );
        let catalog = "CREATE TABLE IF NOT EXISTS catalog (k String, version UInt64) \
                       ENGINE = ReplacingMergeTree(version) ORDER BY k SETTINGS index_granularity = 64";
        assert_eq!(
            clustered(catalog, "mh", "db", 4).unwrap(),
            Step::OnCluster(
                "CREATE TABLE IF NOT EXISTS `db`.catalog ON CLUSTER `mh` (k String, version UInt64) \
                 ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/db/catalog_4', \
                 '{shard}_{replica}', version) ORDER BY k SETTINGS index_granularity = 64"
                    .into()
            )
        );
        let copy = "INSERT INTO usage_rollup_hour_g256 SELECT * FROM usage_rollup_hour";
        assert_eq!(
            clustered(copy, "mh", "db", 16).unwrap(),
            Step::OnEachShard(copy.into())
        );
        assert!(
            clustered(
                "CREATE TABLE IF NOT EXISTS unknown (a String) ENGINE = MergeTree ORDER BY a",
                "mh",
                "db",
                1
            )
            .is_err()
        );
        assert!(clustered("OPTIMIZE TABLE events", "mh", "db", 1).is_err());
        let view = "CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_usage_samples TO usage_samples AS \
                    SELECT tenant, x AS day FROM events ARRAY JOIN a AS b";
        assert_eq!(
            clustered(view, "mh", "db", 8).unwrap(),
            Step::OnCluster(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS `db`.events_to_usage_samples ON CLUSTER `mh` \
                 TO `db`.usage_samples AS SELECT tenant, x AS day FROM `db`.events ARRAY JOIN a AS b"
                    .into()
            )
        );
        let rename = "RENAME TABLE usage_rollup_hour TO usage_rollup_hour_g1024, usage_rollup_hour_g256 TO usage_rollup_hour";
        assert_eq!(
            clustered(rename, "mh", "db", 16).unwrap(),
            Step::OnCluster(
                "RENAME TABLE `db`.usage_rollup_hour TO `db`.usage_rollup_hour_g1024, \
                 `db`.usage_rollup_hour_g256 TO `db`.usage_rollup_hour ON CLUSTER `mh`"
                    .into()
            )
        );
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
