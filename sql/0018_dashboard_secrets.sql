-- The secrets that sign dashboard links and sessions. Every process signs with the oldest and
-- accepts any listed, so a link made by one replica opens on all of them. A process that
-- finds none adds one; replicas that race each add theirs and every one is accepted.
CREATE TABLE IF NOT EXISTS dashboard_secrets
(
    secret String,
    created_ms Int64
)
ENGINE = ReplacingMergeTree(created_ms)
ORDER BY secret;
