//! Every fixed statement the service sends besides migrations, inserts and usage reads
//! (`usage_sql`, `series_sql`), in one place, so that a test can run each on current ClickHouse
//! (chDB) as well as on the 18.16 server of the suite. A statement with values is a function
//! that writes each value where it goes ([`Sql`]).

use super::sql::Sql;

/// The ledger of applied migrations.
pub const CREATE_MIGRATIONS_LEDGER: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version UInt32, name String, applied_at DateTime) \
     ENGINE = ReplacingMergeTree ORDER BY version";

pub const APPLIED_MIGRATIONS: &str = "SELECT DISTINCT version FROM schema_migrations";

/// The tables where writers beat (sql/0013, 0014), of those that exist.
pub const WRITER_TABLES: &str = "SELECT name FROM system.tables WHERE database = currentDatabase() \
     AND name IN ('ingest_writers', 'ingest_writer_beats')";

/// Ids accepted since `since_ms`, oldest first: the dedup state after a restart.
pub fn accepted_since(since_ms: i64) -> Sql {
    let mut sql = Sql::new("SELECT tenant, id, ingested_ms FROM events WHERE ingested_ms >= ");
    sql.arg(since_ms).push(" ORDER BY ingested_ms");
    sql
}

/// Of `batch_ids`, committed at or after `since_ms`, those in `events` with the number of
/// samples each should have.
pub fn landed_batches(since_ms: i64, batch_ids: &[u64]) -> Sql {
    let mut sql = Sql::new(
        "SELECT batch_id, toUInt64(sum(length(sample_meter))) FROM events PREWHERE ingested_ms >= ",
    );
    sql.arg(since_ms)
        .push(" WHERE has(")
        .arg(batch_ids)
        .push(", batch_id) GROUP BY batch_id");
    sql
}

/// Tenant and id of every event of `batch_ids` committed since `since_ms`, with its batch.
pub fn landed_ids(since_ms: i64, batch_ids: &[u64]) -> Sql {
    let mut sql = Sql::new("SELECT batch_id, tenant, id FROM events PREWHERE ingested_ms >= ");
    sql.arg(since_ms)
        .push(" WHERE has(")
        .arg(batch_ids)
        .push(", batch_id)");
    sql
}

/// The samples `usage_samples` holds for each of `batch_ids` committed since `since_ms`.
pub fn batch_samples(since_ms: i64, batch_ids: &[u64]) -> Sql {
    let mut sql = Sql::new("SELECT batch_id, count() FROM usage_samples PREWHERE ingested_ms >= ");
    sql.arg(since_ms)
        .push(" WHERE has(")
        .arg(batch_ids)
        .push(", batch_id) GROUP BY batch_id");
    sql
}

/// Re-derives the samples of the events of `batch_id` that have none from `events`, exactly as
/// the view `events_to_usage_samples` (sql/0008) does at insert; for a batch whose insert (or
/// one of its attempts) stopped between the two tables.
pub fn repair_batch_samples(batch_id: u64) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO usage_samples \
         (tenant, meter, customer, group_keys, group_values, ts_ms, ts, value, value_str, event_id, ingested_ms, batch_id) \
         SELECT tenant, s_meter, customer, s_group_keys, s_group_values, ts_ms, ts, s_value, s_value_str, id, ingested_ms, batch_id \
         FROM events ARRAY JOIN sample_meter AS s_meter, sample_value AS s_value, sample_value_str AS s_value_str, \
         sample_group_keys AS s_group_keys, sample_group_values AS s_group_values \
         WHERE batch_id = ",
    );
    sql.arg(batch_id)
        .push(" AND (tenant, id) NOT IN (SELECT tenant, event_id FROM usage_samples WHERE batch_id = ")
        .arg(batch_id)
        .push(")");
    sql
}

/// Marks every (tenant, meter, customer, hour) of `batch_ids` committed since `since_ms` as
/// read from samples, not the rollup (sql/0007), at the server's time: the repair
/// ([`super::repair`]) unmarks only what was marked before it started, by the same clock.
pub fn mark_dirty_hours(since_ms: i64, batch_ids: &[u64]) -> Sql {
    samples_of_batches(
        "INSERT INTO rollup_dirty (tenant, meter, customer, bucket, marked_ms) \
         SELECT DISTINCT tenant, meter, customer, toDateTime(intDiv(toUInt32(ts), 3600) * 3600), \
         toInt64(toUInt32(now())) * 1000",
        since_ms,
        batch_ids,
    )
}

/// Marks the hours of `batch_ids` committed since `since_ms` as late (sql/0023), at the
/// server's time: period-to-date states written before their repair are never read.
pub fn mark_hours_late(since_ms: i64, batch_ids: &[u64]) -> Sql {
    samples_of_batches(
        "INSERT INTO rollup_hours_late (tenant, customer, hour, at) \
         SELECT DISTINCT tenant, customer, toDateTime(intDiv(toUInt32(ts), 3600) * 3600), now()",
        since_ms,
        batch_ids,
    )
}

/// `select` over the samples of `batch_ids` committed since `since_ms`.
fn samples_of_batches(select: &str, since_ms: i64, batch_ids: &[u64]) -> Sql {
    let mut sql = Sql::new(select);
    sql.push(" FROM usage_samples PREWHERE ingested_ms >= ")
        .arg(since_ms)
        .push(" WHERE has(")
        .arg(batch_ids)
        .push(", batch_id)");
    sql
}

/// Up to `limit` marked hours (tenant, meter, customer, hour in epoch seconds) with a mark
/// older than `before_ms` (server clock).
pub fn dirty_hours_marked_before(before_ms: i64, limit: u64) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT tenant, meter, customer, toUInt32(bucket) FROM rollup_dirty \
         WHERE marked_ms < ",
    );
    sql.arg(before_ms).push(" LIMIT ").arg(limit);
    sql
}

/// One hour of one customer's meter: tenant, meter, customer, hour (epoch seconds).
pub type MeterHour = (String, String, String, u32);

/// `(tenant, customer, meter, bucket) IN (...)` over `hours`.
fn hours_in(sql: &mut Sql, hours: &[MeterHour]) {
    sql.push("(tenant, customer, meter, bucket) IN (")
        .join(
            hours.iter().map(|(tenant, meter, customer, hour)| {
                tuple(&[
                    Val::Str(tenant),
                    Val::Str(customer),
                    Val::Str(meter),
                    Val::Time(*hour),
                ])
            }),
            ", ",
        )
        .push(")");
}

/// One value of a [`tuple`].
enum Val<'a> {
    Str(&'a str),
    /// Epoch seconds, as a DateTime.
    Time(u32),
    /// SQL text as is.
    Raw(&'static str),
}

/// `(v1, v2, ...)`, each value bound.
fn tuple(values: &[Val<'_>]) -> Sql {
    let mut sql = Sql::new("(");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        match value {
            Val::Str(text) => sql.arg(*text),
            Val::Time(seconds) => sql.append(time(*seconds)),
            Val::Raw(text) => sql.push(text),
        };
    }
    sql.push(")");
    sql
}

/// `(tenant = ? AND customer = ? [AND meter = ?] AND column >= from AND column < to)`.
fn range_of(
    (tenant, customer, meter): (&str, &str, Option<&str>),
    column: &str,
    (from, to): (Sql, Sql),
) -> Sql {
    let mut sql = Sql::new("(tenant = ");
    sql.arg(tenant).push(" AND customer = ").arg(customer);
    if let Some(meter) = meter {
        sql.push(" AND meter = ").arg(meter);
    }
    sql.push(" AND ")
        .push(column)
        .push(" >= ")
        .append(from)
        .push(" AND ")
        .push(column)
        .push(" < ")
        .append(to)
        .push(")");
    sql
}

/// A bound value, alone.
fn bound(value: impl Into<super::sql::Arg>) -> Sql {
    let mut sql = Sql::new("");
    sql.arg(value);
    sql
}

/// `toDateTime(?)` of epoch seconds.
fn time(seconds: u32) -> Sql {
    let mut sql = Sql::new("toDateTime(");
    sql.arg(seconds).push(")");
    sql
}

/// `column >= toDateTime(from_s) AND column < toDateTime(to_s)`.
pub(super) fn times(column: &str, from_s: u32, to_s: u32) -> Sql {
    let mut sql = Sql::new(column);
    sql.push(" >= ")
        .append(time(from_s))
        .push(" AND ")
        .push(column)
        .push(" < ")
        .append(time(to_s));
    sql
}

/// Deletes the hour rollup's rows of `hours` (a mutation: it runs after this returns, on the
/// parts that exist now).
pub fn delete_rollup_hours(hours: &[MeterHour]) -> Sql {
    let mut sql = Sql::new("ALTER TABLE usage_rollup_hour DELETE WHERE ");
    hours_in(&mut sql, hours);
    sql
}

/// Rows of the hour rollup in `hours`.
pub fn rollup_rows_of_hours(hours: &[MeterHour]) -> Sql {
    let mut sql = Sql::new("SELECT count() FROM usage_rollup_hour WHERE ");
    hours_in(&mut sql, hours);
    sql
}

/// Writes the hour rollup's rows of `hours` from `usage_samples`, exactly as the view
/// `events_to_usage_rollup_hour` (sql/0008) does at insert.
pub fn rebuild_rollup_hours(hours: &[MeterHour]) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO usage_rollup_hour (tenant, meter, customer, group_keys, group_values, \
         bucket, sum_value, samples, min_value, max_value, distinct_values, latest_value) \
         SELECT tenant, meter, customer, group_keys, group_values, \
         toDateTime(intDiv(toUInt32(ts), 3600) * 3600) AS hour, sumState(value), countState(), \
         minState(value), maxState(value), uniqExactState(value_str), argMaxState(value, ts_ms) \
         FROM usage_samples WHERE ",
    );
    let ranges = hours.iter().map(|(tenant, meter, customer, hour)| {
        let from_ms = i64::from(*hour) * 1000;
        let bounds = (bound(from_ms), bound(from_ms + 3_600_000));
        range_of((tenant, customer, Some(meter)), "ts_ms", bounds)
    });
    sql.join(ranges, " OR ");
    sql.push(" GROUP BY tenant, meter, customer, group_keys, group_values, hour");
    sql
}

/// Mutations of `table` in this database not done yet.
pub fn pending_mutations(table: &str) -> Sql {
    let mut sql = Sql::new(
        "SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0 \
         AND table = ",
    );
    sql.arg(table);
    sql
}

/// How far behind its shard this node is: the age of the oldest insert it has not fetched yet,
/// in seconds, over the tables a maintenance round reads (0 for a table not replicated).
pub const REPLICATION_LAG: &str = "SELECT toUInt64(max(absolute_delay)) FROM system.replicas \
     WHERE database = currentDatabase() AND table IN ('usage_rollup_hour', 'usage_samples', \
     'rollup_days_reopened', 'rollup_dirty', 'usage_rollup_day', 'usage_changes', \
     'usage_change_batches')";

/// The newest mutation of `table` (a replicated table's ids are the same zero-padded numbers on
/// every replica), or an empty string.
pub fn newest_mutation(table: &str) -> Sql {
    let mut sql = Sql::new(
        "SELECT max(mutation_id) FROM system.mutations WHERE database = currentDatabase() \
         AND table = ",
    );
    sql.arg(table);
    sql
}

/// On one replica, whether it knows the mutation `id` of `table`, and how many of the table's
/// mutations it has not done yet.
pub fn mutations_known_and_pending(table: &str, id: &str) -> Sql {
    let mut sql = Sql::new("SELECT toUInt64(countIf(mutation_id = ");
    sql.arg(id);
    sql.push(
        ") > 0), countIf(is_done = 0) FROM system.mutations \
         WHERE database = currentDatabase() AND table = ",
    );
    sql.arg(table);
    sql
}

/// The changes (sql/0011) recorded at or after `since_s` (server seconds) for the customers of
/// `hours`: tenant, customer, the batches (none or 0: anyone's change).
pub fn recent_changes_of(since_s: u32, hours: &[MeterHour]) -> Sql {
    let mut sql = Sql::new(
        "SELECT tenant, customer, batches FROM usage_change_batches ARRAY JOIN customers AS customer \
         WHERE at >= toDateTime(",
    );
    sql.arg(since_s).push(") AND (tenant, customer) IN (");
    customers_in(&mut sql, hours);
    sql.push(")");
    sql
}

fn customers_in(sql: &mut Sql, hours: &[MeterHour]) {
    let pairs = hours
        .iter()
        .map(|(tenant, _, customer, _)| (tenant, customer));
    pairs_in(sql, pairs);
}

/// `(tenant, customer), ...` of `pairs`.
fn pairs_in<'a>(sql: &mut Sql, pairs: impl Iterator<Item = (&'a String, &'a String)>) {
    let tuples = pairs.map(|(tenant, customer)| tuple(&[Val::Str(tenant), Val::Str(customer)]));
    sql.join(tuples, ", ");
}

/// The hours (tenant, meter, customer, hour in epoch seconds) of the customers of `hours` that
/// `batch_ids` wrote, in `events` or (a backfill) in `usage_samples`.
pub fn hours_of_batches(hours: &[MeterHour], batch_ids: &[u64]) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT tenant, meter, customer, hour FROM (\
         SELECT tenant, s_meter AS meter, customer, toUInt32(intDiv(toUInt32(ts), 3600) * 3600) AS hour \
         FROM events ARRAY JOIN sample_meter AS s_meter WHERE (tenant, customer) IN (",
    );
    customers_in(&mut sql, hours);
    sql.push(") AND has(")
        .arg(batch_ids)
        .push(
            ", batch_id) UNION ALL SELECT tenant, meter, customer, \
             toUInt32(intDiv(toUInt32(ts), 3600) * 3600) AS hour FROM usage_samples WHERE (tenant, customer) IN (",
        );
    customers_in(&mut sql, hours);
    sql.push(") AND has(").arg(batch_ids).push(", batch_id))");
    sql
}

/// Unmarks `hours`, of the marks made before `before_ms` (server clock): a mark made since
/// (an in-doubt batch settled meanwhile) stays.
pub fn unmark_dirty_hours(hours: &[MeterHour], before_ms: i64) -> Sql {
    let mut sql = Sql::new("ALTER TABLE rollup_dirty DELETE WHERE ");
    hours_in(&mut sql, hours);
    sql.push(" AND marked_ms < ").arg(before_ms);
    sql
}

/// Whether any hour is marked (a cheap check before looking hours up per query).
pub const ANY_DIRTY_HOURS: &str = "SELECT count() FROM rollup_dirty";

/// The marked hours (epoch ms) of `meter` in `[from_s, to_s)` (epoch seconds), for one
/// customer or all.
pub fn dirty_hours(
    tenant: &str,
    meter: &str,
    (from_s, to_s): (i64, i64),
    customer: Option<&str>,
) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT toInt64(toUInt32(bucket)) * 1000 FROM rollup_dirty WHERE tenant = ",
    );
    sql.arg(tenant)
        .push(" AND meter = ")
        .arg(meter)
        .push(" AND bucket >= toDateTime(")
        .arg(from_s)
        .push(") AND bucket < toDateTime(")
        .arg(to_s)
        .push(")");
    if let Some(customer) = customer {
        sql.push(" AND customer = ").arg(customer);
    }
    sql
}

/// The end (epoch seconds) of the sealed days of the day grain (sql/0015); 0 before the first.
pub const DAYS_SEALED_UNTIL: &str = "SELECT toUInt32(max(until)) FROM rollup_days_sealed";

/// Where the day grain started (epoch seconds): the first horizon recorded; 0 before it.
pub const DAYS_SEALED_FROM: &str = "SELECT toUInt32(min(until)) FROM rollup_days_sealed";

/// The first hour (epoch seconds) of the hour rollup; 0 when it is empty.
pub const FIRST_ROLLUP_HOUR: &str = "SELECT toUInt32(min(bucket)) FROM usage_rollup_hour";

/// Whether any customer's sealed day is re-opened.
pub const ANY_REOPENED_DAYS: &str = "SELECT count() FROM rollup_days_reopened";

/// The day grain's rows (the day of `bucket`, UTC) from the hour rollup's rows that `filter`
/// selects, at `version`.
fn days_from_hours(version: u64, filter: Sql) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO usage_rollup_day (tenant, meter, customer, group_keys, group_values, bucket, \
         sum_value, samples, min_value, max_value, distinct_values, latest_value, version) \
         SELECT tenant, meter, customer, group_keys, group_values, \
         toDateTime(intDiv(toUInt32(bucket), 86400) * 86400) AS day, sumMergeState(sum_value), \
         countMergeState(samples), minMergeState(min_value), maxMergeState(max_value), \
         uniqExactMergeState(distinct_values), argMaxMergeState(latest_value), ",
    );
    sql.arg(version)
        .push(" FROM usage_rollup_hour WHERE ")
        .append(filter)
        .push(" GROUP BY tenant, meter, customer, group_keys, group_values, day");
    sql
}

/// Writes the day grain of the UTC day starting at `day_s` (epoch seconds), every customer's.
pub fn seal_day(day_s: u32, version: u64) -> Sql {
    days_from_hours(version, times("bucket", day_s, day_s + 86_400))
}

/// Rows of the day grain of the day starting at `day_s` (left by a seal that was interrupted).
pub fn rows_of_day(day_s: u32) -> Sql {
    let mut sql = Sql::new("SELECT count() FROM usage_rollup_day WHERE bucket = toDateTime(");
    sql.arg(day_s).push(")");
    sql
}

/// Rows of the day grain a maintenance round wrote (its `version`).
pub fn rows_of_version(version: u64) -> Sql {
    let mut sql = Sql::new("SELECT count() FROM usage_rollup_day WHERE version = ");
    sql.arg(version);
    sql
}

/// Deletes the day grain's rows of the day starting at `day_s` (a mutation).
pub fn delete_day(day_s: u32) -> Sql {
    let mut sql = Sql::new("ALTER TABLE usage_rollup_day DELETE WHERE bucket = toDateTime(");
    sql.arg(day_s).push(")");
    sql
}

/// Clears the re-opening marks of the days in `[from_s, to_s)` made before `before_s`: a seal
/// of those days just took their events.
pub fn unmark_sealed_days(from_s: u32, to_s: u32, before_s: u32) -> Sql {
    let mut sql = Sql::new("ALTER TABLE rollup_days_reopened DELETE WHERE ");
    sql.append(times("day", from_s, to_s))
        .push(" AND at < ")
        .append(time(before_s));
    sql
}

/// Re-opens the days (of the day starting at `day_s`) of customers with hours marked in
/// `rollup_dirty`: the day grain cannot be written right from them.
pub fn reopen_dirty_days(day_s: u32) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO rollup_days_reopened (tenant, customer, day, at) \
         SELECT DISTINCT tenant, customer, toDateTime(intDiv(toUInt32(bucket), 86400) * 86400), now() \
         FROM rollup_dirty WHERE ",
    );
    sql.append(times("bucket", day_s, day_s + 86_400));
    sql
}

/// Records the days before `until_s` sealed.
pub fn days_sealed(until_s: u32) -> Sql {
    let mut sql = Sql::new("INSERT INTO rollup_days_sealed (until, at) SELECT toDateTime(");
    sql.arg(until_s).push("), now()");
    sql
}

/// One customer's day: tenant, customer, day (epoch seconds).
pub type CustomerDay = (String, String, u32);

/// Up to `limit` re-opened days before `sealed_until_s` with marks made before `before_s`
/// (server clock).
pub fn reopened_days_before(before_s: u32, sealed_until_s: u32, limit: u64) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT tenant, customer, toUInt32(day) FROM rollup_days_reopened WHERE at < ",
    );
    sql.append(time(before_s))
        .push(" AND day < ")
        .append(time(sealed_until_s))
        .push(" LIMIT ")
        .arg(limit);
    sql
}

/// The days (tenant, customer, day in epoch seconds) of the customers of `days` with hours
/// marked in `rollup_dirty`.
pub fn dirty_days_of(days: &[CustomerDay]) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT tenant, customer, toUInt32(intDiv(toUInt32(bucket), 86400) * 86400) \
         FROM rollup_dirty WHERE (tenant, customer) IN (",
    );
    pairs_in(
        &mut sql,
        days.iter().map(|(tenant, customer, _)| (tenant, customer)),
    );
    sql.push(")");
    sql
}

/// `(tenant, customer, bucket) IN (...)` over `days`.
fn customer_days_in(sql: &mut Sql, days: &[CustomerDay], column: &str) {
    let days = days.iter().map(|(tenant, customer, day)| {
        tuple(&[Val::Str(tenant), Val::Str(customer), Val::Time(*day)])
    });
    sql.push("(tenant, customer, ")
        .push(column)
        .push(") IN (")
        .join(days, ", ")
        .push(")");
}

/// Deletes the day grain's rows of `days` (a mutation: it touches the parts that exist now).
pub fn delete_customer_days(days: &[CustomerDay]) -> Sql {
    let mut sql = Sql::new("ALTER TABLE usage_rollup_day DELETE WHERE ");
    customer_days_in(&mut sql, days, "bucket");
    sql
}

/// Rows of the day grain of `days` written before `version` (the deletion's left-overs).
pub fn older_rows_of_days(days: &[CustomerDay], version: u64) -> Sql {
    let mut sql = Sql::new("SELECT count() FROM usage_rollup_day WHERE version < ");
    sql.arg(version).push(" AND ");
    customer_days_in(&mut sql, days, "bucket");
    sql
}

/// Rows of the weighted grain (sql/0019) of `days` written at `version` or later.
pub fn weighted_rows_of_days(days: &[CustomerDay], version: u64) -> Sql {
    let mut sql = Sql::new("SELECT count() FROM usage_weighted_hour WHERE version >= ");
    sql.arg(version).push(" AND ");
    customer_days_in(
        &mut sql,
        days,
        "toDateTime(intDiv(toUInt32(bucket), 86400) * 86400)",
    );
    sql
}

/// Writes the day grain of `days` again, at `version`.
pub fn reseal_days(days: &[CustomerDay], version: u64) -> Sql {
    let mut filter = Sql::new("");
    filter.join(
        days.iter().map(|(tenant, customer, day)| {
            let bounds = (time(*day), time(*day + 86_400));
            range_of((tenant, customer, None), "bucket", bounds)
        }),
        " OR ",
    );
    days_from_hours(version, filter)
}

/// Clears the marks of `days` made before `before_s` (server clock).
pub fn unmark_reopened_days(days: &[CustomerDay], before_s: u32) -> Sql {
    let mut sql = Sql::new("ALTER TABLE rollup_days_reopened DELETE WHERE ");
    customer_days_in(&mut sql, days, "day");
    sql.push(" AND at < ").append(time(before_s));
    sql
}

/// Re-opens the days of `hours` (their day grain was written from hours since rebuilt).
pub fn reopen_days_of(hours: &[MeterHour]) -> Sql {
    let mut sql = Sql::new("INSERT INTO rollup_days_reopened (tenant, customer, day, at) VALUES ");
    let rows = hours.iter().map(|(tenant, _, customer, hour)| {
        let day = Val::Time(hour - hour % 86_400);
        tuple(&[Val::Str(tenant), Val::Str(customer), day, Val::Raw("now()")])
    });
    sql.join(rows, ", ");
    sql
}

/// The re-opened days (epoch ms) of `[from_s, to_s)` (epoch seconds), for one customer or
/// any of the tenant's.
pub fn reopened_days(tenant: &str, customer: Option<&str>, (from_s, to_s): (i64, i64)) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT toInt64(toUInt32(day)) * 1000 FROM rollup_days_reopened WHERE tenant = ",
    );
    sql.arg(tenant);
    if let Some(customer) = customer {
        sql.push(" AND customer = ").arg(customer);
    }
    sql.push(" AND day >= toDateTime(")
        .arg(from_s)
        .push(") AND day < toDateTime(")
        .arg(to_s)
        .push(")");
    sql
}

/// Catalog documents written after `version`, oldest first.
pub fn catalog_since(version: u64) -> Sql {
    let mut sql =
        Sql::new("SELECT tenant, kind, key, body, version FROM catalog FINAL WHERE version > ");
    sql.arg(version).push(" ORDER BY version");
    sql
}

/// Ids of events that have a sample of `meter` in `[from_ms, to_ms)`.
pub fn sampled_event_ids(tenant: &str, meter: &str, from_ms: i64, to_ms: i64) -> Sql {
    let mut sql = Sql::new("SELECT event_id FROM usage_samples WHERE tenant = ");
    sql.arg(tenant)
        .push(" AND meter = ")
        .arg(meter)
        .push(" AND ts_ms >= ")
        .arg(from_ms)
        .push(" AND ts_ms < ")
        .arg(to_ms);
    sql
}

/// Events of `event_type` in `[from_ms, to_ms)`, for a backfill.
pub fn events_of_type(tenant: &str, event_type: &str, from_ms: i64, to_ms: i64) -> Sql {
    let mut sql = Sql::new("SELECT id, customer, ts_ms, properties FROM events WHERE tenant = ");
    sql.arg(tenant)
        .push(" AND event_type = ")
        .arg(event_type)
        .push(" AND ts_ms >= ")
        .arg(from_ms)
        .push(" AND ts_ms < ")
        .arg(to_ms);
    sql
}

/// Every stored API key digest, latest version of each.
pub const STORED_KEYS: &str =
    "SELECT key_hash, tenant, role, customer, name, created_at, version FROM api_keys FINAL";

/// The digests of every revoked API key.
pub const REVOKED_KEYS: &str = "SELECT DISTINCT key_hash FROM api_key_revocations";

/// The dashboards' signing secrets (hex), oldest first.
pub const DASHBOARD_SECRETS: &str =
    "SELECT secret FROM dashboard_secrets FINAL ORDER BY created_ms, secret";

/// A tenant's events per hour of event time in `[from_s, to_s)`: `(hour, events)`, the hour's
/// start in epoch seconds; hours without events left out.
pub fn events_per_hour(tenant: &str, from_s: i64, to_s: i64) -> Sql {
    let mut sql = Sql::new(
        "SELECT toInt64(toUnixTimestamp(toStartOfHour(ts))) AS hour, count() AS events \
         FROM events WHERE tenant = ",
    );
    sql.arg(tenant)
        .push(" AND ts >= toDateTime(")
        .arg(from_s)
        .push(") AND ts < toDateTime(")
        .arg(to_s)
        .push(") GROUP BY hour ORDER BY hour");
    sql
}

/// The server's clock (epoch seconds): the mark each poll of `usage_change_batches` reads from.
pub const SERVER_NOW: &str = "SELECT toUInt32(now())";

/// The last beat (server epoch seconds) of a process that kept accepted ids in its own memory,
/// 0 if none is recorded (beats are kept for yesterday and today).
pub const LAST_EMBEDDED_BEAT: &str =
    "SELECT toUInt32(max(beat)) FROM ingest_writer_beats WHERE mode = 'embedded'";

/// Customers (tenant, customer) whose usage changed at or after `since_s` (server epoch
/// seconds), except by `own` batches (this process's, being inserted or already added to the
/// usage it holds in memory).
pub fn usage_changed_since(since_s: u32, own: &[u64]) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT tenant, arrayJoin(customers) FROM usage_change_batches WHERE at >= toDateTime(",
    );
    sql.arg(since_s)
        .push(") AND NOT (notEmpty(batches) AND hasAll(")
        .arg(own)
        .push(", batches))");
    sql
}

/// Records the customers of `batch_ids` committed since `since_ms` as changed, as the view of
/// sql/0011 would have at insert; for in-doubt batches found in `events`.
pub fn mark_usage_changed(since_ms: i64, batch_ids: &[u64]) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO usage_change_batches (at, tenant, customers, batches) \
         SELECT now(), tenant, groupUniqArray(customer), groupUniqArray(batch_id) FROM events \
         PREWHERE ingested_ms >= ",
    );
    sql.arg(since_ms)
        .push(" WHERE has(")
        .arg(batch_ids)
        .push(", batch_id) AND length(sample_meter) > 0 GROUP BY tenant");
    sql
}

/// Stops every running statement whose query id matches `pattern` (SQL `LIKE`), and waits
/// until they have stopped: an insert that timed out on this side may still run on the server.
pub fn kill_queries(pattern: &str) -> Sql {
    let mut sql = Sql::new("KILL QUERY WHERE query_id LIKE ");
    sql.arg(pattern).push(" SYNC");
    sql
}

/// Records that `writer` (`mode`, on `host` as process `pid`) is alive now, by the server's
/// clock, with every batch it stamped before `settled_before_ms` (its own clock) settled.
pub fn writer_beat(writer: &str, mode: &str, host: &str, pid: u32, settled_before_ms: i64) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO ingest_writer_beats (writer, mode, host, pid, beat, settled_before_ms) SELECT ",
    );
    sql.arg(writer)
        .push(", ")
        .arg(mode)
        .push(", ")
        .arg(host)
        .push(", ")
        .arg(pid)
        .push(", now(), ")
        .arg(settled_before_ms);
    sql
}

/// The writers other than `writer` that beat within the last `seconds` (server clock): writer,
/// mode, host, pid. Also those of a release before sql/0014 that beat in `ingest_writers`
/// (a rolling restart).
pub fn live_writers(writer: &str, seconds: u32) -> Sql {
    let mut sql = Sql::new(
        "SELECT writer, any(mode), any(host), any(pid) FROM (\
         SELECT writer, mode, host, pid, beat FROM ingest_writer_beats UNION ALL \
         SELECT writer, mode, host, pid, beat FROM ingest_writers) WHERE beat >= now() - ",
    );
    sql.arg(seconds)
        .push(" AND writer != ")
        .arg(writer)
        .push(" GROUP BY writer");
    sql
}

/// Writers other than `writer` that keep ids in their own memory and may have left batches
/// unsettled: writer, host, pid, seconds since the last beat (server clock), and the mark from
/// which their batches are to be settled.
pub fn unsettled_writers(writer: &str) -> Sql {
    let mut sql = Sql::new(
        "SELECT writer, any(host), any(pid), toUInt32(now() - max(beat)), max(settled_before_ms) \
         FROM ingest_writer_beats WHERE mode = 'embedded' AND writer != ",
    );
    sql.arg(writer)
        .push(" GROUP BY writer HAVING max(settled_before_ms) < 9223372036854775807");
    sql
}

/// Records that every batch of `writer` is settled, as of its last beat (so that it does not
/// look alive again).
pub fn writer_settled(writer: &str) -> Sql {
    let mut sql = Sql::new(
        "INSERT INTO ingest_writer_beats (writer, mode, host, pid, beat, settled_before_ms) \
         SELECT writer, any(mode), any(host), any(pid), max(beat), 9223372036854775807 \
         FROM ingest_writer_beats WHERE writer = ",
    );
    sql.arg(writer).push(" GROUP BY writer");
    sql
}

/// The batches committed (by the writer's clock) at or after `since_ms`.
pub fn batches_since(since_ms: i64) -> Sql {
    let mut sql = Sql::new("SELECT DISTINCT batch_id FROM events PREWHERE ingested_ms >= ");
    sql.arg(since_ms);
    sql
}

/// The days (partitions) of `table`, partitioned by day, before yesterday.
pub fn old_days(table: &str) -> Sql {
    let mut sql = Sql::new(
        "SELECT DISTINCT partition FROM system.parts WHERE database = currentDatabase() AND table = ",
    );
    sql.arg(table)
        .push(" AND active AND partition < toString(yesterday())");
    sql
}

/// Drops one day (as [`old_days`] names it) of `table`, one of meterhouse's own tables.
pub fn drop_day(table: &'static str, day: &str) -> Sql {
    let mut sql = Sql::new("ALTER TABLE ");
    sql.push(table).push(" DROP PARTITION ").arg(day);
    sql
}

/// Of `tenant`'s alert events `ids`, those that have fired: recorded, or with deliveries
/// (stored before the firing).
pub fn fired_among(tenant: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::new("SELECT DISTINCT id FROM (");
    for (i, table) in ["alert_firings", "webhook_deliveries"].iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("SELECT id FROM ")
            .push(table)
            .push(" WHERE tenant = ")
            .arg(tenant)
            .push(" AND has(")
            .arg(ids)
            .push(", id)");
    }
    sql.push(")");
    sql
}

/// The latest state of each webhook delivery, written in `inner` (the columns, `FROM` and any
/// `WHERE`).
fn latest_deliveries(inner: Sql) -> Sql {
    let mut sql = Sql::new(
        "SELECT tenant, id, endpoint, type, payload, created_ms, state, attempts, \
         next_attempt_ms, last_status, last_error, version FROM webhook_deliveries",
    );
    sql.append(inner)
        .push(" ORDER BY version DESC LIMIT 1 BY tenant, id, endpoint");
    sql
}

/// The latest state of `tenant`'s deliveries, of event `id` and endpoint `endpoint` where given,
/// newest first, at most `limit`.
pub fn deliveries_of(tenant: &str, id: Option<&str>, endpoint: Option<&str>, limit: u64) -> Sql {
    let mut filter = Sql::new(" WHERE tenant = ");
    filter.arg(tenant);
    if let Some(id) = id {
        filter.push(" AND id = ").arg(id);
    }
    if let Some(endpoint) = endpoint {
        filter.push(" AND endpoint = ").arg(endpoint);
    }
    let mut sql = Sql::new("SELECT * FROM (");
    sql.append(latest_deliveries(filter))
        .push(") ORDER BY created_ms DESC, id, endpoint LIMIT ")
        .arg(limit);
    sql
}

/// Deliveries of every tenant waiting for an attempt due by `now_ms`, soonest first; those
/// never attempted only once made before `new_before_ms` (the process that makes one sends it).
/// Only states written for deliveries made (or retried) in the last week are read: retries
/// stop a day after, so what is older is over, or waited through a week-long outage.
pub fn due_deliveries(now_ms: i64, new_before_ms: i64, limit: u64) -> Sql {
    let mut recent = Sql::new(" WHERE created_ms >= ");
    recent.arg(now_ms - 7 * 86_400_000);
    let mut sql = Sql::new("SELECT * FROM (");
    sql.append(latest_deliveries(recent))
        .push(") WHERE state = 'pending' AND next_attempt_ms <= ")
        .arg(now_ms)
        .push(" AND (attempts > 0 OR created_ms < ")
        .arg(new_before_ms)
        .push(")")
        .push(" ORDER BY next_attempt_ms LIMIT ")
        .arg(limit);
    sql
}

/// The attempts of `tenant`'s deliveries of events `ids`, in order.
pub fn attempts_of(tenant: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::new(
        "SELECT tenant, id, endpoint, attempt, at_ms, status, error, duration_ms \
         FROM webhook_attempts WHERE tenant = ",
    );
    sql.arg(tenant)
        .push(" AND has(")
        .arg(ids)
        .push(", id) ORDER BY id, endpoint, attempt");
    sql
}
