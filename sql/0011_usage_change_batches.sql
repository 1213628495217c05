-- usage_changes (0010) again, with the inserted block's batch ids: a process that has already
-- added its own batch to the usage it holds in memory (src/store/usage_cache.rs) skips that
-- batch's rows instead of dropping those customers' usage. Rows with no batch ids (written by
-- hand, or an id of 0) are treated as anyone's change.
CREATE TABLE IF NOT EXISTS usage_change_batches
(
    at DateTime,
    tenant String,
    customers Array(String),
    batches Array(UInt64)
)
ENGINE = MergeTree
PARTITION BY toDate(at)
ORDER BY at;

-- The new views first, the old ones after: no insert goes unrecorded in between.
CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_usage_change_batches TO usage_change_batches AS
SELECT now() AS at, tenant, groupUniqArray(customer) AS customers, groupUniqArray(batch_id) AS batches
FROM events
WHERE length(sample_meter) > 0
GROUP BY tenant;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_usage_change_batches TO usage_change_batches AS
SELECT now() AS at, tenant, groupUniqArray(customer) AS customers, groupUniqArray(batch_id) AS batches
FROM events_replay
WHERE length(sample_meter) > 0
GROUP BY tenant;

-- A process of an older release still polling usage_changes fails its polls from here on, and
-- a failed poll empties its cache: it answers from ClickHouse, never stale.
DROP TABLE IF EXISTS events_to_usage_changes;
DROP TABLE IF EXISTS replay_to_usage_changes;
DROP TABLE IF EXISTS usage_changes;
