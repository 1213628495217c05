-- One row per (event x matching meter): the input of every usage figure.
-- value: the sample's quantity (1 for count and unique_count); value_str: the distinct key
-- for unique_count; group_keys/group_values: the meter's and its prices' group_by properties.
-- batch_id ties a sample to its insert, so a batch can be checked (and repaired) as a whole.
CREATE TABLE IF NOT EXISTS meter_samples
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
ORDER BY (tenant, meter, customer, ts_ms);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_meter_samples TO meter_samples AS
SELECT
    tenant,
    s_meter AS meter,
    customer,
    s_group_keys AS group_keys,
    s_group_values AS group_values,
    ts_ms,
    ts,
    s_value AS value,
    s_value_str AS value_str,
    id AS event_id,
    ingested_ms,
    batch_id
FROM events
ARRAY JOIN
    sample_meter AS s_meter,
    sample_value AS s_value,
    sample_value_str AS s_value_str,
    sample_group_keys AS s_group_keys,
    sample_group_values AS s_group_values;
