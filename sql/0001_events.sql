-- Raw events: every field as received; the audit trail and the source for backfills.
-- ts_ms keeps millisecond precision; ts (seconds) only drives partitioning.
-- ingested_ms records when the batch was committed, so a figure can be reproduced "as of" then.
-- sample_* hold the meter samples extracted at ingest (one element per matching meter); the
-- view in 0002 spreads them into meter_samples within the same insert.
CREATE TABLE IF NOT EXISTS events
(
    tenant String,
    id String,
    customer String,
    event_type String,
    ts_ms Int64,
    ts DateTime,
    properties String,
    ingested_ms Int64,
    ingested_at DateTime,
    batch_id UInt64,
    sample_meter Array(String),
    sample_value Array(Decimal(38, 12)),
    sample_value_str Array(String),
    sample_group_keys Array(Array(String)),
    sample_group_values Array(Array(String))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, customer, event_type, ts_ms);
