-- Alerts that fired, and their webhook deliveries (a durable outbox every process sends from).
--
-- alert_firings: one row per (alert, subscription, billing period); `id` is the id of the
-- alert.triggered event, derived from those, so a second firing is the same row.
CREATE TABLE IF NOT EXISTS alert_firings
(
    tenant String,
    id String,
    alert String,
    subscription String,
    period_from_ms Int64,
    payload String,
    fired_ms Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, id);

-- webhook_deliveries: one event to one endpoint. Every change of its state is a new row with a
-- higher version (creation is version 0, so a repeated creation never undoes a later state);
-- readers take the row of the highest version. state: pending, delivered, failed (retries
-- exhausted after 24 hours) or cancelled (endpoint deleted).
CREATE TABLE IF NOT EXISTS webhook_deliveries
(
    tenant String,
    id String,
    endpoint String,
    type String,
    payload String,
    created_ms Int64,
    state String,
    attempts UInt32,
    next_attempt_ms Int64,
    last_status UInt16,
    last_error String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, id, endpoint);

-- webhook_attempts: every attempt and its outcome (status 0: no answer).
CREATE TABLE IF NOT EXISTS webhook_attempts
(
    tenant String,
    id String,
    endpoint String,
    attempt UInt32,
    at_ms Int64,
    status UInt16,
    error String,
    duration_ms UInt32
)
ENGINE = MergeTree
ORDER BY (tenant, id, endpoint, at_ms);
