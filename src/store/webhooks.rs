//! Fired alerts and the webhook outbox (sql/0017): deliveries, each a row per state, and their
//! attempts.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, queries};

/// An alert that fired for one subscription and billing period.
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone)]
pub struct FiringRow {
    pub tenant: String,
    /// The id of its `alert.triggered` event.
    pub id: String,
    pub alert: String,
    pub subscription: String,
    pub period_from_ms: i64,
    pub payload: String,
    pub fired_ms: i64,
}

/// One event to one endpoint, in one of its states.
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub tenant: String,
    /// The event's id: the same on every attempt.
    pub id: String,
    pub endpoint: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The body sent, as JSON.
    pub payload: String,
    pub created_ms: i64,
    /// `pending`, `delivered`, `failed` or `cancelled`.
    pub state: String,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    /// HTTP status of the last attempt; 0: none, or no answer.
    pub last_status: u16,
    pub last_error: String,
    pub version: u64,
}

/// One attempt to send a delivery.
#[derive(clickhouse::Row, Serialize, Deserialize, Debug, Clone)]
pub struct AttemptRow {
    pub tenant: String,
    pub id: String,
    pub endpoint: String,
    pub attempt: u32,
    pub at_ms: i64,
    /// 0: no answer (see `error`).
    pub status: u16,
    pub error: String,
    pub duration_ms: u32,
}

/// An attempt as listed with its delivery (tenant known).
#[derive(clickhouse::Row, Deserialize, Debug, Clone)]
pub struct ListedAttempt {
    pub id: String,
    pub endpoint: String,
    pub attempt: u32,
    pub at_ms: i64,
    pub status: u16,
    pub error: String,
    pub duration_ms: u32,
}

impl Store {
    /// Of `tenant`'s alert events `ids`, those that have fired.
    pub async fn fired_among(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let fired: Vec<String> = queries::fired_among(tenant, ids)
            .query(self.client())
            .fetch_all()
            .await?;
        Ok(fired.into_iter().collect())
    }

    /// Records firings (after their deliveries).
    pub async fn insert_firings(&self, firings: &[FiringRow]) -> Result<(), StoreError> {
        if firings.is_empty() {
            return Ok(());
        }
        let mut insert = self.client().insert::<FiringRow>("alert_firings").await?;
        for firing in firings {
            insert.write(firing).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Writes deliveries' new states.
    pub async fn insert_deliveries(&self, rows: &[DeliveryRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client()
            .insert::<DeliveryRow>("webhook_deliveries")
            .await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Records attempts.
    pub async fn insert_attempts(&self, rows: &[AttemptRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client()
            .insert::<AttemptRow>("webhook_attempts")
            .await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// The latest state of `tenant`'s deliveries (of event `id`, to `endpoint`, where given),
    /// newest first.
    pub async fn deliveries(
        &self,
        tenant: &str,
        id: Option<&str>,
        endpoint: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(queries::deliveries_of(tenant, id, endpoint, limit)
            .query(self.client())
            .fetch_all()
            .await?)
    }

    /// Deliveries of every tenant due for an attempt by `now_ms` (never attempted ones only
    /// if made before `new_before_ms`).
    pub async fn due_deliveries(
        &self,
        now_ms: i64,
        new_before_ms: i64,
        limit: u64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(queries::due_deliveries(now_ms, new_before_ms, limit)
            .query(self.client())
            .fetch_all()
            .await?)
    }

    /// The attempts of `tenant`'s deliveries of events `ids`.
    pub async fn attempts(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<ListedAttempt>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        Ok(queries::attempts_of(tenant, ids)
            .query(self.client())
            .fetch_all()
            .await?)
    }
}
