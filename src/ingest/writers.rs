//! The processes that ingest into one database, and how each remembers accepted ids. Two
//! processes that each keep ids in their own memory would each accept the other's retries and
//! count them twice; so a process refuses to start beside a live one when either of them keeps
//! ids in its own memory (`ingest_writers`, sql/0013). Processes that share their ids through
//! Redis may run side by side.

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

/// Whether this process may ingest: the conflict with another writer, if one appeared.
#[derive(Debug, Clone, Default)]
pub struct WriterStatus(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl WriterStatus {
    pub fn conflict(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, conflict: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = conflict;
    }
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
        self.beat(store).await?;
        if let Some(other) = self
            .conflicts(store)
            .await?
            .iter()
            .find(|other| other.writer < self.id)
        {
            bail!(self.refusal(other, store));
        }
        let status = WriterStatus::default();
        let (store, watched) = (store.clone(), status.clone());
        let task = tokio::spawn(async move {
            let mut pruned_at = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(BEAT_EVERY).await;
                if let Err(e) = self.beat(&store).await {
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
                    if let Err(e) = store.drop_days_before_yesterday("ingest_writers").await {
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

    async fn beat(&self, store: &Store) -> Result<(), StoreError> {
        let mode = self.mode.as_str();
        queries::writer_beat(&self.id, mode, &self.host, self.pid)
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
