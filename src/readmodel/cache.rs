//! Usage held in memory: the answers of combined reads (a subscription's meters over a window)
//! per customer, so that a subscription read again (a dashboard, billing_state, an invoice
//! preview) is answered without ClickHouse until something is written for that customer.
//!
//! This process's own batches are added to the answers it holds ([`UsageCache::fold`]),
//! before their requests are acknowledged: sums, counts, minima and maxima take the new
//! samples, and so does a group seen for the first time; an answer that cannot be updated
//! exactly (a distinct count or a latest value of a group it already has) is dropped. A client
//! reads its own writes, and a customer that keeps sending events through this process keeps
//! being answered from memory. Every other change drops the answers of the customers it
//! touches (`changes`).
//!
//! A read that raced a change never stores its answer: each read takes a ticket (a sequence
//! number) before it queries, and an answer is only kept if its customer was not invalidated
//! since. A batch marks its customers before its insert ([`UsageCache::begin_write`]), so no
//! answer read while the insert ran is kept past it, and only answers kept before it began are
//! folded: none of them can contain the batch. A failed poll empties the cache, since changes
//! may have been missed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::domain::Aggregation;
use crate::store::usage_sql::MeterGroupUsage;

/// How long this process remembers its own batches, and how many at most: their rows in
/// `usage_change_batches` are read by the polls of the next seconds only. A batch forgotten
/// too early costs its customers' answers, nothing else.
const OWN_BATCHES_FOR: Duration = Duration::from_secs(60);
const OWN_BATCHES_MAX: usize = 4096;

/// Answers kept per customer at most (reads of any window each make one).
const ANSWERS_PER_CUSTOMER: usize = 16;

/// How stale kept answers may be: another writer's change shows in reads within this. Past it
/// without a successful poll of the changes, reads go to ClickHouse (see [`UsageCache::fresh`]).
pub const STALENESS_BOUND: Duration = Duration::from_secs(2);

/// What a combined read asks, and what its answer is kept under: the window (epoch ms) and
/// the meters, in the caller's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub from_ms: i64,
    pub to_ms: i64,
    pub meters: Vec<(String, Aggregation)>,
}

impl AnswerKey {
    pub fn new((from_ms, to_ms): (i64, i64), meters: &[(&str, Aggregation)]) -> Self {
        Self {
            from_ms,
            to_ms,
            meters: meters.iter().map(|&(m, a)| (m.to_owned(), a)).collect(),
        }
    }
}

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
    /// Answers loaded in bulk before their first read (`preload`).
    pub loaded: AtomicU64,
    /// When the changes were last polled successfully.
    polled: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every invalidation; tickets are its value when a read began.
    seq: u64,
    /// Every ticket below this is void (the whole cache was dropped after it was taken).
    cleared: u64,
    /// Bumped on every touch of a customer's answers, to evict the least recently used.
    clock: u64,
    /// Per tenant, per customer.
    customers: HashMap<String, HashMap<String, CustomerAnswers>>,
    /// Customers in all tenants.
    len: usize,
    /// Batches this process is inserting or has folded, oldest first.
    own: VecDeque<OwnBatch>,
}

/// A batch of this process: when its insert began, and the sequence number it marked its
/// customers with.
struct OwnBatch {
    began: Instant,
    batch_id: u64,
    seq: u64,
}

/// One customer's answers.
#[derive(Default)]
struct CustomerAnswers {
    invalidated: u64,
    used: u64,
    answers: HashMap<AnswerKey, KeptAnswer>,
}

/// An answer, and the ticket of the read that produced it.
struct KeptAnswer {
    ticket: u64,
    answer: Arc<Vec<MeterGroupUsage>>,
}

/// Taken before a read of ClickHouse; its answer is kept only if it is still valid.
pub struct ReadTicket(u64);

impl UsageCache {
    /// A cache of at most `capacity` customers' answers; 0 keeps nothing. Only the read model
    /// makes one, together with the poller that keeps it valid (`UsageReader::with_cache`).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            polled: Mutex::new(None),
        }
    }

    /// Records a successful poll of the changes, begun at `began`.
    pub fn polled(&self, began: Instant) {
        *self.polled.lock().unwrap_or_else(PoisonError::into_inner) = Some(began);
    }

    /// Time since the last successful poll began; `None` before the first.
    pub fn poll_age(&self) -> Option<Duration> {
        let polled = *self.polled.lock().unwrap_or_else(PoisonError::into_inner);
        polled.map(|at| at.elapsed())
    }

    /// Whether kept answers may be used: the changes were polled within [`STALENESS_BOUND`]
    /// (each poll looks back past its predecessor, so a fresh poll covers every change up to
    /// its start).
    pub fn fresh(&self) -> bool {
        self.poll_age().is_some_and(|age| age < STALENESS_BOUND)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored answer, or a ticket to store the one about to be read.
    pub fn lookup(
        &self,
        tenant: &str,
        customer: &str,
        key: &AnswerKey,
    ) -> Result<Arc<Vec<MeterGroupUsage>>, ReadTicket> {
        let mut inner = self.lock();
        let seq = inner.seq;
        let answers = inner.touch(tenant, customer);
        if let Some(kept) = answers.answers.get(key) {
            self.hits.fetch_add(1, Relaxed);
            return Ok(kept.answer.clone());
        }
        self.misses.fetch_add(1, Relaxed);
        if inner.len > self.capacity {
            inner.evict(self.capacity);
        }
        Err(ReadTicket(seq))
    }

    /// Keeps `answer` unless the customer's usage changed since `ticket` was taken; whether
    /// it was kept.
    pub fn store(
        &self,
        ticket: ReadTicket,
        tenant: &str,
        customer: &str,
        key: AnswerKey,
        answer: Arc<Vec<MeterGroupUsage>>,
    ) -> bool {
        let mut inner = self.lock();
        if ticket.0 < inner.cleared {
            return false;
        }
        // Not held: evicted while the read ran; keep nothing rather than guess.
        if let Some(answers) = inner.answers_of(tenant, customer)
            && answers.invalidated <= ticket.0
        {
            let ticket = ticket.0;
            if answers.answers.len() >= ANSWERS_PER_CUSTOMER
                && !answers.answers.contains_key(&key)
                && let Some(oldest) = answers
                    .answers
                    .iter()
                    .min_by_key(|(_, kept)| kept.ticket)
                    .map(|(key, _)| key.clone())
            {
                answers.answers.remove(&oldest);
            }
            answers.answers.insert(key, KeptAnswer { ticket, answer });
            return true;
        }
        false
    }

    /// Tickets to load the answers to these keys of customers that have none, while the cache
    /// has room: loading never evicts. One per customer: a statement answers per customer, so
    /// a second key of the same customer waits for another load.
    pub fn reserve<'c>(
        &self,
        tenant: &str,
        asked: impl IntoIterator<Item = (&'c str, AnswerKey)>,
    ) -> Vec<(&'c str, AnswerKey, ReadTicket)> {
        let room = self.capacity - self.capacity / 8;
        let mut inner = self.lock();
        let seq = inner.seq;
        let mut tickets = Vec::new();
        let mut reserved = HashSet::new();
        for (customer, key) in asked {
            if !reserved.insert(customer) {
                continue;
            }
            let len = inner.len;
            match inner.answers_of(tenant, customer) {
                Some(answers) if answers.answers.contains_key(&key) => continue,
                None if len >= room => continue,
                _ => {}
            }
            inner.touch(tenant, customer);
            tickets.push((customer, key, ReadTicket(seq)));
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
    ) {
        let mut inner = self.lock();
        let seq = inner.mark(customers, false);
        let now = Instant::now();
        inner.own.push_back(OwnBatch {
            began: now,
            batch_id,
            seq,
        });
        while inner.own.len() > OWN_BATCHES_MAX
            || inner
                .own
                .front()
                .is_some_and(|own| now - own.began > OWN_BATCHES_FOR)
        {
            inner.own.pop_front();
        }
    }

    /// Adds the samples of batch `batch_id`, now committed, to the answers of their customers
    /// kept before it began; drops the answers read meanwhile and those a sample cannot update
    /// exactly. A batch no longer remembered (its insert outlasted `OWN_BATCHES_FOR`) drops its
    /// customers' answers instead.
    pub fn fold<'a>(&self, batch_id: u64, samples: impl IntoIterator<Item = Sample<'a>>) {
        let mut inner = self.lock();
        let Some(began) = inner.own.iter().rfind(|own| own.batch_id == batch_id) else {
            let customers: Vec<Sample<'a>> = samples.into_iter().collect();
            inner.mark(customers.iter().map(|s| (s.tenant, s.customer)), true);
            return;
        };
        let began = began.seq;
        inner.seq += 1;
        let seq = inner.seq;
        if inner.len == 0 {
            return;
        }
        for sample in samples {
            let Some(answers) = inner.answers_of(sample.tenant, sample.customer) else {
                continue;
            };
            if answers.invalidated < seq {
                // First sample of this customer in the batch.
                answers.invalidated = seq;
                answers.answers.retain(|_, kept| kept.ticket < began);
            }
            answers
                .answers
                .retain(|key, kept| add(key, &mut kept.answer, &sample));
        }
    }

    /// Batch `batch_id` failed, and some of it may have landed: drops its customers' answers,
    /// and the polls no longer skip its rows.
    pub fn abandon<'a>(
        &self,
        batch_id: u64,
        customers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut inner = self.lock();
        inner.mark(customers, true);
        inner.own.retain(|own| own.batch_id != batch_id);
    }

    /// The batches this process is inserting or has folded lately.
    pub fn own_batches(&self) -> Vec<u64> {
        self.lock().own.iter().map(|own| own.batch_id).collect()
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
        inner.customers.clear();
        inner.len = 0;
    }

    /// Customers held (with answers or a read in flight).
    pub fn customers(&self) -> usize {
        self.lock().len
    }
}

/// Adds `sample` to `answer` of `key`; false when it cannot be done exactly (the answer must
/// then be dropped).
fn add(key: &AnswerKey, answer: &mut Arc<Vec<MeterGroupUsage>>, sample: &Sample<'_>) -> bool {
    if sample.ts_ms < key.from_ms || sample.ts_ms >= key.to_ms {
        return true;
    }
    let Some(&(_, aggregation)) = key.meters.iter().find(|(m, _)| m == sample.meter) else {
        return true;
    };
    let value = aggregation.of_one_sample(sample.value.normalize());
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
            value,
            count: 1,
        });
        return true;
    };
    match (
        aggregation.combine(row.value, value),
        row.count.checked_add(1),
    ) {
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
            if let Some(answers) = self.answers_of(tenant, customer) {
                answers.invalidated = seq;
                if clear {
                    answers.answers.clear();
                }
            }
        }
        seq
    }

    fn answers_of(&mut self, tenant: &str, customer: &str) -> Option<&mut CustomerAnswers> {
        self.customers.get_mut(tenant)?.get_mut(customer)
    }

    /// The customer's answers, made if missing, marked as the most recently used. A customer
    /// new to the cache counts as invalidated now: a read whose customer was evicted may have
    /// missed a change while nothing recorded it, so its older ticket must not store here.
    fn touch(&mut self, tenant: &str, customer: &str) -> &mut CustomerAnswers {
        self.clock += 1;
        let (clock, seq) = (self.clock, self.seq);
        let len = &mut self.len;
        let answers = self
            .customers
            .entry(tenant.to_owned())
            .or_default()
            .entry(customer.to_owned())
            .or_insert_with(|| {
                *len += 1;
                CustomerAnswers {
                    invalidated: seq,
                    ..CustomerAnswers::default()
                }
            });
        answers.used = clock;
        answers
    }

    /// Drops the least recently used customers down to seven eighths of `capacity`.
    fn evict(&mut self, capacity: usize) {
        let keep = capacity - capacity / 8;
        let excess = self.len.saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut used: Vec<u64> = self
            .customers
            .values()
            .flat_map(|c| c.values().map(|s| s.used))
            .collect();
        let (_, &mut cutoff, _) = used.select_nth_unstable(excess - 1);
        for customers in self.customers.values_mut() {
            customers.retain(|_, s| s.used > cutoff);
        }
        self.customers.retain(|_, c| !c.is_empty());
        self.len = self.customers.values().map(HashMap::len).sum();
    }
}

#[cfg(test)]
mod tests;
