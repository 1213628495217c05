//! The catalog's table: one versioned JSON document per (tenant, kind, key).

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, queries};

/// One version of one catalog document.
#[derive(clickhouse::Row, Serialize, Deserialize)]
pub struct CatalogRow {
    pub tenant: String,
    pub kind: String,
    pub key: String,
    pub body: String,
    /// The write time in microseconds; the highest version of a key is its document.
    pub version: u64,
}

impl Store {
    /// Stores `rows` in one insert.
    pub async fn insert_catalog_rows(&self, rows: &[CatalogRow]) -> Result<(), StoreError> {
        let mut insert = self.client().insert::<CatalogRow>("catalog").await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// The documents written after `version`, oldest first.
    pub async fn catalog_rows_since(&self, version: u64) -> Result<Vec<CatalogRow>, StoreError> {
        Ok(queries::catalog_since(version)
            .query(self.client())
            .fetch_all()
            .await?)
    }
}
