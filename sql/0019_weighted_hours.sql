-- The grain of `weighted_sum` meters: per customer, series (the values of the meter's
-- `group_by`, named in series_keys) and UTC hour (span_s 3600), and again per UTC day (span_s
-- 86400), what the samples inside the span contribute (each holds until the next sample of its
-- series in the span, or the span's end), per group of the samples' own group values, with the
-- span's first sample time and its last sample (the value carried out). Reads take whole days
-- from the day rows, and the hours of days a window cuts from the hour rows. Written off the ingest path from usage_samples (src/store/weighted_grain.rs)
-- for the days the day grain has sealed; a re-opened day is read from the samples until written
-- again. Rows of a (customer, series, span) written again carry a greater version; readers keep
-- the greatest. Integrals are exact decimals in value × ms, kept as text.
CREATE TABLE IF NOT EXISTS usage_weighted_hour
(
    tenant String,
    meter String,
    customer String,
    series_keys Array(String),
    series Array(String),
    bucket DateTime,
    span_s UInt32,
    part_keys Array(Array(String)),
    part_values Array(Array(String)),
    part_value_ms Array(String),
    part_samples Array(UInt64),
    first_ms Int64,
    last_ms Int64,
    last_value String,
    last_keys Array(String),
    last_values Array(String),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, customer, meter, series_keys, span_s, bucket, series)
SETTINGS index_granularity = 256;

-- Which sealed days of a weighted meter (with series_keys) usage_weighted_hour holds: every
-- UTC day in [since, until). A meter whose group_by changes starts a new record.
CREATE TABLE IF NOT EXISTS weighted_grain
(
    tenant String,
    meter String,
    series_keys Array(String),
    since DateTime,
    until DateTime,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, meter);
