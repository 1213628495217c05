//! The dashboards' tables and reads: the secrets that sign links, and events per hour.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, queries};

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct SecretRow {
    secret: String,
    created_ms: i64,
}

/// Events of one hour (event time).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Deserialize)]
pub struct HourlyEvents {
    /// Start of the hour, epoch seconds.
    pub hour: i64,
    pub events: u64,
}

impl Store {
    /// Every stored signing secret (hex), oldest first.
    pub async fn dashboard_secrets(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client()
            .query(queries::DASHBOARD_SECRETS)
            .fetch_all()
            .await?)
    }

    /// Stores a new signing secret (hex).
    pub async fn insert_dashboard_secret(&self, secret: &str) -> Result<(), StoreError> {
        let mut insert = self
            .client()
            .insert::<SecretRow>("dashboard_secrets")
            .await?;
        insert
            .write(&SecretRow {
                secret: secret.to_owned(),
                created_ms: chrono::Utc::now().timestamp_millis(),
            })
            .await?;
        insert.end().await?;
        Ok(())
    }

    /// The tenant's events per hour of event time in `[from_s, to_s)`, hours without events
    /// left out; within the request's read budget.
    pub async fn events_per_hour(
        &self,
        tenant: &str,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<HourlyEvents>, StoreError> {
        let statement = queries::events_per_hour(tenant, from_s, to_s);
        let mut by_hour = std::collections::BTreeMap::new();
        // In cluster mode each shard counts its customers' events.
        for shard in self.shards() {
            for h in shard.read_rows::<HourlyEvents>(&statement).await? {
                *by_hour.entry(h.hour).or_insert(0) += h.events;
            }
        }
        Ok(by_hour
            .into_iter()
            .map(|(hour, events)| HourlyEvents { hour, events })
            .collect())
    }
}
