//! Every statement the service sends besides migrations and inserts, in one place, so that a
//! test can run each on current ClickHouse (chDB) as well as on the 18.16 server of the suite.
//! `?` marks a bound value (bound client-side by the `clickhouse` crate, escaped).

/// The ledger of applied migrations.
pub const CREATE_MIGRATIONS_LEDGER: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version UInt32, name String, applied_at DateTime) \
     ENGINE = ReplacingMergeTree ORDER BY version";

pub const APPLIED_MIGRATIONS: &str = "SELECT DISTINCT version FROM schema_migrations";

/// Ids accepted since `?` (epoch ms), oldest first: the dedup state after a restart.
pub const ACCEPTED_SINCE: &str =
    "SELECT tenant, id, ingested_ms FROM events WHERE ingested_ms >= ? ORDER BY ingested_ms";

/// Of the batch ids `?` (an array), committed at or after `?` (epoch ms), those in `events`
/// with the number of samples each should have.
pub const LANDED_BATCHES: &str = "SELECT batch_id, toUInt64(sum(length(sample_meter))) \
     FROM events PREWHERE ingested_ms >= ? WHERE has(?, batch_id) GROUP BY batch_id";

/// The samples `usage_samples` holds for each of the batch ids `?` committed since `?`.
pub const BATCH_SAMPLES: &str = "SELECT batch_id, count() \
     FROM usage_samples PREWHERE ingested_ms >= ? WHERE has(?, batch_id) GROUP BY batch_id";

/// Re-derives the samples of batch `?` from `events`, exactly as the view
/// `events_to_usage_samples` (sql/0008) does at insert; for a batch whose insert stopped
/// between the two tables.
pub const REPAIR_BATCH_SAMPLES: &str = "INSERT INTO usage_samples \
     (tenant, meter, customer, group_keys, group_values, ts_ms, ts, value, value_str, event_id, ingested_ms, batch_id) \
     SELECT tenant, s_meter, customer, s_group_keys, s_group_values, ts_ms, ts, s_value, s_value_str, id, ingested_ms, batch_id \
     FROM events ARRAY JOIN sample_meter AS s_meter, sample_value AS s_value, sample_value_str AS s_value_str, \
     sample_group_keys AS s_group_keys, sample_group_values AS s_group_values \
     WHERE batch_id = ?";

/// Marks every (tenant, meter, customer, hour) of the batches `?` committed since `?` as read
/// from samples, not the rollup (sql/0007); `?` first is the marking time in epoch ms.
pub const MARK_DIRTY_HOURS: &str = "INSERT INTO rollup_dirty (tenant, meter, customer, bucket, marked_ms) \
     SELECT DISTINCT tenant, meter, customer, toDateTime(intDiv(toUInt32(ts), 3600) * 3600), toInt64(?) \
     FROM usage_samples PREWHERE ingested_ms >= ? WHERE has(?, batch_id)";

/// Whether any hour is marked (a cheap check before looking hours up per query).
pub const ANY_DIRTY_HOURS: &str = "SELECT count() FROM rollup_dirty";

/// The marked hours (epoch ms) of meter `?` of tenant `?` in `[?, ?)` (epoch seconds), for one
/// customer (the variant with `customer = ?`) or all.
pub const DIRTY_HOURS: &str = "SELECT DISTINCT toInt64(toUInt32(bucket)) * 1000 FROM rollup_dirty \
     WHERE tenant = ? AND meter = ? AND bucket >= toDateTime(?) AND bucket < toDateTime(?)";
pub const DIRTY_HOURS_OF_CUSTOMER: &str = "SELECT DISTINCT toInt64(toUInt32(bucket)) * 1000 FROM rollup_dirty \
     WHERE tenant = ? AND meter = ? AND bucket >= toDateTime(?) AND bucket < toDateTime(?) AND customer = ?";

/// Catalog documents written after version `?` (minus a margin for clock skew), oldest first.
pub const CATALOG_SINCE: &str =
    "SELECT tenant, kind, key, body, version FROM catalog FINAL WHERE version > ? ORDER BY version";

/// Ids of events that have a sample of meter `?` (tenant `?` first) in `[?, ?)` (epoch ms).
pub const SAMPLED_EVENT_IDS: &str = "SELECT event_id FROM usage_samples WHERE tenant = ? AND meter = ? AND ts_ms >= ? AND ts_ms < ?";

/// Events of tenant `?` and type `?` in `[?, ?)` (epoch ms), for a backfill.
pub const EVENTS_OF_TYPE: &str = "SELECT id, customer, ts_ms, properties FROM events \
     WHERE tenant = ? AND event_type = ? AND ts_ms >= ? AND ts_ms < ?";

/// Every stored API key digest, latest version of each.
pub const STORED_KEYS: &str =
    "SELECT key_hash, tenant, role, customer, name, created_at, version FROM api_keys FINAL";

/// The digests of every revoked API key.
pub const REVOKED_KEYS: &str = "SELECT DISTINCT key_hash FROM api_key_revocations";

/// The server's clock (epoch seconds): the mark each poll of `usage_change_batches` reads from.
pub const SERVER_NOW: &str = "SELECT toUInt32(now())";

/// Customers (tenant, customer) whose usage changed at or after `?` (server epoch seconds),
/// except by the batches `?` (an array: this process's own, being inserted or already added to
/// the usage it holds in memory).
pub const USAGE_CHANGED_SINCE: &str = "SELECT DISTINCT tenant, arrayJoin(customers) \
     FROM usage_change_batches WHERE at >= toDateTime(?) AND NOT (notEmpty(batches) AND hasAll(?, batches))";

/// Records the customers of the batches `?` committed since `?` as changed, as the view of
/// sql/0011 would have at insert; for in-doubt batches found in `events`.
pub const MARK_USAGE_CHANGED: &str = "INSERT INTO usage_change_batches (at, tenant, customers, batches) \
     SELECT now(), tenant, groupUniqArray(customer), groupUniqArray(batch_id) FROM events \
     PREWHERE ingested_ms >= ? WHERE has(?, batch_id) AND length(sample_meter) > 0 GROUP BY tenant";

/// The days of `usage_change_batches` before yesterday (no reader looks that far back).
pub const OLD_USAGE_CHANGE_DAYS: &str = "SELECT DISTINCT partition FROM system.parts \
     WHERE database = currentDatabase() AND table = 'usage_change_batches' AND active \
     AND partition < toString(yesterday())";

/// Drops one day (`?`, as `OLD_USAGE_CHANGE_DAYS` names it) of `usage_change_batches`.
pub const DROP_USAGE_CHANGE_DAY: &str = "ALTER TABLE usage_change_batches DROP PARTITION ?";
