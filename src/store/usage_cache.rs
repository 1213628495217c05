//! Usage held in memory: the answers of [`usage_of_meters`] per customer and window, so that a
//! subscription read again (a dashboard, billing_state, an invoice preview) is answered without
//! ClickHouse until something is written for that customer.
//!
//! An answer is dropped when its customer's usage may have changed:
//! - at once, by this process's own batches (before their requests are acknowledged), so a
//!   client always reads its own writes;
//! - by polling `usage_changes` (sql/0010), which every insert with samples feeds through a
//!   view, whichever process or tool wrote it (other replicas, `backfill`, repairs of in-doubt
//!   batches). Other processes' events therefore show within one poll interval.
//!
//! A read that raced a change never stores its answer: each read takes a ticket (a sequence
//! number) before it queries, and an answer is only kept if its customer was not invalidated
//! since. A failed poll empties the cache, since changes may have been missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::usage::{MeterGroupUsage, usage_of_meters};
use super::{Store, StoreError, queries};
use crate::catalog::Aggregation;

/// How far before the last poll's server time each poll looks again. A change row may be
/// visible before the samples of its insert (views run one after another), or a process may
/// learn of marked hours up to a second late (`Store::may_have_dirty_hours`); a read in such a
/// gap may keep an answer that misses the change, and seeing the row again drops it. Also
/// covers servers' clocks in a cluster.
const POLL_OVERLAP_S: u32 = 10;

/// What a read asks: its window (epoch ms) and meters, in the caller's order.
type Question = (i64, i64, Vec<(String, Aggregation)>);

/// Answers per customer, at most `capacity` customers.
pub struct UsageCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every invalidation; tickets are its value when a read began.
    seq: u64,
    /// Every ticket below this is void (the whole cache was dropped after it was taken).
    cleared: u64,
    /// Bumped on every touch of a slot, to evict the least recently used.
    clock: u64,
    /// Per tenant, per customer.
    slots: HashMap<String, HashMap<String, Slot>>,
    /// Slots in all tenants.
    len: usize,
}

#[derive(Default)]
struct Slot {
    invalidated: u64,
    used: u64,
    answers: HashMap<Question, Arc<Vec<MeterGroupUsage>>>,
}

/// Taken before a read of ClickHouse; its answer is kept only if it is still valid.
pub struct Ticket(u64);

impl UsageCache {
    /// A cache of at most `capacity` customers' answers; 0 keeps nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored answer, or a ticket to store the one about to be read.
    fn lookup(
        &self,
        tenant: &str,
        customer: &str,
        question: &Question,
    ) -> Result<Arc<Vec<MeterGroupUsage>>, Ticket> {
        let mut inner = self.lock();
        let seq = inner.seq;
        let slot = inner.touch(tenant, customer);
        if let Some(answer) = slot.answers.get(question) {
            self.hits.fetch_add(1, Relaxed);
            return Ok(answer.clone());
        }
        self.misses.fetch_add(1, Relaxed);
        if inner.len > self.capacity {
            inner.evict(self.capacity);
        }
        Err(Ticket(seq))
    }

    /// Keeps `answer` unless the customer's usage changed since `ticket` was taken.
    fn store(
        &self,
        ticket: Ticket,
        tenant: &str,
        customer: &str,
        question: Question,
        answer: Arc<Vec<MeterGroupUsage>>,
    ) {
        let mut inner = self.lock();
        if ticket.0 < inner.cleared {
            return;
        }
        // No slot: evicted while the read ran; keep nothing rather than guess.
        if let Some(slot) = inner.slot(tenant, customer)
            && slot.invalidated <= ticket.0
        {
            slot.answers.insert(question, answer);
        }
    }

    /// Drops every answer of these customers (tenant, customer).
    pub fn invalidate<'a>(&self, customers: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        for (tenant, customer) in customers {
            if let Some(slot) = inner.slot(tenant, customer) {
                slot.invalidated = seq;
                slot.answers.clear();
            }
        }
    }

    /// Drops everything, and voids every read in flight.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.seq += 1;
        inner.cleared = inner.seq;
        inner.slots.clear();
        inner.len = 0;
    }

    /// Customers with a slot (answers or a read in flight).
    pub fn customers(&self) -> usize {
        self.lock().len
    }
}

impl Inner {
    fn slot(&mut self, tenant: &str, customer: &str) -> Option<&mut Slot> {
        self.slots.get_mut(tenant)?.get_mut(customer)
    }

    /// The customer's slot, created if missing, marked as the most recently used. A new slot
    /// counts as invalidated now: a read whose slot was evicted may have missed a change while
    /// no slot recorded it, so its older ticket must not store into this one.
    fn touch(&mut self, tenant: &str, customer: &str) -> &mut Slot {
        self.clock += 1;
        let (clock, seq) = (self.clock, self.seq);
        let len = &mut self.len;
        let slot = self
            .slots
            .entry(tenant.to_owned())
            .or_default()
            .entry(customer.to_owned())
            .or_insert_with(|| {
                *len += 1;
                Slot {
                    invalidated: seq,
                    ..Slot::default()
                }
            });
        slot.used = clock;
        slot
    }

    /// Drops the least recently used slots down to seven eighths of `capacity`.
    fn evict(&mut self, capacity: usize) {
        let keep = capacity - capacity / 8;
        let excess = self.len.saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut used: Vec<u64> = self
            .slots
            .values()
            .flat_map(|c| c.values().map(|s| s.used))
            .collect();
        let (_, &mut cutoff, _) = used.select_nth_unstable(excess - 1);
        for customers in self.slots.values_mut() {
            customers.retain(|_, s| s.used > cutoff);
        }
        self.slots.retain(|_, c| !c.is_empty());
        self.len = self.slots.values().map(HashMap::len).sum();
    }
}

/// [`usage_of_meters`] through the store's cache: the same answer, from memory when this
/// customer's usage has not changed since it was last read.
pub async fn cached_usage_of_meters(
    store: &Store,
    tenant: &str,
    customer: &str,
    bounds: (i64, i64),
    meters: &[(&str, Aggregation)],
) -> Result<Option<Arc<Vec<MeterGroupUsage>>>, StoreError> {
    let cache = store.usage_cache();
    if cache.capacity == 0 {
        return Ok(usage_of_meters(store, tenant, customer, bounds, meters)
            .await?
            .map(Arc::new));
    }
    let question: Question = (
        bounds.0,
        bounds.1,
        meters.iter().map(|&(m, a)| (m.to_owned(), a)).collect(),
    );
    let ticket = match cache.lookup(tenant, customer, &question) {
        Ok(answer) => return Ok(Some(answer)),
        Err(ticket) => ticket,
    };
    // `None` (hours marked for repair) is not kept: those reads go meter by meter.
    let Some(rows) = usage_of_meters(store, tenant, customer, bounds, meters).await? else {
        return Ok(None);
    };
    let answer = Arc::new(rows);
    cache.store(ticket, tenant, customer, question, answer.clone());
    Ok(Some(answer))
}

/// Drops the cached usage of customers whose usage changed, as `usage_changes` says, every
/// `every`; an hour apart, drops days of `usage_changes` before yesterday.
pub fn spawn_poll(store: Store, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut since: Option<u32> = None;
        let mut pruned_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match poll(&store, since).await {
                Ok(now) => since = Some(now),
                Err(e) => {
                    tracing::warn!(error = %e, "polling usage changes failed; cached usage dropped");
                    store.usage_cache().clear();
                }
            }
            if pruned_at.elapsed() >= Duration::from_secs(3600) {
                pruned_at = tokio::time::Instant::now();
                if let Err(e) = prune(&store).await {
                    tracing::warn!(error = %e, "dropping old usage changes failed");
                }
            }
        }
    })
}

/// Invalidates the customers changed since `since` (server seconds; everything cached is
/// dropped on the first poll); returns the server's time, taken before reading the changes.
pub async fn poll(store: &Store, since: Option<u32>) -> Result<u32, StoreError> {
    let client = store.client();
    let now: u32 = client.query(queries::SERVER_NOW).fetch_one().await?;
    let Some(since) = since else {
        // Nothing is known of what happened before the first poll.
        store.usage_cache().clear();
        return Ok(now);
    };
    let changed: Vec<(String, String)> = client
        .query(queries::USAGE_CHANGED_SINCE)
        .bind(since.saturating_sub(POLL_OVERLAP_S))
        .fetch_all()
        .await?;
    if !changed.is_empty() {
        store
            .usage_cache()
            .invalidate(changed.iter().map(|(t, c)| (t.as_str(), c.as_str())));
    }
    Ok(now)
}

/// Drops the days of `usage_changes` before yesterday.
pub async fn prune(store: &Store) -> Result<(), StoreError> {
    let days: Vec<String> = store
        .client()
        .query(queries::OLD_USAGE_CHANGE_DAYS)
        .fetch_all()
        .await?;
    for day in days {
        store
            .client()
            .query(queries::DROP_USAGE_CHANGE_DAY)
            .bind(&day)
            .execute()
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn answer(value: i64) -> Arc<Vec<MeterGroupUsage>> {
        Arc::new(vec![MeterGroupUsage {
            meter: "m".into(),
            keys: vec![],
            values: vec![],
            value: Decimal::from(value),
            count: 1,
        }])
    }

    fn question() -> Question {
        (0, 10, vec![("m".into(), Aggregation::Sum)])
    }

    fn value(cache: &UsageCache, customer: &str) -> Option<Decimal> {
        cache
            .lookup("t", customer, &question())
            .ok()
            .map(|a| a[0].value)
    }

    #[test]
    fn an_answer_is_kept_until_its_customer_changes() {
        let cache = UsageCache::new(10);
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        cache.store(ticket, "t", "c", question(), answer(5));
        assert_eq!(value(&cache, "c"), Some(Decimal::from(5)));
        cache.invalidate([("t", "other")]);
        assert_eq!(value(&cache, "c"), Some(Decimal::from(5)));
        cache.invalidate([("t", "c")]);
        assert_eq!(value(&cache, "c"), None);
        // Another tenant's customer of the same name is another customer.
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        cache.store(ticket, "t", "c", question(), answer(6));
        cache.invalidate([("u", "c")]);
        assert_eq!(value(&cache, "c"), Some(Decimal::from(6)));
    }

    #[test]
    fn a_read_that_raced_a_change_keeps_nothing() {
        let cache = UsageCache::new(10);
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        cache.invalidate([("t", "c")]);
        cache.store(ticket, "t", "c", question(), answer(5));
        assert_eq!(value(&cache, "c"), None);
        // A change to someone else does not void it.
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        cache.invalidate([("t", "d")]);
        cache.store(ticket, "t", "c", question(), answer(7));
        assert_eq!(value(&cache, "c"), Some(Decimal::from(7)));
        // Nor does a clear before the ticket; one after it does.
        cache.clear();
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        let late = cache.lookup("t", "e", &question()).unwrap_err();
        cache.clear();
        cache.store(ticket, "t", "c", question(), answer(8));
        cache.store(late, "t", "e", question(), answer(8));
        assert_eq!(value(&cache, "c"), None);
        assert_eq!(value(&cache, "e"), None);
    }

    #[test]
    fn the_least_recently_used_customers_go_first() {
        let cache = UsageCache::new(8);
        for i in 0..8 {
            let c = format!("c{i}");
            let ticket = cache.lookup("t", &c, &question()).unwrap_err();
            cache.store(ticket, "t", &c, question(), answer(i));
        }
        // c0 is read again, so c1 is now the oldest.
        assert!(value(&cache, "c0").is_some());
        let _ = cache.lookup("t", "c8", &question());
        assert_eq!(cache.customers(), 7);
        assert!(value(&cache, "c0").is_some());
        assert!(value(&cache, "c1").is_none());
        assert!(value(&cache, "c7").is_some());
    }

    #[test]
    fn a_read_whose_customer_was_evicted_and_changed_keeps_nothing() {
        let cache = UsageCache::new(8);
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        // Eight other customers read: c, the least recently used, is evicted.
        for i in 0..8 {
            let _ = cache.lookup("t", &format!("other{i}"), &question());
        }
        cache.invalidate([("t", "c")]);
        // Another read of c makes a new slot before the first read's answer arrives.
        let fresh = cache.lookup("t", "c", &question()).unwrap_err();
        cache.store(ticket, "t", "c", question(), answer(5));
        assert_eq!(value(&cache, "c"), None, "the answer may miss the change");
        cache.store(fresh, "t", "c", question(), answer(6));
        assert_eq!(value(&cache, "c"), Some(Decimal::from(6)));
    }

    #[test]
    fn a_cache_of_no_customers_keeps_nothing() {
        let cache = UsageCache::new(0);
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        cache.store(ticket, "t", "c", question(), answer(1));
        assert_eq!(value(&cache, "c"), None);
    }
}
