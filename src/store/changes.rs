//! What changed in the store, for readers that keep answers: hours the rollup may lack
//! (`rollup_dirty`, sql/0007) and customers whose usage changed (`usage_change_batches`,
//! sql/0011).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::{Store, StoreError, queries};

/// Whether a table of marks (`rollup_dirty`, `rollup_days_reopened`) holds anything: usually
/// not, and then reads skip looking marks up. Looked at again at most a second after the last
/// look; set at once by this process's own marks, cleared once a look finds the table empty.
#[derive(Default)]
pub(super) struct Marks {
    any: AtomicBool,
    checked_ms: AtomicI64,
    /// This process's marks so far, under a lock: a look that ran while one was made does not
    /// clear `any`.
    marks: std::sync::Mutex<u64>,
}

impl Marks {
    pub(super) fn marked(&self) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        *marks += 1;
        self.any.store(true, Ordering::SeqCst);
    }

    /// Makes the next look query the table.
    pub(super) fn look_again(&self) {
        self.checked_ms.store(0, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        *self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the table may hold marks; `count` counts them.
    pub(super) async fn may_have(
        &self,
        client: &clickhouse::Client,
        count: &str,
    ) -> Result<bool, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        if now - self.checked_ms.load(Ordering::Relaxed) < 1_000 {
            return Ok(self.any.load(Ordering::SeqCst));
        }
        let before = self.count();
        let marked: u64 = client.query(count).fetch_one().await?;
        let any = {
            let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            // A mark of this process made meanwhile stands, whatever the look found.
            let any = marked > 0 || *marks != before;
            self.any.store(any, Ordering::SeqCst);
            any
        };
        self.checked_ms.store(now, Ordering::Relaxed);
        Ok(any)
    }
}

impl Store {
    /// Records that hours were just marked in `rollup_dirty`.
    pub fn dirty_hours_marked(&self) {
        self.dirty.marked();
    }

    /// Makes the next [`Store::may_have_dirty_hours`] look at the table again.
    pub(super) fn dirty_hours_looked_at(&self) {
        self.dirty.look_again();
    }

    /// Whether `rollup_dirty` may hold hours: without a query within a second of the last look
    /// (true at once after this process's own marks).
    pub async fn may_have_dirty_hours(&self) -> Result<bool, StoreError> {
        self.dirty
            .may_have(self.client(), queries::ANY_DIRTY_HOURS)
            .await
    }

    /// The hours (epoch ms) of `[from_ms, to_ms)` that readers must take from samples, for one
    /// customer or all (sql/0007). Empty, without a query, while nothing is marked.
    pub async fn dirty_hours(
        &self,
        tenant: &str,
        meter: &str,
        customer: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if !self.may_have_dirty_hours().await? {
            return Ok(vec![]);
        }
        let seconds = (from_ms.div_euclid(1000), to_ms.div_euclid(1000) + 1);
        let query = queries::dirty_hours(tenant, meter, seconds, customer).query(self.client());
        let mut hours: Vec<i64> = query.fetch_all().await?;
        hours.sort_unstable();
        Ok(hours)
    }

    /// The server's clock, epoch seconds: the mark each poll of the changes reads from.
    pub async fn server_now(&self) -> Result<u32, StoreError> {
        Ok(self.client().query(queries::SERVER_NOW).fetch_one().await?)
    }

    /// Customers (tenant, customer) whose usage changed at or after `since_s` (server
    /// seconds), except by the batches `own`.
    pub async fn usage_changed_since(
        &self,
        since_s: u32,
        own: &[u64],
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(queries::usage_changed_since(since_s, own)
            .query(self.client())
            .fetch_all()
            .await?)
    }

    /// Drops the days of `table` (partitioned by day, one of meterhouse's own) before
    /// yesterday: no reader looks that far back.
    pub async fn drop_days_before_yesterday(&self, table: &'static str) -> Result<(), StoreError> {
        let days: Vec<String> = queries::old_days(table)
            .query(self.client())
            .fetch_all()
            .await?;
        for day in days {
            queries::drop_day(table, &day)
                .query(self.client())
                .execute()
                .await?;
        }
        Ok(())
    }
}
