-- Samples and the hour rollup keyed by customer before meter: a subscription's usage reads every
-- meter of its plan from one range of each table, in one statement (see src/store/usage.rs),
-- instead of one range (and one statement) per price. Smaller granules (1,024 rows): a read
-- touches a few hundred rows, and reading a granule costs in proportion to its size.
-- The tables replace meter_samples and meter_rollup_hour (dropped by 0009 once this one is
-- recorded). Run it while no other process ingests: between the old views' removal and the new
-- views' creation, samples of other processes' inserts would be lost (the service runs
-- migrations at start-up, before it accepts events).
CREATE TABLE IF NOT EXISTS usage_samples
(
    tenant String,
    meter String,
    customer String,
    group_keys Array(String),
    group_values Array(String),
    ts_ms Int64,
    ts DateTime,
    value Decimal(38, 12),
    value_str String,
    event_id String,
    ingested_ms Int64,
    batch_id UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, customer, meter, ts_ms)
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS usage_rollup_hour
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
    latest_value AggregateFunction(argMax, Decimal(38, 12), Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, customer, meter, bucket, group_keys, group_values)
SETTINGS index_granularity = 1024;

-- The old tables stop growing first, so the copy below is complete.
DROP TABLE IF EXISTS events_to_meter_samples;
DROP TABLE IF EXISTS events_to_rollup_hour;
DROP TABLE IF EXISTS replay_to_meter_samples;
DROP TABLE IF EXISTS replay_to_rollup_hour;

-- Emptied first, so that running this file again after a failure copies everything once.
TRUNCATE TABLE IF EXISTS usage_samples;
TRUNCATE TABLE IF EXISTS usage_rollup_hour;

INSERT INTO usage_samples
SELECT tenant, meter, customer, group_keys, group_values, ts_ms, ts, value, value_str, event_id,
    ingested_ms, batch_id
FROM meter_samples;

INSERT INTO usage_rollup_hour
SELECT tenant, meter, customer, group_keys, group_values, bucket, sum_value, samples, min_value,
    max_value, distinct_values, latest_value
FROM meter_rollup_hour;

-- The views of 0002, 0005 and 0006 again, into the new tables. From events (ingest) and
-- events_replay (backfill); ClickHouse 18.16 does not cascade views, so each reads its source.
CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_usage_samples TO usage_samples AS
SELECT
    tenant, s_meter AS meter, customer, s_group_keys AS group_keys,
    s_group_values AS group_values, ts_ms, ts, s_value AS value, s_value_str AS value_str,
    id AS event_id, ingested_ms, batch_id
FROM events
ARRAY JOIN
    sample_meter AS s_meter,
    sample_value AS s_value,
    sample_value_str AS s_value_str,
    sample_group_keys AS s_group_keys,
    sample_group_values AS s_group_values;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_usage_rollup_hour TO usage_rollup_hour AS
SELECT
    tenant, s_meter AS meter, customer, s_group_keys AS group_keys, s_group_values AS group_values,
    toDateTime(intDiv(toUInt32(ts), 3600) * 3600) AS bucket,
    sumState(s_value) AS sum_value,
    countState() AS samples,
    minState(s_value) AS min_value,
    maxState(s_value) AS max_value,
    uniqExactState(s_value_str) AS distinct_values,
    argMaxState(s_value, ts_ms) AS latest_value
FROM events
ARRAY JOIN
    sample_meter AS s_meter,
    sample_value AS s_value,
    sample_value_str AS s_value_str,
    sample_group_keys AS s_group_keys,
    sample_group_values AS s_group_values
GROUP BY tenant, meter, customer, group_keys, group_values, bucket;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_usage_samples TO usage_samples AS
SELECT
    tenant, s_meter AS meter, customer, s_group_keys AS group_keys,
    s_group_values AS group_values, ts_ms, ts, s_value AS value, s_value_str AS value_str,
    id AS event_id, ingested_ms, batch_id
FROM events_replay
ARRAY JOIN
    sample_meter AS s_meter,
    sample_value AS s_value,
    sample_value_str AS s_value_str,
    sample_group_keys AS s_group_keys,
    sample_group_values AS s_group_values;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_usage_rollup_hour TO usage_rollup_hour AS
SELECT
    tenant, s_meter AS meter, customer, s_group_keys AS group_keys, s_group_values AS group_values,
    toDateTime(intDiv(toUInt32(ts), 3600) * 3600) AS bucket,
    sumState(s_value) AS sum_value,
    countState() AS samples,
    minState(s_value) AS min_value,
    maxState(s_value) AS max_value,
    uniqExactState(s_value_str) AS distinct_values,
    argMaxState(s_value, ts_ms) AS latest_value
FROM events_replay
ARRAY JOIN
    sample_meter AS s_meter,
    sample_value AS s_value,
    sample_value_str AS s_value_str,
    sample_group_keys AS s_group_keys,
    sample_group_values AS s_group_values
GROUP BY tenant, meter, customer, group_keys, group_values, bucket;
