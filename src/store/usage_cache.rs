//! Usage held in memory: the answers of [`usage_of_meters`] per customer and window, so that a
//! subscription read again (a dashboard, billing_state, an invoice preview) is answered without
//! ClickHouse until something is written for that customer.
//!
//! This process's own batches are added to the answers it holds (`fold`), before their requests
//! are acknowledged: sums, counts, minima and maxima take the new samples, and so does a group
//! seen for the first time; an answer that cannot be updated exactly (a distinct count or a
//! latest value of a group it already has) is dropped. A client reads its own writes, and a
//! customer that keeps sending events through this process keeps being answered from memory.
//!
//! Every other change drops the answers of the customers it touches, by polling
//! `usage_change_batches` (sql/0011), which every insert with samples feeds through a view,
//! whichever process or tool wrote it (other replicas, `backfill`, repairs of in-doubt
//! batches); rows of the batches this process is inserting or has folded are skipped. Other
//! processes' events therefore show within one poll interval.
//!
//! A read that raced a change never stores its answer: each read takes a ticket (a sequence
//! number) before it queries, and an answer is only kept if its customer was not invalidated
//! since. A batch marks its customers before its insert (`begin_write`), so no answer read
//! while the insert ran is kept past it, and only answers kept before it began are folded:
//! none of them can contain the batch. A failed poll empties the cache, since changes may
//! have been missed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use super::usage::{MeterGroupUsage, usage_of_customers, usage_of_meters};
use super::{Store, StoreError, queries};
use crate::catalog::Aggregation;

/// How far before the last poll's server time each poll looks again. A change row may be
/// visible before the samples of its insert (views run one after another), or a process may
/// learn of marked hours up to a second late (`Store::may_have_dirty_hours`); a read in such a
/// gap may keep an answer that misses the change, and seeing the row again drops it. Also
/// covers servers' clocks in a cluster.
const POLL_OVERLAP_S: u32 = 10;

/// How long this process remembers its own batches, and how many at most: their rows in
/// `usage_change_batches` are read by the polls of the next seconds only. A batch forgotten
/// too early costs its customers' answers, nothing else.
const OWN_BATCHES_FOR: Duration = Duration::from_secs(60);
const OWN_BATCHES_MAX: usize = 4096;

/// What a read asks: its window (epoch ms) and meters, in the caller's order.
type Question = (i64, i64, Vec<(String, Aggregation)>);

/// One meter sample of a committed batch of this process.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub tenant: &'a str,
    pub customer: &'a str,
    pub meter: &'a str,
    pub ts_ms: i64,
    pub keys: &'a [String],
    pub values: &'a [String],
    pub value: Decimal,
}

/// Answers per customer, at most `capacity` customers.
pub struct UsageCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Answers loaded in bulk before their first read ([`load`]).
    pub loaded: AtomicU64,
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
    /// Batches this process is inserting or has folded, oldest first, with when each began.
    own: VecDeque<(Instant, u64)>,
}

#[derive(Default)]
struct Slot {
    invalidated: u64,
    used: u64,
    answers: HashMap<Question, Kept>,
}

/// An answer, and the ticket of the read that produced it.
struct Kept {
    ticket: u64,
    answer: Arc<Vec<MeterGroupUsage>>,
}

/// Taken before a read of ClickHouse; its answer is kept only if it is still valid.
pub struct Ticket(u64);

/// Taken before a batch of this process is inserted; see [`UsageCache::fold`].
pub struct Write {
    seq: u64,
    batch_id: u64,
}

impl UsageCache {
    /// A cache of at most `capacity` customers' answers; 0 keeps nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
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
        if let Some(kept) = slot.answers.get(question) {
            self.hits.fetch_add(1, Relaxed);
            return Ok(kept.answer.clone());
        }
        self.misses.fetch_add(1, Relaxed);
        if inner.len > self.capacity {
            inner.evict(self.capacity);
        }
        Err(Ticket(seq))
    }

    /// Keeps `answer` unless the customer's usage changed since `ticket` was taken; whether
    /// it was kept.
    fn store(
        &self,
        ticket: Ticket,
        tenant: &str,
        customer: &str,
        question: Question,
        answer: Arc<Vec<MeterGroupUsage>>,
    ) -> bool {
        let mut inner = self.lock();
        if ticket.0 < inner.cleared {
            return false;
        }
        // No slot: evicted while the read ran; keep nothing rather than guess.
        if let Some(slot) = inner.slot(tenant, customer)
            && slot.invalidated <= ticket.0
        {
            let ticket = ticket.0;
            slot.answers.insert(question, Kept { ticket, answer });
            return true;
        }
        false
    }

    /// Tickets to load the answers to these questions of customers that have none, while the
    /// cache has room: loading never evicts. One per customer: a statement answers per
    /// customer, so a second question of the same customer waits for another load.
    fn reserve<'c>(
        &self,
        tenant: &str,
        asked: impl IntoIterator<Item = (&'c str, Question)>,
    ) -> Vec<(&'c str, Question, Ticket)> {
        let room = self.capacity - self.capacity / 8;
        let mut inner = self.lock();
        let seq = inner.seq;
        let mut tickets: Vec<(&str, Question, Ticket)> = Vec::new();
        let mut reserved = std::collections::HashSet::new();
        for (customer, question) in asked {
            if !reserved.insert(customer) {
                continue;
            }
            let len = inner.len;
            match inner.slot(tenant, customer) {
                Some(slot) if slot.answers.contains_key(&question) => continue,
                None if len >= room => continue,
                _ => {}
            }
            inner.touch(tenant, customer);
            tickets.push((customer, question, Ticket(seq)));
        }
        tickets
    }

    /// Marks the customers of batch `batch_id`, about to be inserted: no read in flight may
    /// keep its answer after this (it may or may not see the batch). From now on the polls
    /// skip the batch's rows in `usage_change_batches`: it is folded or abandoned.
    pub fn begin_write<'a>(
        &self,
        batch_id: u64,
        customers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Write {
        let mut inner = self.lock();
        let seq = inner.mark(customers, false);
        let now = Instant::now();
        inner.own.push_back((now, batch_id));
        while inner.own.len() > OWN_BATCHES_MAX
            || inner
                .own
                .front()
                .is_some_and(|(at, _)| now - *at > OWN_BATCHES_FOR)
        {
            inner.own.pop_front();
        }
        Write { seq, batch_id }
    }

    /// Adds the samples of the batch of `write`, now committed, to the answers of their
    /// customers kept before it began; drops the answers read meanwhile and those a sample
    /// cannot update exactly.
    pub fn fold<'a>(&self, write: Write, samples: impl IntoIterator<Item = Sample<'a>>) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        if inner.len == 0 {
            return;
        }
        for sample in samples {
            let Some(slot) = inner.slot(sample.tenant, sample.customer) else {
                continue;
            };
            if slot.invalidated < seq {
                // First sample of this customer in the batch.
                slot.invalidated = seq;
                slot.answers.retain(|_, kept| kept.ticket < write.seq);
            }
            slot.answers
                .retain(|question, kept| add(question, &mut kept.answer, &sample));
        }
    }

    /// The batch of `write` failed, and some of it may have landed: drops its customers'
    /// answers, and the polls no longer skip its rows.
    pub fn abandon<'a>(
        &self,
        write: Write,
        customers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut inner = self.lock();
        inner.mark(customers, true);
        inner.own.retain(|&(_, id)| id != write.batch_id);
    }

    /// The batches this process is inserting or has folded lately.
    pub fn own_batches(&self) -> Vec<u64> {
        self.lock().own.iter().map(|&(_, id)| id).collect()
    }

    /// Drops every answer of these customers (tenant, customer).
    pub fn invalidate<'a>(&self, customers: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.lock().mark(customers, true);
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

/// Adds `sample` to `answer` of `question`; false when it cannot be done exactly (the
/// answer must then be dropped).
fn add(question: &Question, answer: &mut Arc<Vec<MeterGroupUsage>>, sample: &Sample<'_>) -> bool {
    let (from, to, meters) = question;
    if sample.ts_ms < *from || sample.ts_ms >= *to {
        return true;
    }
    let Some(&(_, aggregation)) = meters.iter().find(|(m, _)| m == sample.meter) else {
        return true;
    };
    let value = sample.value.normalize();
    // Copied only if a reader still holds this answer.
    let answer = Arc::make_mut(answer);
    let row = answer
        .iter_mut()
        .find(|r| r.meter == sample.meter && r.keys == sample.keys && r.values == sample.values);
    let Some(row) = row else {
        answer.push(MeterGroupUsage {
            meter: sample.meter.to_owned(),
            keys: sample.keys.to_vec(),
            values: sample.values.to_vec(),
            value: match aggregation {
                Aggregation::Count | Aggregation::UniqueCount => Decimal::ONE,
                _ => value,
            },
            count: 1,
        });
        return true;
    };
    let merged = match aggregation {
        Aggregation::Count => row.value.checked_add(Decimal::ONE),
        Aggregation::Sum => row.value.checked_add(value),
        Aggregation::Min => Some(row.value.min(value)),
        Aggregation::Max => Some(row.value.max(value)),
        Aggregation::UniqueCount | Aggregation::Latest => None,
    };
    match (merged, row.count.checked_add(1)) {
        (Some(merged), Some(count)) => {
            row.value = merged.normalize();
            row.count = count;
            true
        }
        _ => false,
    }
}

impl Inner {
    /// A new sequence number, set as these customers' invalidation; with `clear`, their
    /// answers are dropped too.
    fn mark<'a>(
        &mut self,
        customers: impl IntoIterator<Item = (&'a str, &'a str)>,
        clear: bool,
    ) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        for (tenant, customer) in customers {
            if let Some(slot) = self.slot(tenant, customer) {
                slot.invalidated = seq;
                if clear {
                    slot.answers.clear();
                }
            }
        }
        seq
    }

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
    let question = question(bounds, meters);
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

/// Loads into memory the answers of [`usage_of_meters`] of these customers of `tenant`, each
/// over its own window, for those that have none, in one statement: their first read is then
/// answered from memory too. Each customer at most once. A customer with no usage gets an
/// empty answer. Nothing is loaded past the cache's room, or when hours of the windows are
/// marked for repair. Returns how many answers were kept (an answer whose customer changed
/// while it was read is not).
pub async fn load(
    store: &Store,
    tenant: &str,
    asked: &[(&str, (i64, i64))],
    meters: &[(&str, Aggregation)],
) -> Result<usize, StoreError> {
    let cache = store.usage_cache();
    if cache.capacity == 0 {
        return Ok(0);
    }
    let questions = asked
        .iter()
        .map(|&(c, bounds)| (c, question(bounds, meters)));
    let tickets = cache.reserve(tenant, questions);
    if tickets.is_empty() {
        return Ok(0);
    }
    let wanted: Vec<(&str, (i64, i64))> = tickets
        .iter()
        .map(|(customer, (from, to, _), _)| (*customer, (*from, *to)))
        .collect();
    let Some(mut usage) = usage_of_customers(store, tenant, &wanted, meters).await? else {
        return Ok(0);
    };
    let mut kept = 0;
    for (customer, question, ticket) in tickets {
        let answer = Arc::new(usage.remove(customer).unwrap_or_default());
        kept += usize::from(cache.store(ticket, tenant, customer, question, answer));
    }
    cache.loaded.fetch_add(kept as u64, Relaxed);
    Ok(kept)
}

fn question(bounds: (i64, i64), meters: &[(&str, Aggregation)]) -> Question {
    (
        bounds.0,
        bounds.1,
        meters.iter().map(|&(m, a)| (m.to_owned(), a)).collect(),
    )
}

/// Drops the cached usage of customers whose usage changed, as `usage_change_batches` says,
/// every `every`; an hour apart, drops days of that table before yesterday.
/// `since` is the mark of a poll made before (see [`poll`]); without one, the first poll is
/// made at once.
pub fn spawn_poll(
    store: Store,
    every: Duration,
    mut since: Option<u32>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pruned_at = tokio::time::Instant::now();
        let mut first = since.is_none();
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(every).await;
            }
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
        .bind(store.usage_cache().own_batches())
        .fetch_all()
        .await?;
    if !changed.is_empty() {
        store
            .usage_cache()
            .invalidate(changed.iter().map(|(t, c)| (t.as_str(), c.as_str())));
    }
    Ok(now)
}

/// Drops the days of `usage_change_batches` before yesterday.
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
    fn loading_skips_held_answers_stops_at_its_room_and_keeps_nothing_that_raced() {
        let cache = UsageCache::new(8);
        let ticket = cache.lookup("t", "held", &question()).unwrap_err();
        cache.store(ticket, "t", "held", question(), answer(1));
        let customers: Vec<String> = (0..9).map(|i| format!("c{i}")).collect();
        let mut asked: Vec<&str> = vec!["held"];
        asked.extend(customers.iter().map(String::as_str));
        let tickets = cache.reserve("t", asked.iter().map(|&c| (c, question())));
        // Room for 7 of 8 customers (what eviction keeps), one of them already held.
        let names: Vec<&str> = tickets.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(names, ["c0", "c1", "c2", "c3", "c4", "c5"]);
        // A batch of c1 begins while the load reads: its answer is not kept.
        let write = cache.begin_write(1, [("t", "c1")]);
        for (customer, question, ticket) in tickets {
            let kept = cache.store(ticket, "t", customer, question, answer(2));
            assert_eq!(kept, customer != "c1", "{customer}");
        }
        cache.abandon(write, [("t", "c1")]);
        assert_eq!(value(&cache, "c0"), Some(Decimal::from(2)));
        assert_eq!(value(&cache, "c1"), None);
        assert_eq!(value(&cache, "held"), Some(Decimal::from(1)));
        // Held answers are not asked for again.
        let again = cache.reserve("t", ["held", "c0"].map(|c| (c, question())));
        assert!(again.is_empty());
        // Two questions of one customer: the second waits for another load.
        let other: Question = (0, 20, vec![("m".into(), Aggregation::Sum)]);
        let twice = cache.reserve("t", [("c2", other.clone()), ("c2", question())]);
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].1, other);
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

    fn row(meter: &str, group: &[&str], value: i64, count: u64) -> MeterGroupUsage {
        MeterGroupUsage {
            meter: meter.into(),
            keys: group.iter().map(|_| "model".to_owned()).collect(),
            values: group.iter().map(|&g| g.to_owned()).collect(),
            value: Decimal::from(value),
            count,
        }
    }

    /// A sample of customer c of tenant t.
    fn sample<'a>(
        meter: &'a str,
        ts_ms: i64,
        keys: &'a [String],
        values: &'a [String],
        value: i64,
    ) -> Sample<'a> {
        Sample {
            tenant: "t",
            customer: "c",
            meter,
            ts_ms,
            keys,
            values,
            value: Decimal::from(value),
        }
    }

    fn keep(cache: &UsageCache, question: &Question, rows: Vec<MeterGroupUsage>) {
        let ticket = cache.lookup("t", "c", question).unwrap_err();
        cache.store(ticket, "t", "c", question.clone(), Arc::new(rows));
    }

    fn sorted(cache: &UsageCache, question: &Question) -> Option<Vec<MeterGroupUsage>> {
        let mut rows = cache.lookup("t", "c", question).ok()?.to_vec();
        rows.sort_by(|a, b| (&a.meter, &a.values).cmp(&(&b.meter, &b.values)));
        Some(rows)
    }

    #[test]
    fn own_batches_are_added_to_kept_answers() {
        let cache = UsageCache::new(10);
        let question: Question = (
            0,
            100,
            vec![
                ("calls".into(), Aggregation::Count),
                ("tokens".into(), Aggregation::Sum),
                ("low".into(), Aggregation::Min),
                ("high".into(), Aggregation::Max),
            ],
        );
        keep(
            &cache,
            &question,
            vec![
                row("calls", &[], 4, 4),
                row("tokens", &["a"], 10, 2),
                row("low", &[], 3, 1),
                row("high", &[], 3, 1),
            ],
        );
        let (none, model) = (vec![], vec!["model".to_owned()]);
        let (a, b) = (vec!["a".to_owned()], vec!["b".to_owned()]);
        let write = cache.begin_write(7, [("t", "c")]);
        cache.fold(
            write,
            [
                sample("calls", 5, &none, &none, 1),
                sample("tokens", 6, &model, &a, 5),
                sample("tokens", 7, &model, &b, 8),
                sample("low", 8, &none, &none, 2),
                sample("low", 9, &none, &none, 9),
                sample("high", 10, &none, &none, 9),
                // Outside the window, and a meter the question does not read.
                sample("tokens", 100, &model, &a, 1000),
                sample("other", 11, &none, &none, 1000),
            ],
        );
        assert_eq!(
            sorted(&cache, &question),
            Some(vec![
                row("calls", &[], 5, 5),
                row("high", &[], 9, 2),
                row("low", &[], 2, 3),
                row("tokens", &["a"], 15, 3),
                row("tokens", &["b"], 8, 1),
            ])
        );
        assert_eq!(cache.own_batches(), vec![7]);
    }

    #[test]
    fn an_answer_a_sample_cannot_update_exactly_is_dropped() {
        let cache = UsageCache::new(10);
        let none: Vec<String> = vec![];
        for aggregation in [Aggregation::UniqueCount, Aggregation::Latest] {
            let question: Question = (0, 100, vec![("m".into(), aggregation)]);
            // A first sample of the meter is exact: one distinct value, the latest value.
            keep(&cache, &question, vec![]);
            let write = cache.begin_write(1, [("t", "c")]);
            cache.fold(write, [sample("m", 5, &none, &none, 42)]);
            let expected = if aggregation == Aggregation::Latest {
                42
            } else {
                1
            };
            assert_eq!(
                sorted(&cache, &question),
                Some(vec![row("m", &[], expected, 1)])
            );
            // A second needs the state ClickHouse keeps.
            let write = cache.begin_write(2, [("t", "c")]);
            cache.fold(write, [sample("m", 6, &none, &none, 43)]);
            assert_eq!(sorted(&cache, &question), None, "{aggregation:?}");
        }
    }

    #[test]
    fn answers_read_while_a_batch_was_inserted_are_not_kept() {
        let cache = UsageCache::new(10);
        let none: Vec<String> = vec![];
        let q = question();
        // A read that began before the batch and ends during its insert may have seen it.
        let before = cache.lookup("t", "c", &q).unwrap_err();
        let write = cache.begin_write(1, [("t", "c")]);
        cache.store(before, "t", "c", q.clone(), answer(5));
        assert_eq!(value(&cache, "c"), None);
        // One that began and ended during the insert is dropped when the batch is folded.
        let during = cache.lookup("t", "c", &q).unwrap_err();
        let late = cache.lookup("t", "c", &q).unwrap_err();
        cache.store(during, "t", "c", q.clone(), answer(5));
        cache.fold(write, [sample("m", 1, &none, &none, 1)]);
        assert_eq!(value(&cache, "c"), None);
        // One that began during the insert and ends after the fold is not kept either.
        cache.store(late, "t", "c", q.clone(), answer(5));
        assert_eq!(value(&cache, "c"), None);
        // A read after the fold is.
        let after = cache.lookup("t", "c", &q).unwrap_err();
        cache.store(after, "t", "c", q.clone(), answer(6));
        assert_eq!(value(&cache, "c"), Some(Decimal::from(6)));
        // A customer the batch did not touch keeps what it read during the insert.
        let other = cache.lookup("t", "d", &q).unwrap_err();
        let write = cache.begin_write(2, [("t", "c")]);
        cache.store(other, "t", "d", q.clone(), answer(9));
        cache.fold(write, [sample("m", 1, &none, &none, 1)]);
        assert_eq!(value(&cache, "d"), Some(Decimal::from(9)));
        assert_eq!(value(&cache, "c"), Some(Decimal::from(7)));
        // A batch that failed drops its customers' answers, and its rows count as changes.
        let write = cache.begin_write(3, [("t", "c")]);
        assert_eq!(cache.own_batches(), vec![1, 2, 3]);
        cache.abandon(write, [("t", "c")]);
        assert_eq!(value(&cache, "c"), None);
        assert_eq!(cache.own_batches(), vec![1, 2]);
    }

    #[test]
    fn a_cache_of_no_customers_keeps_nothing() {
        let cache = UsageCache::new(0);
        let ticket = cache.lookup("t", "c", &question()).unwrap_err();
        cache.store(ticket, "t", "c", question(), answer(1));
        assert_eq!(value(&cache, "c"), None);
    }
}
