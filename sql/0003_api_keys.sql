-- API keys created through POST /v1/api-keys. Only a SHA-256 of the key is stored.
CREATE TABLE IF NOT EXISTS api_keys
(
    key_hash String,
    tenant String,
    role String,
    customer String,
    name String,
    created_at DateTime,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_hash;
