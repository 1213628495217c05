-- Hours of the hour rollup that may be incomplete: a batch whose insert failed ambiguously
-- but landed in `events` may have stopped before the rollup's view ran (ClickHouse writes a
-- table and its views one after another, not atomically). Its samples are made complete when
-- it is settled (re-derived if missing), so readers take these hours from `meter_samples`
-- instead of the rollup. Rows are added only when an in-doubt batch is settled.
CREATE TABLE IF NOT EXISTS rollup_dirty
(
    tenant String,
    meter String,
    customer String,
    bucket DateTime,
    marked_ms Int64
)
ENGINE = ReplacingMergeTree(marked_ms)
ORDER BY (tenant, meter, customer, bucket);
