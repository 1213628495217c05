-- The day grain: the hour rollup (usage_rollup_hour) compacted into UTC days, off the ingest
-- path, so that a month reads about thirty rows per meter and group instead of seven hundred.
-- A day is written once it is closed for good (sealed: rollup_days_sealed), from the hour
-- rollup, by the service's maintenance (src/store/days.rs). Events that arrive later for a
-- sealed day (late events, a backfill), or an hour of it repaired, re-open that customer's day
-- (rollup_days_reopened): readers take it from the hour rollup until it is written again (its
-- old rows deleted first, so that a day readers take from here has one set of rows; the version
-- only lets merges drop a duplicate left by an interrupted write). Small granules: rows carry
-- whole days' states, and a read touches a few dozen rows of one customer.
CREATE TABLE IF NOT EXISTS usage_rollup_day
(
    tenant String,
    meter String,
    customer String,
    group_keys Array(String),
    group_values Array(String),
    bucket DateTime,
    sum_value AggregateFunction(sum, Decimal(38, 12)),
    samples AggregateFunction(count),
    min_value AggregateFunction(min, Decimal(38, 12)),
    max_value AggregateFunction(max, Decimal(38, 12)),
    distinct_values AggregateFunction(uniqExact, String),
    latest_value AggregateFunction(argMax, Decimal(38, 12), Int64),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, customer, meter, bucket, group_keys, group_values)
SETTINGS index_granularity = 64;

-- Every UTC day before `until` is in usage_rollup_day (each row a step forward).
CREATE TABLE IF NOT EXISTS rollup_days_sealed
(
    until DateTime,
    at DateTime
)
ENGINE = MergeTree
ORDER BY until;

-- Customers' sealed days to be read from the hour rollup until written again, with when the
-- mark was made (server clock).
CREATE TABLE IF NOT EXISTS rollup_days_reopened
(
    tenant String,
    customer String,
    day DateTime,
    at DateTime
)
ENGINE = MergeTree
ORDER BY (tenant, customer, day);

-- Events of a day before yesterday (UTC) re-open it: days are sealed only once they are that
-- old, so an event of a sealed day is always caught here. Most blocks hold none.
CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_rollup_days_reopened TO rollup_days_reopened AS
SELECT tenant, customer, toDateTime(intDiv(toUInt32(ts), 86400) * 86400) AS day, now() AS at
FROM events
WHERE toUInt32(ts) < intDiv(toUInt32(now()), 86400) * 86400 - 86400 AND length(sample_meter) > 0
GROUP BY tenant, customer, day;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_rollup_days_reopened TO rollup_days_reopened AS
SELECT tenant, customer, toDateTime(intDiv(toUInt32(ts), 86400) * 86400) AS day, now() AS at
FROM events_replay
WHERE toUInt32(ts) < intDiv(toUInt32(now()), 86400) * 86400 - 86400 AND length(sample_meter) > 0
GROUP BY tenant, customer, day;
