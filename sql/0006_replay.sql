-- Replay: a table with the shape of events that stores nothing (Null engine) but feeds the
-- same views into meter_samples and the rollups. `meterhouse backfill` writes the samples of a
-- meter created after its events arrived here, so they reach every derived table exactly as
-- ingest would have written them, while events stays as received.
CREATE TABLE IF NOT EXISTS events_replay AS events ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_meter_samples TO meter_samples AS
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
FROM events_replay
ARRAY JOIN
    sample_meter AS s_meter,
    sample_value AS s_value,
    sample_value_str AS s_value_str,
    sample_group_keys AS s_group_keys,
    sample_group_values AS s_group_values;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_rollup_hour TO meter_rollup_hour AS
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
