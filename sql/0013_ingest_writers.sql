-- The processes that ingest into this database, each with its dedup mode ('embedded': ids kept
-- in its own memory; 'shared': ids kept in Redis), beating every second by the server's clock.
-- A process refuses to start beside a live one when either keeps ids in its own memory: two
-- such processes would each accept the other's retries. Days before yesterday are dropped.
CREATE TABLE IF NOT EXISTS ingest_writers
(
    writer String,
    mode String,
    host String,
    pid UInt32,
    beat DateTime
)
ENGINE = ReplacingMergeTree(beat)
PARTITION BY toDate(beat)
ORDER BY writer;
