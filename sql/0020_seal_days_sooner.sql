-- Days are sealed into the day grain an hour after they end instead of a day and an hour
-- (src/store/days.rs), so that a current period reads yesterday as one row per meter and group
-- rather than twenty-four. Events of any day before today (UTC) now re-open it: the views of
-- 0015 caught only days before yesterday. The new views are made before the old ones go, so
-- that no insert meanwhile misses both; a mark made twice is the same mark.
CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_rollup_days_late TO rollup_days_reopened AS
SELECT tenant, customer, toDateTime(intDiv(toUInt32(ts), 86400) * 86400) AS day, now() AS at
FROM events
WHERE toUInt32(ts) < intDiv(toUInt32(now()), 86400) * 86400 AND length(sample_meter) > 0
GROUP BY tenant, customer, day;

CREATE MATERIALIZED VIEW IF NOT EXISTS replay_to_rollup_days_late TO rollup_days_reopened AS
SELECT tenant, customer, toDateTime(intDiv(toUInt32(ts), 86400) * 86400) AS day, now() AS at
FROM events_replay
WHERE toUInt32(ts) < intDiv(toUInt32(now()), 86400) * 86400 AND length(sample_meter) > 0
GROUP BY tenant, customer, day;

DROP TABLE IF EXISTS events_to_rollup_days_reopened;

DROP TABLE IF EXISTS replay_to_rollup_days_reopened;
