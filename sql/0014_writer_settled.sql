-- ingest_writers (0013) again, with what each beat also says: up to when every batch the
-- writer stamped is settled (`settled_before_ms`, its own clock, epoch ms). Batches stamped from
-- then on may have been in flight or in doubt when it last beat. A process that starts after a
-- writer died (kill -9, a lost host) settles the dead writer's batches from that mark on: samples
-- completed, hours marked for the rollup's repair, the change recorded for every process's
-- answers. The greatest Int64 means nothing to settle: a clean stop, or a writer its successor
-- settled. A new table, since ClickHouse 18.16 cannot add a column only if it is missing;
-- `ingest_writers` stays, read (not written) for the beats of processes of an earlier release.
CREATE TABLE IF NOT EXISTS ingest_writer_beats
(
    writer String,
    mode String,
    host String,
    pid UInt32,
    beat DateTime,
    settled_before_ms Int64
)
ENGINE = ReplacingMergeTree(beat)
PARTITION BY toDate(beat)
ORDER BY writer;
