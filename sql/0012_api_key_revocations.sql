-- API keys revoked through DELETE /v1/api-keys/{id}, by digest. Every process drops a key
-- listed here from the keys it accepts on its next refresh.
CREATE TABLE IF NOT EXISTS api_key_revocations
(
    key_hash String,
    tenant String,
    revoked_at DateTime
)
ENGINE = ReplacingMergeTree(revoked_at)
ORDER BY key_hash;
