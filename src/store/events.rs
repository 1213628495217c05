//! Inserts of event batches, each attempt under its own query id, so that an attempt whose
//! outcome is unknown here can be stopped on the server before anyone looks for its rows.

use std::time::Duration;

use super::rows::EventRow;
use super::{Store, StoreError, queries};

/// How long sending a batch may take, and then waiting for the server's answer: an attempt
/// that has not reached the server within [`SEND_TIMEOUT`] never does, and none lasts longer
/// than [`MAX_ATTEMPT`] on this side.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const END_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_ATTEMPT: Duration = Duration::from_secs(15);

impl Store {
    /// The query id of attempt `attempt` to insert batch `batch_id`.
    fn insert_query_id(&self, batch_id: u64, attempt: u32) -> String {
        format!("mh:{}:{batch_id:016x}:{attempt}", self.database())
    }

    /// The `LIKE` pattern of this database's insert query ids, followed by `rest`.
    pub(super) fn insert_pattern(&self, rest: &str) -> String {
        let database = self
            .database()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("mh:{database}:{rest}")
    }

    /// Inserts `rows`, attempt `attempt` of batch `batch_id`, in one statement.
    pub async fn insert_events(
        &self,
        rows: &[EventRow],
        batch_id: u64,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let mut insert = self
            .client()
            .insert::<EventRow>("events")
            .await?
            .with_setting("query_id", self.insert_query_id(batch_id, attempt))
            .with_timeouts(Some(SEND_TIMEOUT), Some(END_TIMEOUT));
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Stops every attempt to insert batch `batch_id` still running on the server, and waits
    /// for them to stop.
    pub async fn kill_inserts_of(&self, batch_id: u64) -> Result<(), StoreError> {
        let pattern = self.insert_pattern(&format!("{batch_id:016x}:%"));
        self.kill_queries(&pattern).await
    }

    /// Stops every insert of events into this database still running on the server.
    pub async fn kill_all_inserts(&self) -> Result<(), StoreError> {
        let pattern = self.insert_pattern("%");
        self.kill_queries(&pattern).await
    }

    pub(super) async fn kill_queries(&self, pattern: &str) -> Result<(), StoreError> {
        queries::kill_queries(pattern)
            .query(self.client())
            .execute()
            .await?;
        Ok(())
    }
}
