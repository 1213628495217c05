//! Group commit. Handlers hand validated rows to one task that owns the insert: it gathers
//! submissions until a size or time threshold, drops ids already accepted, writes one
//! RowBinary insert, and only then acknowledges every waiting request.
//!
//! An insert that fails with a passing error may or may not have landed; its ids are then
//! "in doubt" and are settled against ClickHouse (`settle`) before any of them is accepted
//! again, so a client's retry is never counted twice.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::dedup::{KeySet, key};
use super::ledger::{Ledger, LedgerError, Verdict};
use super::settle;
use super::writers::WriterStatus;
use crate::metrics::Metrics;
use crate::store::rows::EventRow;
use crate::store::{Store, StoreError};

/// The answer to an accepted ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Ack {
    pub accepted: usize,
    pub duplicates: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The store cannot take the events now; nothing of the request was acknowledged.
    #[error("the event store is unavailable")]
    Unavailable,
    /// The queue is full: backpressure.
    #[error("the ingest queue is full")]
    Overloaded,
    /// ClickHouse refused the batch as data; a bug, since rows are validated.
    #[error("the event store rejected the batch: {0}")]
    Rejected(String),
}

/// Thresholds and bounds of the batcher.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_events: usize,
    pub max_wait: Duration,
    pub queue_max_events: usize,
    pub ack_timeout: Duration,
}

/// Insert attempts per batch; another is made only once the previous one is known not to
/// have landed.
const MAX_ATTEMPTS: u32 = 3;
/// In cluster mode, where an attempt is the same block again (dropped if it landed): a shard
/// whose replicas lag behind answers "the quorum of the previous write is not reached yet"
/// until they catch up, so its batch waits for them, up to the acknowledgement's patience.
const MAX_ATTEMPTS_CLUSTER: u32 = 8;

struct Submission {
    rows: Vec<EventRow>,
    keys: Vec<u128>,
    reply: oneshot::Sender<Result<Ack, IngestError>>,
    /// When the handler queued it (see `gather`).
    arrived: tokio::time::Instant,
    /// Holds this submission's share of the queue bound until it is answered (a part of a
    /// submission split by shard holds none: the whole does).
    _permit: Option<OwnedSemaphorePermit>,
}

/// The handlers' side: submit rows and wait for them to be durable. Cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Submission>,
    queue: Arc<Semaphore>,
    queue_max: usize,
    ack_timeout: Duration,
}

impl Ingestor {
    /// Queues the rows and waits until they are in ClickHouse (or known not to be).
    pub async fn submit(&self, rows: Vec<EventRow>, keys: Vec<u128>) -> Result<Ack, IngestError> {
        debug_assert_eq!(rows.len(), keys.len());
        let permits = u32::try_from(rows.len()).map_err(|_| IngestError::Overloaded)?;
        let permit = self
            .queue
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| IngestError::Overloaded)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Submission {
                rows,
                keys,
                reply,
                arrived: tokio::time::Instant::now(),
                _permit: Some(permit),
            })
            .map_err(|_| IngestError::Unavailable)?;
        match tokio::time::timeout(self.ack_timeout, answer).await {
            Ok(Ok(result)) => result,
            // The batcher ended (shutdown) or the batch outlived the wait; a retry is safe:
            // if the batch lands, the retried ids are reported as duplicates.
            _ => Err(IngestError::Unavailable),
        }
    }

    /// Events waiting for an insert right now.
    pub fn queued_events(&self) -> usize {
        self.queue_max - self.queue.available_permits()
    }
}

/// The running batcher task; `shutdown` drains and flushes it.
pub struct BatcherHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl BatcherHandle {
    /// Refuses new submissions, flushes the queued ones and waits for the task to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "batcher task failed");
        }
    }
}

/// Told of every batch the batcher inserts, in order; the usage read model keeps the answers
/// it holds in step through it.
pub trait BatchObserver: Send + Sync + 'static {
    /// `rows`, batch `batch_id`, are about to be inserted.
    fn inserting(&self, batch_id: u64, rows: &[EventRow]);
    /// They are stored; told before any request of the batch is acknowledged.
    fn committed(&self, batch_id: u64, rows: &[EventRow]);
    /// The insert failed, and some of the rows may be stored.
    fn failed(&self, batch_id: u64, rows: &[EventRow]);
}

/// Two observers, told in order.
impl<A: BatchObserver, B: BatchObserver> BatchObserver for (A, B) {
    fn inserting(&self, batch_id: u64, rows: &[EventRow]) {
        self.0.inserting(batch_id, rows);
        self.1.inserting(batch_id, rows);
    }
    fn committed(&self, batch_id: u64, rows: &[EventRow]) {
        self.0.committed(batch_id, rows);
        self.1.committed(batch_id, rows);
    }
    fn failed(&self, batch_id: u64, rows: &[EventRow]) {
        self.0.failed(batch_id, rows);
        self.1.failed(batch_id, rows);
    }
}

/// Starts the batcher task over `store`, keeping accepted ids in `ledger` and telling
/// `observer` of each batch.
pub fn start(
    store: Store,
    ledger: Ledger,
    writer: WriterStatus,
    settings: Settings,
    metrics: Arc<Metrics>,
    observer: Arc<dyn BatchObserver>,
) -> (Ingestor, BatcherHandle) {
    let (tx, rx) = mpsc::channel(settings.queue_max_events.max(1));
    let (stop, stopped) = watch::channel(false);
    let ingestor = Ingestor {
        tx,
        queue: Arc::new(Semaphore::new(settings.queue_max_events)),
        queue_max: settings.queue_max_events,
        ack_timeout: settings.ack_timeout,
    };
    let batcher = Batcher {
        rx,
        stopped,
        store,
        ledger,
        writer,
        settings,
        metrics,
        observer,
    };
    let task = tokio::spawn(batcher.run());
    (ingestor, BatcherHandle { stop, task })
}

struct Batcher {
    rx: mpsc::Receiver<Submission>,
    stopped: watch::Receiver<bool>,
    store: Store,
    ledger: Ledger,
    writer: WriterStatus,
    settings: Settings,
    metrics: Arc<Metrics>,
    observer: Arc<dyn BatchObserver>,
}

impl Batcher {
    async fn run(mut self) {
        let mut stopping = false;
        let mut previous: Option<PreviousInsert> = None;
        loop {
            let first = if stopping {
                self.rx.recv().await
            } else {
                tokio::select! {
                    first = self.rx.recv() => first,
                    _ = self.stopped.changed() => {
                        stopping = true;
                        self.rx.close();
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            let pending = gather(&mut self.rx, first, &self.settings, previous).await;
            let started = tokio::time::Instant::now();
            // In cluster mode one batch per shard: a shard that cannot take its rows refuses
            // only the requests with rows on it.
            let mut batches = self.by_shard(pending);
            batches.retain(|b| !b.is_empty());
            match batches.len() {
                0 => {}
                1 => self.flush(batches.pop().unwrap_or_default()).await,
                _ => self.flush_shards(batches).await,
            }
            // What a successor must settle should this process die now (sql/0014).
            self.writer
                .unsettled_since(self.ledger.oldest_in_doubt_ms());
            let ended = tokio::time::Instant::now();
            previous = Some(PreviousInsert {
                ended,
                took: ended - started,
            });
        }
        tracing::info!(
            remembered_ids = self.ledger.remembered(),
            "batcher stopped after flushing"
        );
    }

    async fn flush(&mut self, submissions: Vec<Submission>) {
        if let Some(batch) = self.prepare(submissions, &KeySet::default()).await {
            self.finish(batch, None).await;
        }
    }

    /// Flushes one batch per shard: each prepared in turn, then their first insert attempts all
    /// at once (each shard takes its own), then each finished in turn (retries, outcome,
    /// answers).
    async fn flush_shards(&mut self, batches: Vec<Vec<Submission>>) {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(batches.len());
        // An id taken by an earlier shard's batch (sent again under another customer) is a
        // duplicate in a later one, as it would be within one batch.
        let mut earlier = KeySet::default();
        for submissions in batches {
            if let Some(batch) = self.prepare(submissions, &earlier).await {
                earlier.extend(batch.taken.iter().copied());
                prepared.push(batch);
            }
        }
        // What a successor must settle should this process die now: from the oldest of them
        // (each `prepare` marked its own).
        if let Some(oldest) = prepared.iter().map(|b| b.now_ms).min() {
            let in_doubt = self.ledger.oldest_in_doubt_ms().unwrap_or(oldest);
            self.writer.unsettled_since(Some(oldest.min(in_doubt)));
        }
        if self.ledger.may_insert(&self.writer).await.is_err() {
            // Each batch finds out on its own, and is refused as it would be alone.
            for batch in prepared {
                self.finish(batch, None).await;
            }
            return;
        }
        for batch in &mut prepared {
            for row in batch.rows.iter_mut() {
                row.stamp(batch.now_ms, batch.batch_id);
            }
            self.observer.inserting(batch.batch_id, &batch.rows);
        }
        let store = &self.store;
        let first = prepared
            .iter()
            .map(|b| store.insert_events(&b.rows, b.batch_id, 1));
        let first = futures_util::future::join_all(first).await;
        // The shards that took their batch are answered first: a shard that did not waits for
        // its retries alone.
        let (mut done, mut retried): (Vec<_>, Vec<_>) = prepared
            .into_iter()
            .zip(first)
            .partition(|(_, first)| first.is_ok());
        done.append(&mut retried);
        for (batch, first) in done {
            self.finish(batch, Some(first)).await;
        }
    }

    /// Claims the ids of `submissions` as one batch and answers those refused or with nothing
    /// to insert; `None` when nothing is left to insert. Ids in `earlier` (taken by another
    /// batch of this flush) count as duplicates.
    async fn prepare(
        &mut self,
        submissions: Vec<Submission>,
        earlier: &KeySet,
    ) -> Option<Prepared> {
        if let Err(e) = self.ledger.settle(&self.store).await {
            tracing::warn!(error = %e, "cannot settle in-doubt batches; refusing this batch");
            self.refuse_all(submissions);
            return None;
        }
        let batch_id: u64 = rand::random();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let oldest = self.ledger.oldest_in_doubt_ms().unwrap_or(now_ms);
        self.writer.unsettled_since(Some(oldest.min(now_ms)));
        let keys = submissions.iter().map(|s| s.keys.as_slice());
        let claims = match self.ledger.claim(batch_id, now_ms, keys).await {
            Ok(claims) => claims,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the batch's ids; refusing it");
                if !matches!(e, LedgerError::Reloading) {
                    // The claim may have been made before the answer was lost: the batch is
                    // ended (nothing of it stored) before the next.
                    let ids = submissions.iter().flat_map(|s| s.keys.iter().copied());
                    self.ledger
                        .failed(batch_id, ids.collect(), now_ms, true)
                        .await;
                }
                self.refuse_all(submissions);
                return None;
            }
        };
        let mut rows = Vec::new();
        let mut taken = KeySet::default();
        let mut waiting = Vec::with_capacity(submissions.len());
        for submission in submissions {
            let verdicts: Vec<Verdict> = submission
                .keys
                .iter()
                .map(|&key| self.ledger.verdict(&claims, key))
                .collect();
            if verdicts.contains(&Verdict::Busy) {
                self.refuse(submission);
                continue;
            }
            let (mut accepted, mut duplicates) = (0, 0);
            let rows_and_keys = submission.rows.into_iter().zip(submission.keys);
            for ((row, key), verdict) in rows_and_keys.zip(verdicts) {
                if verdict == Verdict::New && !earlier.contains(&key) && taken.insert(key) {
                    rows.push(row);
                    accepted += 1;
                } else {
                    duplicates += 1;
                }
            }
            let ack = Ack {
                accepted,
                duplicates,
            };
            waiting.push((submission.reply, ack));
        }
        // Ids claimed for refused requests go back at once (their retries may come anywhere).
        let unused = claims.unused(&taken);
        if !unused.is_empty()
            && let Err(e) = self.ledger.release(batch_id, &unused).await
        {
            // Held in doubt, all of them: settled (not stored) and released before the next.
            tracing::warn!(error = %e, "cannot release ids of refused requests; refusing the batch");
            taken.extend(unused.iter().copied());
            self.ledger.failed(batch_id, taken, now_ms, true).await;
            for (reply, _) in waiting {
                let _ = reply.send(Err(IngestError::Unavailable));
            }
            return None;
        }
        let batch = Prepared {
            batch_id,
            now_ms,
            rows,
            taken,
            waiting,
        };
        if !batch.rows.is_empty() {
            return Some(batch);
        }
        if !unused.is_empty() {
            // Nothing of the batch is inserted: it ends here.
            let nothing = KeySet::default();
            self.ledger.failed(batch_id, nothing, now_ms, false).await;
        }
        self.answer(batch.waiting, &Ok(()));
        None
    }

    /// Inserts a prepared batch (`first`: the outcome of its first attempt, made already, its
    /// rows stamped and the observer told) and answers its requests.
    async fn finish(&mut self, mut batch: Prepared, first: Option<Result<(), StoreError>>) {
        let (batch_id, now_ms) = (batch.batch_id, batch.now_ms);
        let result = self
            .commit(&mut batch.rows, batch.taken, batch_id, now_ms, first)
            .await;
        self.answer(batch.waiting, &result);
    }

    /// Answers the requests of a batch with its outcome.
    fn answer(&self, waiting: Vec<(Reply, Ack)>, result: &Result<(), StoreError>) {
        for (reply, ack) in waiting {
            let answer = match result {
                Ok(()) => {
                    self.metrics
                        .events_accepted
                        .fetch_add(ack.accepted as u64, Relaxed);
                    self.metrics
                        .events_duplicate
                        .fetch_add(ack.duplicates as u64, Relaxed);
                    Ok(ack)
                }
                Err(StoreError::Unavailable(_)) => Err(IngestError::Unavailable),
                Err(StoreError::Rejected(e) | StoreError::OverBudget(e)) => {
                    Err(IngestError::Rejected(e.clone()))
                }
            };
            let _ = reply.send(answer);
        }
    }

    /// Inserts one batch; on success its ids are accepted, on an ambiguous failure they are
    /// held in doubt until the batch is settled.
    async fn commit(
        &mut self,
        rows: &mut [EventRow],
        keys: KeySet,
        batch_id: u64,
        now_ms: i64,
        first: Option<Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        if first.is_none() {
            for row in rows.iter_mut() {
                row.stamp(now_ms, batch_id);
            }
            self.observer.inserting(batch_id, rows);
        }
        let started = Instant::now();
        let (result, sent) = self
            .insert_with_retries(rows, batch_id, now_ms, first)
            .await;
        match &result {
            Ok(()) => {
                self.ledger.committed(batch_id, keys, now_ms).await;
                // Before any request of the batch is acknowledged: its client reads its writes.
                self.observer.committed(batch_id, rows);
                self.metrics.batches_inserted.fetch_add(1, Relaxed);
                self.metrics.batch_events.observe(rows.len() as f64);
                self.metrics
                    .insert_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(
                    batch_events = rows.len(),
                    insert_duration_ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
            }
            Err(e) => {
                // Some of it may have landed.
                self.observer.failed(batch_id, rows);
                self.metrics.batches_failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, batch_events = rows.len(), batch_id, "batch insert failed");
                // Once an attempt was sent, whatever the error, it may have landed.
                self.ledger.failed(batch_id, keys, now_ms, sent).await;
            }
        }
        result
    }

    /// Inserts `rows`, retrying a passing failure once the attempt is known not to have
    /// landed: it is stopped on the server first (it may still run there after a timeout
    /// here), then looked for. An attempt that landed in part (a batch spanning several months
    /// is written one part per month) is completed with the rows it lacks. Returns whether any
    /// attempt was sent.
    /// `first` is the outcome of the first attempt when it was made already.
    async fn insert_with_retries(
        &mut self,
        rows: &[EventRow],
        batch_id: u64,
        since_ms: i64,
        mut first: Option<Result<(), StoreError>>,
    ) -> (Result<(), StoreError>, bool) {
        let mut attempt = 0;
        let mut missing: Vec<EventRow> = Vec::new();
        // In cluster mode every attempt sends the same blocks: the replicated tables drop a
        // block that landed before (and then skip its views: the batch is completed as a
        // settled one is, below).
        let cluster = self.store.cluster().is_some();
        loop {
            attempt += 1;
            let outcome = match first.take() {
                Some(outcome) => outcome,
                None => {
                    if let Err(e) = self.ledger.may_insert(&self.writer).await {
                        let refused = StoreError::Unavailable(format!("no insert started: {e}"));
                        return (Err(refused), attempt > 1);
                    }
                    let sending = if attempt == 1 || cluster {
                        rows
                    } else {
                        &missing[..]
                    };
                    self.store.insert_events(sending, batch_id, attempt).await
                }
            };
            let error = match outcome {
                Ok(()) if cluster && attempt > 1 => {
                    let completed = settle::landed(&self.store, &[batch_id], since_ms).await;
                    return (completed.map(drop), true);
                }
                Ok(()) => return (Ok(()), true),
                Err(e) if !e.is_retryable() => return (Err(e), true),
                Err(e)
                    if attempt
                        >= if cluster {
                            MAX_ATTEMPTS_CLUSTER
                        } else {
                            MAX_ATTEMPTS
                        } =>
                {
                    return (Err(e), true);
                }
                Err(e) => e,
            };
            let backoff = match cluster {
                true => Duration::from_millis((100 * 2u64.pow(attempt - 1)).min(2_000)),
                false => Duration::from_millis(200 * 4u64.pow(attempt - 1)),
            };
            let jitter = Duration::from_millis(rand::random::<u64>() % 100);
            tracing::info!(error = %error, attempt, "retrying batch insert");
            tokio::time::sleep(backoff + jitter).await;
            if cluster {
                continue;
            }
            // Retry only what is known not to have landed.
            let landed = async {
                self.store.kill_inserts_of(batch_id).await?;
                settle::landed_keys(&self.store, &[batch_id], since_ms).await
            };
            let mut landed = match landed.await {
                Ok(landed) => landed,
                Err(e) => return (Err(e), true),
            };
            let landed = landed.remove(&batch_id).unwrap_or_default();
            missing = rows
                .iter()
                .filter(|row| !landed.contains(&key(&row.tenant, &row.id)))
                .cloned()
                .collect();
            if missing.is_empty() {
                return (Ok(()), true);
            }
        }
    }

    /// `submissions` grouped by the shard their rows go to (one group without a cluster). A
    /// submission with rows on several shards is split: its parts join their shards' groups,
    /// and it is answered once every part is, accepted only if every part is.
    fn by_shard(&self, submissions: Vec<Submission>) -> Vec<Vec<Submission>> {
        let Some(cluster) = self.store.cluster().filter(|c| c.shard_count() > 1) else {
            return vec![submissions];
        };
        let shard_of = |row: &EventRow| cluster.shard_of(&row.tenant, &row.customer);
        let mut groups: Vec<Vec<Submission>> =
            (0..cluster.shard_count()).map(|_| Vec::new()).collect();
        for submission in submissions {
            let first = submission.rows.first().map_or(0, shard_of);
            if submission.rows.iter().all(|row| shard_of(row) == first) {
                groups[first].push(submission);
                continue;
            }
            let mut parts: Vec<(Vec<EventRow>, Vec<u128>)> = (0..groups.len())
                .map(|_| (Vec::new(), Vec::new()))
                .collect();
            for (row, key) in submission.rows.into_iter().zip(submission.keys) {
                let part = &mut parts[shard_of(&row)];
                part.0.push(row);
                part.1.push(key);
            }
            let mut answers = Vec::new();
            for (shard, (rows, keys)) in parts.into_iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                groups[shard].push(Submission {
                    rows,
                    keys,
                    reply,
                    arrived: submission.arrived,
                    _permit: None,
                });
            }
            tokio::spawn(answer_whole(answers, submission.reply, submission._permit));
        }
        groups
    }

    fn refuse(&self, submission: Submission) {
        let _ = submission.reply.send(Err(IngestError::Unavailable));
    }

    fn refuse_all(&self, submissions: Vec<Submission>) {
        for submission in submissions {
            self.refuse(submission);
        }
    }
}

type Reply = oneshot::Sender<Result<Ack, IngestError>>;

/// A batch whose ids are claimed, ready to insert.
struct Prepared {
    batch_id: u64,
    /// Its stamp.
    now_ms: i64,
    rows: Vec<EventRow>,
    /// The keys of `rows`.
    taken: KeySet,
    /// Its requests and what each is answered if the batch is stored.
    waiting: Vec<(Reply, Ack)>,
}

/// Answers a submission split by shard once each part is answered: its acknowledgement adds
/// theirs; one part refused refuses it (the parts taken are answered as duplicates on retry).
async fn answer_whole(
    parts: Vec<oneshot::Receiver<Result<Ack, IngestError>>>,
    reply: oneshot::Sender<Result<Ack, IngestError>>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let mut whole = Ok(Ack {
        accepted: 0,
        duplicates: 0,
    });
    for part in parts {
        let answer = part.await.unwrap_or(Err(IngestError::Unavailable));
        whole = match (whole, answer) {
            (Ok(a), Ok(b)) => Ok(Ack {
                accepted: a.accepted + b.accepted,
                duplicates: a.duplicates + b.duplicates,
            }),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    let _ = reply.send(whole);
    drop(permit);
}

/// When the batcher's previous flush ended, and how long it took.
#[derive(Debug, Clone, Copy)]
struct PreviousInsert {
    ended: tokio::time::Instant,
    took: Duration,
}

/// A batch from `first` on. Submissions join until the batch holds `max_events`, or until
/// `max_wait` after its first submission arrived. When that deadline passed during the
/// previous insert (the batcher is saturated), the batch still waits after that insert ended,
/// for an eighth of the time it took, at most `max_wait`: the clients it answered send again
/// within that time, so an insert carries about all the events in flight instead of the half
/// that queued during the previous one, and ClickHouse spends less per event on larger
/// inserts (BENCHMARKS.md, "Ingest"). At a steady moderate rate the wait stays a small share
/// of the acknowledgement time.
async fn gather(
    rx: &mut mpsc::Receiver<Submission>,
    first: Submission,
    settings: &Settings,
    previous: Option<PreviousInsert>,
) -> Vec<Submission> {
    let mut deadline = first.arrived + settings.max_wait;
    if let Some(previous) = previous {
        let linger = settings.max_wait.min(previous.took / 8);
        deadline = deadline.max(previous.ended + linger);
    }
    let mut count = first.rows.len();
    let mut pending = vec![first];
    while count < settings.max_events {
        // What is already queued joins without waiting, even past the deadline.
        let next = match rx.try_recv() {
            Ok(next) => Some(next),
            Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten(),
        };
        let Some(next) = next else { break };
        count += next.rows.len();
        pending.push(next);
    }
    pending
}

#[cfg(test)]
mod tests;
