-- Whose usage changed, and when (server time): one row per tenant per inserted block that
-- carries samples, listing the block's customers. Every service process polls it and drops
-- the usage it holds in memory for those customers (src/store/usage_cache.rs), so that a
-- figure answered from memory never misses an event another process (or a backfill) wrote.
-- Only the last seconds are ever read; the service drops days before yesterday.
CREATE TABLE IF NOT EXISTS usage_changes
(
    at DateTime,
    tenant String,
    customers Array(String)
)
ENGINE = MergeTree
PARTITION BY toDate(at)
ORDER BY at;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_usage_changes TO usage_changes AS
SELECT now() AS at, tenant, groupUniqArray(customer) AS customers
FROM events
WHERE length(sample_meter) > 0
GROUP BY tenant;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_usage_changes TO usage_changes AS
SELECT now() AS at, tenant, groupUniqArray(customer) AS customers
FROM events_replay
WHERE length(sample_meter) > 0
GROUP BY tenant;
