//! The API keys' tables: stored keys (by digest; the key itself is shown once and never
//! kept) and revocations.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, queries};

#[derive(clickhouse::Row, Serialize, Deserialize)]
pub struct StoredKey {
    pub key_hash: String,
    pub tenant: String,
    pub role: String,
    pub customer: String,
    pub name: String,
    pub created_at: u32,
    pub version: u64,
}

#[derive(clickhouse::Row, Serialize)]
pub struct Revocation {
    pub key_hash: String,
    pub tenant: String,
    pub revoked_at: u32,
}

impl Store {
    /// Stores a key's row.
    pub async fn insert_key(&self, row: &StoredKey) -> Result<(), StoreError> {
        let mut insert = self.client().insert::<StoredKey>("api_keys").await?;
        insert.write(row).await?;
        insert.end().await?;
        Ok(())
    }

    /// Records a revocation.
    pub async fn insert_revocation(&self, row: &Revocation) -> Result<(), StoreError> {
        let mut insert = self
            .client()
            .insert::<Revocation>("api_key_revocations")
            .await?;
        insert.write(row).await?;
        insert.end().await?;
        Ok(())
    }

    /// Every stored key, latest version of each.
    pub async fn stored_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        Ok(self
            .client()
            .query(queries::STORED_KEYS)
            .fetch_all()
            .await?)
    }

    /// The digests (hex) of every revoked key.
    pub async fn revoked_keys(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client()
            .query(queries::REVOKED_KEYS)
            .fetch_all()
            .await?)
    }
}
