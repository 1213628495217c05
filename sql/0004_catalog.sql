-- The tenants' catalog: meters, plans, customers, subscriptions, one JSON document per key.
-- Every write is a new row with a higher version; readers keep the latest (FINAL, or the
-- service's in-memory cache, which polls for versions above the last it saw).
CREATE TABLE IF NOT EXISTS catalog
(
    tenant String,
    kind String,
    key String,
    body String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, kind, key);
