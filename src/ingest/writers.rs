//! The processes that ingest into one database, and how each remembers accepted ids. Two
//! processes that each keep ids in their own memory would each accept the other's retries and
//! count them twice; so a process refuses to start beside a live one when either of them keeps
//! ids in its own memory (`ingest_writer_beats`, sql/0013 and 0014). Processes that share their
//! ids through Redis may run side by side.
//!
//! Each beat also says up to when the writer's batches are settled, so that a process that
//! starts after a writer died with a batch in flight or in doubt settles it (see
//! [`WriterStatus::settle_dead`]): nothing of that batch stays half written or unseen by readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::bail;

use crate::store::{Store, StoreError, queries};

/// How a process remembers accepted event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// In its own memory: it must be the only writer of its database.
    Embedded,
    /// In Redis, shared with every other replica.
    Shared,
}

impl DedupMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Shared => "shared",
        }
    }
}

/// How often a writer says it is alive, and how long after its last word it counts as gone.
const BEAT_EVERY: Duration = Duration::from_secs(1);
const GONE_AFTER_S: u32 = 3;
/// How long a starting process waits for a conflicting writer to go (a rolling restart).
const WAIT_FOR_GONE: Duration = Duration::from_secs(5);

/// A batch stamped this long before a beat is covered by that beat's mark even when the
/// batcher had not yet said it was in flight (it stamps, then claims its ids, then says so).
const STAMP_MARGIN_MS: i64 = 60_000;

/// Nothing left to settle (sql/0014).
const ALL_SETTLED: i64 = i64::MAX;

/// Whether this process may ingest (the conflict with another writer, if one appeared), and the
/// stamp of its oldest batch not settled yet.
#[derive(Debug, Clone)]
pub struct WriterStatus(Arc<StatusInner>);

#[derive(Debug)]
struct StatusInner {
    writer: Writer,
    conflict: std::sync::Mutex<Option<String>>,
    unsettled_since_ms: AtomicI64,
}

impl WriterStatus {
    fn new(writer: Writer) -> Self {
        Self(Arc::new(StatusInner {
            writer,
            conflict: std::sync::Mutex::new(None),
            unsettled_since_ms: AtomicI64::new(ALL_SETTLED),
        }))
    }

    pub fn conflict(&self) -> Option<String> {
        self.0
            .conflict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, conflict: Option<String>) {
        *self.0.conflict.lock().unwrap_or_else(|e| e.into_inner()) = conflict;
    }

    /// The stamp of the oldest batch that may be in flight or in doubt (`None`: no batch).
    pub fn unsettled_since(&self, stamped_ms: Option<i64>) {
        let value = stamped_ms.unwrap_or(ALL_SETTLED);
        self.0.unsettled_since_ms.store(value, Ordering::Relaxed);
    }

    /// The mark a beat now records: before it, every batch is settled.
    fn settled_before_ms(&self) -> i64 {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let unsettled = self.0.unsettled_since_ms.load(Ordering::Relaxed);
        unsettled.min(now_ms - STAMP_MARGIN_MS)
    }

    /// Settles the batches of writers that kept ids in their own memory and died without
    /// having settled all of them (kill -9, a lost host): their inserts still running on the
    /// server are stopped, then every batch stamped from the oldest of their marks on is looked
    /// up and completed ([`super::settle::landed`]: samples re-derived where missing, hours
    /// marked for readers and the rollup's repair, the change recorded for every process's
    /// answers). For a process that keeps ids in its own memory, and so is the only writer,
    /// before it loads them. Returns how many batches were looked at.
    pub async fn settle_dead(&self, store: &Store) -> Result<usize, StoreError> {
        let me = &self.0.writer;
        let rows: Vec<(String, String, u32, u32, i64)> = queries::unsettled_writers(&me.id)
            .query(store.client())
            .fetch_all()
            .await?;
        let dead: Vec<(String, i64)> = rows
            .into_iter()
            .filter(|(writer, host, pid, silent_s, _)| {
                let here = *host == me.host;
                *silent_s > GONE_AFTER_S
                    || (here && *pid != me.pid && !running(*pid))
                    || (here && *pid == me.pid && !in_this_process(writer))
            })
            .map(|(writer, _, _, _, mark)| (writer, mark))
            .collect();
        let Some(since_ms) = dead.iter().map(|(_, mark)| *mark).min() else {
            return Ok(0);
        };
        store.kill_all_inserts().await?;
        let mut batches: Vec<u64> = Vec::new();
        for shard in store.shards() {
            let on_shard: Vec<u64> = queries::batches_since(since_ms)
                .query(shard.client())
                .fetch_all()
                .await?;
            batches.extend(on_shard);
        }
        batches.sort_unstable();
        batches.dedup();
        if !batches.is_empty() {
            super::settle::landed(store, &batches, since_ms).await?;
        }
        for (writer, mark) in &dead {
            queries::writer_settled(writer)
                .query(store.client())
                .execute()
                .await?;
            tracing::warn!(
                writer = %writer,
                settled_from_ms = mark,
                batches = batches.len(),
                "settled the batches of a writer that stopped without settling them"
            );
        }
        Ok(batches.len())
    }

    /// Says, once the batcher has stopped with everything settled, that nothing is left to
    /// settle: a successor has no batch of this process to look at.
    pub async fn stopped(&self, store: &Store) {
        let writer = &self.0.writer;
        let settled = if self.0.unsettled_since_ms.load(Ordering::Relaxed) == ALL_SETTLED {
            ALL_SETTLED
        } else {
            self.settled_before_ms()
        };
        if let Err(e) = writer.beat(store, settled).await {
            tracing::warn!(error = %e, "could not record this writer as stopped");
        }
    }
}

/// The writers registered by this very process (services side by side in one process, as tests
/// run them): a writer of this host and pid not among them is a predecessor that died (a
/// container restarted with the same pid).
static IN_THIS_PROCESS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn in_this_process(writer: &str) -> bool {
    IN_THIS_PROCESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|w| w == writer)
}

/// This process as a writer.
#[derive(Debug, Clone)]
pub struct Writer {
    id: String,
    mode: DedupMode,
    host: String,
    pid: u32,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct LiveWriter {
    writer: String,
    mode: String,
    host: String,
    pid: u32,
}

impl Writer {
    pub fn new(mode: DedupMode) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let pid = std::process::id();
        let id = format!("{host}-{pid}-{:08x}", rand::random::<u32>());
        Self {
            id,
            mode,
            host,
            pid,
        }
    }

    /// Registers this process, once no live writer conflicts with it (waiting a few seconds
    /// for one that is stopping); refuses with what to set otherwise. Of two processes that
    /// register at once, the one with the greater id refuses. Then says it is alive every
    /// second, and looks again each time: a conflict that appears later (beats that stalled)
    /// stops its inserts until it is gone.
    pub async fn register(
        self,
        store: &Store,
    ) -> anyhow::Result<(tokio::task::JoinHandle<()>, WriterStatus)> {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_GONE;
        loop {
            let conflicts = self.conflicts(store).await?;
            let Some(other) = conflicts.first() else {
                break;
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(self.refusal(other, store));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let status = WriterStatus::new(self.clone());
        self.beat(store, status.settled_before_ms()).await?;
        IN_THIS_PROCESS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.id.clone());
        if let Some(other) = self
            .conflicts(store)
            .await?
            .iter()
            .find(|other| other.writer < self.id)
        {
            bail!(self.refusal(other, store));
        }
        let (store, watched) = (store.clone(), status.clone());
        let task = tokio::spawn(async move {
            let mut pruned_at = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(BEAT_EVERY).await;
                if let Err(e) = self.beat(&store, watched.settled_before_ms()).await {
                    tracing::warn!(error = %e, "could not record this writer as alive");
                }
                match self.conflicts(&store).await {
                    Ok(conflicts) => {
                        let conflict = conflicts.first().map(|other| self.refusal(other, &store));
                        if let Some(conflict) = &conflict {
                            tracing::error!(conflict = %conflict, "ingest stopped");
                        }
                        watched.set(conflict);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not look for other writers"),
                }
                if pruned_at.elapsed() >= Duration::from_secs(3600) {
                    pruned_at = tokio::time::Instant::now();
                    if let Err(e) = store
                        .drop_days_before_yesterday("ingest_writer_beats")
                        .await
                    {
                        tracing::warn!(error = %e, "dropping old writer beats failed");
                    }
                }
            }
        });
        Ok((task, status))
    }

    fn refusal(&self, other: &LiveWriter, store: &Store) -> String {
        format!(
            "another meterhouse process ({} on {}, dedup {}) ingests into database '{}'; with \
             more than one process every one needs shared dedup: set --redis-url \
             (METERHOUSE_REDIS_URL) on all of them, or stop the other one",
            other.writer,
            other.host,
            other.mode,
            store.database()
        )
    }

    async fn beat(&self, store: &Store, settled_before_ms: i64) -> Result<(), StoreError> {
        let mode = self.mode.as_str();
        queries::writer_beat(&self.id, mode, &self.host, self.pid, settled_before_ms)
            .query(store.client())
            .execute()
            .await?;
        Ok(())
    }

    /// Live writers that must not run beside this one. A writer of this host whose process is
    /// gone (killed) is not live; nor is one in this very process (services started side by
    /// side in one process, as tests do, are told apart by nothing a deployment has).
    async fn conflicts(&self, store: &Store) -> Result<Vec<LiveWriter>, StoreError> {
        let live: Vec<LiveWriter> = queries::live_writers(&self.id, GONE_AFTER_S)
            .query(store.client())
            .fetch_all()
            .await?;
        Ok(live
            .into_iter()
            .filter(|w| self.mode == DedupMode::Embedded || w.mode != "shared")
            .filter(|w| w.host != self.host || (w.pid != self.pid && running(w.pid)))
            .collect())
    }
}

/// Whether process `pid` of this host runs (a killed one not yet reaped does not).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (name) state ...`: the name may hold spaces and parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}
