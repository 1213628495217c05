-- Period-to-date states: a customer's usage from the start of a read window (a billing
-- period's start, to the millisecond) to the day grain's horizon, merged into one row per
-- meter and group, so that a current period reads one state per meter and group for its
-- closed days instead of a state per day and per hour (a distinct count's set of values is
-- costly to decode once per row). Written off the ingest path by the service
-- (src/readmodel/to_date.rs, src/store/to_date_sql.rs) from the parts it would read; a row
-- for the meters' set `meters` with meter '' says the set is complete (written in the same
-- insert, one block). Readers take it only if it was written at or after every day grain row
-- of the customer's days it covers (`built_ms` against the grain's `version`): a day
-- re-opened and written again makes the states older than it stale. Partitioned by the horizon's day number (days since 1970, whatever the server's
-- timezone), so that states of past horizons go by partition.
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
PARTITION BY intDiv(toUInt32(until), 86400)
ORDER BY (tenant, customer, meters, start_ms, until, meter, group_keys, group_values)
SETTINGS index_granularity = 8;
