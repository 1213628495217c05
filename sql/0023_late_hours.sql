-- Hours of today and the three days before (UTC) that received an event an hour or more after
-- they ended, with when (server clock): period-to-date states (0022) may now reach an hour that
-- ended over an hour ago, past the day grain's horizon, and a read takes them only if they
-- were written five minutes or more after every such mark of the customer in their span
-- (src/store/to_date_sql.rs). Events of older days re-open their day (0015, 0020) instead.
-- An event a little late (the hour just ended) leaves no mark: states never reach that hour.
-- Most blocks hold none. Partitioned by the hour's day number (days since 1970, whatever the
-- server's timezone), so that maintenance drops past days' marks by partition.
CREATE TABLE IF NOT EXISTS rollup_hours_late
(
    tenant String,
    customer String,
    hour DateTime,
    at DateTime
)
ENGINE = MergeTree
PARTITION BY intDiv(toUInt32(hour), 86400)
ORDER BY (tenant, customer, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_rollup_hours_late TO rollup_hours_late AS
SELECT tenant, customer, toDateTime(intDiv(toUInt32(ts), 3600) * 3600) AS hour, now() AS at
FROM events
WHERE toUInt32(ts) < intDiv(toUInt32(now()), 3600) * 3600 - 3600
  AND toUInt32(ts) >= intDiv(toUInt32(now()), 86400) * 86400 - 3 * 86400
  AND length(sample_meter) > 0
GROUP BY tenant, customer, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_rollup_hours_late TO rollup_hours_late AS
SELECT tenant, customer, toDateTime(intDiv(toUInt32(ts), 3600) * 3600) AS hour, now() AS at
FROM events_replay
WHERE toUInt32(ts) < intDiv(toUInt32(now()), 3600) * 3600 - 3600
  AND toUInt32(ts) >= intDiv(toUInt32(now()), 86400) * 86400 - 3 * 86400
  AND length(sample_meter) > 0
GROUP BY tenant, customer, hour;

-- Period-to-date states again, partitioned by their horizon's hour number (hours since 1970)
-- instead of its day's: a subscription's states are now written once an hour, and maintenance
-- keeps those of the last hours and of the day grain's horizons only, dropping the others by
-- partition (src/store/to_date_sql.rs). States are derived: the old table's go, and reads
-- take the other path until they are written again.
DROP TABLE IF EXISTS usage_rollup_to_date;

CREATE TABLE IF NOT EXISTS usage_rollup_to_date
(
    tenant String,
    customer String,
    meters String,
    start_ms Int64,
    until DateTime,
    meter String,
    group_keys Array(String),
    group_values Array(String),
    sum_value AggregateFunction(sum, Decimal(38, 12)),
    samples AggregateFunction(count),
    min_value AggregateFunction(min, Decimal(38, 12)),
    max_value AggregateFunction(max, Decimal(38, 12)),
    distinct_values AggregateFunction(uniqExact, String),
    latest_value AggregateFunction(argMax, Decimal(38, 12), Int64),
    built_ms UInt64
)
ENGINE = ReplacingMergeTree(built_ms)
PARTITION BY intDiv(toUInt32(until), 3600)
ORDER BY (tenant, customer, meters, start_ms, until, meter, group_keys, group_values)
SETTINGS index_granularity = 8;
