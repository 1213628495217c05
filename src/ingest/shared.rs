//! Accepted event ids shared by every replica, in Redis (`--redis-url`).
//!
//! Keys, under `mh:{database}:`:
//! - `g:{n}`: the ids taken in generation `n` of Redis's clock (a hash: the id's 16-byte hash,
//!   then the batch that took it, in hex, or `d` for an id accepted without one: loaded from
//!   ClickHouse, or marked stored by a settlement). Generations span half the dedup window; an
//!   id is looked up in the three newest, so it is remembered for at least the window and at
//!   most a window and a half (scripts.rs).
//! - `gmax:{span}`: the newest generation used: one of Redis's clock stepped back is not
//!   looked at in place of it.
//! - `b:{batch}`: the batch's state: `p:{replica}:{stamped_ms}` while its outcome is unknown,
//!   then `c` (stored), `a` (not stored: its ids are free) or `s` (stored in part: the ids in
//!   the set `l:{batch}` are). Outlives its ids.
//! - `batches`: the batches still `p`; `r:{replica}`: present while that replica is alive.
//! - `epoch2` ([`EPOCH`]): written once the ids of the window are loaded (a random value, then
//!   the server's time in seconds when the load began); a Redis that lost its data lacks it. A
//!   database run by a process that kept ids in its own memory since then (its beats in
//!   `ingest_writer_beats` are newer) holds ids Redis lacks: a replica that starts then loads
//!   the window again (`prepare`). Versions that kept a key per id wrote `epoch`: a Redis they
//!   filled lacks `epoch2`, so the window is loaded again into generations (every replica of
//!   the earlier version must be stopped first: the two layouts do not see each other's ids).
//!
//! A batch takes its ids (one script: an `HMGET` of them per generation, one `HSET` of those
//! free, and the batch recorded as `p`) before its insert, and is marked `c` after it: one
//! operation for the whole batch. An id taken by a batch still `p` is refused (`503`, the client
//! retries) until that batch is settled. A batch whose outcome is unknown (its insert failed
//! ambiguously, or its replica died) is settled against ClickHouse: its inserts still running
//! are stopped, then its rows are looked up id by id (`settle::landed_keys`, which also
//! completes what the insert left undone). Only then may another batch take its ids: a retry
//! after a crash is neither lost nor counted twice.
//!
//! A replica whose heartbeat has not been written for [`STOP_INSERTS_AFTER`] starts no insert:
//! other replicas count it dead once its heartbeat expired (`REPLICA_TTL`), later. The scripts
//! reach keys they compute (other batches' states), so Redis Cluster is not supported.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

mod connection;
mod scripts;

pub use connection::{Lock, connect, ready, with_lock};
use connection::{give_lock_back, redis_error, spawn_heartbeat, take_lock};
use scripts::{CLAIM, END, LOAD, RELEASE};

use super::dedup::KeySet;
use super::ledger::{LedgerError, Verdict};
use super::settle;
use crate::store::{MAX_ATTEMPT, SEND_TIMEOUT, Store};

/// A replica counts as dead once its heartbeat is this old.
const REPLICA_TTL: Duration = Duration::from_secs(5);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica that could not refresh its heartbeat for this long starts no insert.
pub const STOP_INSERTS_AFTER: Duration = Duration::from_millis(2500);
/// How often other replicas' pending batches are looked at for dead owners.
const LOOK_FOR_DEAD_EVERY: Duration = Duration::from_secs(1);
/// Ids written per command while loading the window into an empty Redis.
const LOAD_CHUNK: usize = 10_000;
/// How much longer a batch's state lives than its ids (at most a window and a half).
const STATE_MARGIN_MS: i64 = 3_600_000;

/// The key (under the prefix) of the epoch of this layout of ids.
pub const EPOCH: &str = "epoch2";

/// The span of a generation of ids (scripts.rs): half the dedup window.
pub fn generation_span_ms(window: Duration) -> i64 {
    (window.as_millis() as i64 / 2).max(1)
}

/// The key of the generation of ids that holds those taken at `server_ms` (Redis's clock) in
/// `database`, whose dedup window is `window`.
pub fn generation_key(database: &str, window: Duration, server_ms: i64) -> String {
    format!(
        "mh:{database}:g:{}",
        server_ms.div_euclid(generation_span_ms(window))
    )
}

/// How a settled batch ends.
fn end_state(taken: usize, landed: usize) -> &'static str {
    match landed {
        0 => "a",
        n if n == taken => "c",
        _ => "s",
    }
}

/// Ids of this replica's batches and their claims, in Redis.
pub struct SharedLedger {
    redis: ConnectionManager,
    prefix: String,
    replica: String,
    window_ms: i64,
    epoch: Option<String>,
    /// This replica's batches whose outcome is unknown: settled before its next batch.
    in_doubt: settle::InDoubt,
    /// This replica's batches known stored that Redis could not be told of, with their ids:
    /// marked before its next batch (until then their ids are held).
    unmarked: Vec<(u64, Vec<u128>)>,
    /// Other replicas seen without a heartbeat, and since when.
    seen_dead: HashMap<String, Instant>,
    /// When the heartbeat was last written (shared with the heartbeat task).
    alive: std::sync::Arc<std::sync::Mutex<Instant>>,
    looked_for_dead: Instant,
    claim: Script,
    end: Script,
    release: Script,
    load: Script,
}

impl SharedLedger {
    /// The ledger of a new replica over `database`, ids kept for `window`; its heartbeat task
    /// is spawned.
    pub async fn open(
        url: &str,
        database: &str,
        window: Duration,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), LedgerError> {
        let redis = connect(url).await?;
        let replica = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let prefix = format!("mh:{database}:");
        let alive = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
        let heartbeat =
            spawn_heartbeat(redis.clone(), format!("{prefix}r:{replica}"), alive.clone());
        let ledger = Self {
            redis,
            prefix,
            replica,
            window_ms: window.as_millis() as i64,
            epoch: None,
            in_doubt: settle::InDoubt::default(),
            unmarked: Vec::new(),
            seen_dead: HashMap::new(),
            alive,
            looked_for_dead: Instant::now() - LOOK_FOR_DEAD_EVERY,
            claim: Script::new(CLAIM),
            end: Script::new(END),
            release: Script::new(RELEASE),
            load: Script::new(LOAD),
        };
        Ok((ledger, heartbeat))
    }

    fn span_ms(&self) -> i64 {
        generation_span_ms(Duration::from_millis(self.window_ms as u64))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn state_expiry_ms(&self) -> i64 {
        self.window_ms + self.window_ms / 2 + STATE_MARGIN_MS
    }

    /// Whether this replica may start an insert attempt: its heartbeat is fresh (others do not
    /// count it dead) and Redis still holds the epoch its ids were taken under (a Redis being
    /// loaded must see every attempt that can land).
    pub async fn may_insert(&mut self) -> Result<(), LedgerError> {
        let alive = *self.alive.lock().unwrap_or_else(|e| e.into_inner());
        if alive.elapsed() >= STOP_INSERTS_AFTER {
            return Err(LedgerError::Redis(
                "this replica's heartbeat is stale".into(),
            ));
        }
        let current: Option<String> = self.redis.get(self.key(EPOCH)).await.map_err(redis_error)?;
        if current.is_none() || current != self.epoch {
            self.epoch = None;
            return Err(LedgerError::Reloading);
        }
        Ok(())
    }

    fn epoch(&self) -> Result<String, LedgerError> {
        self.epoch.clone().ok_or(LedgerError::Reloading)
    }

    /// A script's error; an epoch that changed under it is looked up again before the next.
    fn failed_call(&mut self, e: redis::RedisError) -> LedgerError {
        let e = redis_error(e);
        if matches!(e, LedgerError::Reloading) {
            self.epoch = None;
        }
        e
    }

    /// Makes sure Redis holds the ids of the window: a Redis without the epoch lost its data (or
    /// is new) and is loaded from ClickHouse first, by one replica; the others wait for it.
    async fn ensure_epoch(&mut self, store: &Store) -> Result<(), LedgerError> {
        let epoch_key = self.key(EPOCH);
        let current: Option<String> = self.redis.get(&epoch_key).await.map_err(redis_error)?;
        if let Some(current) = current {
            self.epoch = Some(current);
            return Ok(());
        }
        let lock_key = self.key("loading");
        if !self.lock(&lock_key, 120_000).await? {
            return Err(LedgerError::Reloading);
        }
        let began = store.server_now().await;
        let loaded = match began {
            Ok(began) => self.load_window(store).await.map(|()| began),
            Err(e) => Err(e.into()),
        };
        let published = match loaded {
            Ok(began) => {
                let epoch = format!("{:016x}.{began}", rand::random::<u64>());
                let set: Result<(), _> = self.redis.set(&epoch_key, &epoch).await;
                set.map(|()| self.epoch = Some(epoch)).map_err(redis_error)
            }
            Err(e) => Err(e),
        };
        self.unlock(&lock_key).await;
        published
    }

    /// Loads the ids accepted within the window from ClickHouse as accepted, once every insert
    /// still running there has stopped (one that lands later would be missing).
    async fn load_window(&mut self, store: &Store) -> Result<(), LedgerError> {
        tracing::warn!("redis holds no accepted ids: loading the dedup window from clickhouse");
        // No replica starts an attempt without the epoch; one started before Redis lost it has
        // reached ClickHouse by now or never will, and is stopped there.
        tokio::time::sleep(SEND_TIMEOUT).await;
        store.kill_all_inserts().await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let accepted = super::dedup::accepted_since(store, now_ms - self.window_ms).await?;
        // Each id into the generation of its ingestion (the script clamps it to the live ones):
        // remembered a window from then, as if claimed.
        let mut by_generation: std::collections::BTreeMap<i64, Vec<u128>> = Default::default();
        for &(key, ingested_ms) in &accepted {
            let generation = ingested_ms.div_euclid(self.span_ms());
            by_generation.entry(generation).or_default().push(key);
        }
        for (generation, keys) in &by_generation {
            for chunk in keys.chunks(LOAD_CHUNK) {
                let mut call = self.load.prepare_invoke();
                call.arg(self.span_ms()).arg(&self.prefix).arg(generation);
                for &key in chunk {
                    call.arg(key.to_be_bytes().as_slice());
                }
                let _: i64 = call
                    .invoke_async(&mut self.redis)
                    .await
                    .map_err(redis_error)?;
            }
        }
        tracing::info!(ids = accepted.len(), "dedup window loaded into redis");
        Ok(())
    }

    /// Settles this replica's batches in doubt, and other replicas' pending batches whose
    /// replica is dead.
    pub async fn settle(&mut self, store: &Store) -> Result<(), LedgerError> {
        self.ensure_epoch(store).await?;
        while let Some((batch_id, keys)) = self.unmarked.pop() {
            if let Err(e) = self.end_batch(batch_id, "c", &keys).await {
                self.unmarked.push((batch_id, keys));
                return Err(e);
            }
        }
        if !self.in_doubt.is_empty() {
            let mut settled = self.in_doubt.settle(store).await?.into_iter();
            while let Some(batch) = settled.next() {
                let state = end_state(batch.keys.len(), batch.landed.len());
                let landed: Vec<u128> = batch.landed.iter().copied().collect();
                if let Err(e) = self.end_batch(batch.batch_id, state, &landed).await {
                    // Settled again next time (settling is idempotent).
                    for batch in std::iter::once(batch).chain(settled) {
                        let keys = batch.keys.into_iter().collect();
                        self.in_doubt.hold(batch.batch_id, batch.ingested_ms, keys);
                    }
                    return Err(e);
                }
            }
        }
        if self.looked_for_dead.elapsed() >= LOOK_FOR_DEAD_EVERY {
            self.looked_for_dead = Instant::now();
            self.settle_dead_replicas(store).await?;
        }
        Ok(())
    }

    /// Settles other replicas' pending batches once their replica has been dead long enough
    /// for any insert attempt it started to have ended: its heartbeat expired (it started no
    /// attempt in the last moments of it, see [`STOP_INSERTS_AFTER`]) and, seen from here, has
    /// stayed absent for [`MAX_ATTEMPT`] more.
    async fn settle_dead_replicas(&mut self, store: &Store) -> Result<(), LedgerError> {
        let pending: Vec<String> = self
            .redis
            .smembers(self.key("batches"))
            .await
            .map_err(redis_error)?;
        let mut dead_now = std::collections::HashSet::new();
        for batch in pending {
            let Some((replica, stamped_ms)) = self.pending_state(&batch).await? else {
                // Ended (or gone): nothing is left to settle.
                let _: () = self
                    .redis
                    .srem(self.key("batches"), &batch)
                    .await
                    .map_err(redis_error)?;
                continue;
            };
            if replica == self.replica {
                continue;
            }
            let alive: bool = self
                .redis
                .exists(self.key(&format!("r:{replica}")))
                .await
                .map_err(redis_error)?;
            if alive {
                continue;
            }
            dead_now.insert(replica.clone());
            let since = *self
                .seen_dead
                .entry(replica.clone())
                .or_insert_with(Instant::now);
            let Ok(batch_id) = u64::from_str_radix(&batch, 16) else {
                continue;
            };
            if since.elapsed() >= MAX_ATTEMPT
                && let Err(e) = self
                    .settle_for_dead(store, batch_id, &replica, stamped_ms)
                    .await
            {
                tracing::warn!(error = %e, batch_id, replica, "settling a dead replica's batch failed; trying again later");
            }
        }
        self.seen_dead
            .retain(|replica, _| dead_now.contains(replica));
        Ok(())
    }

    /// The replica and stamp of batch `batch` (hex) while it is pending.
    async fn pending_state(&mut self, batch: &str) -> Result<Option<(String, i64)>, LedgerError> {
        let state: Option<String> = self
            .redis
            .get(self.key(&format!("b:{batch}")))
            .await
            .map_err(redis_error)?;
        let pending = state.as_deref().and_then(|s| s.strip_prefix("p:"));
        Ok(pending
            .and_then(|p| p.rsplit_once(':'))
            .and_then(|(replica, stamped)| Some((replica.to_owned(), stamped.parse().ok()?))))
    }

    /// Settles a pending batch of a dead replica, unless another replica is settling it.
    async fn settle_for_dead(
        &mut self,
        store: &Store,
        batch_id: u64,
        replica: &str,
        stamped_ms: i64,
    ) -> Result<(), LedgerError> {
        let lock = self.key(&format!("settling:{batch_id:016x}"));
        if !self.lock(&lock, 60_000).await? {
            return Ok(());
        }
        let settled = async {
            // Settled by another replica before this one took the lock?
            if self
                .pending_state(&format!("{batch_id:016x}"))
                .await?
                .is_none()
            {
                return Ok(());
            }
            store.kill_inserts_of(batch_id).await?;
            let mut landed = settle::landed_keys(store, &[batch_id], stamped_ms).await?;
            let landed: Vec<u128> = landed
                .remove(&batch_id)
                .unwrap_or_default()
                .into_iter()
                .collect();
            tracing::warn!(
                batch_id,
                replica,
                landed = landed.len(),
                "settled a batch of a dead replica"
            );
            // Its ids are not known here: those stored are listed, the others are free.
            let state = if landed.is_empty() { "a" } else { "s" };
            self.end_batch(batch_id, state, &landed).await
        }
        .await;
        self.unlock(&lock).await;
        settled
    }

    /// Takes lock `key` for `ms` unless someone holds it.
    async fn lock(&mut self, key: &str, ms: u64) -> Result<bool, LedgerError> {
        take_lock(&mut self.redis, key, &self.replica, ms)
            .await
            .map_err(redis_error)
    }

    /// Gives lock `key` back if this replica still holds it.
    async fn unlock(&mut self, key: &str) {
        give_lock_back(&mut self.redis, key, &self.replica).await;
    }

    /// Takes `keys` (distinct) for batch `batch_id`, stamped at `stamped_ms`: the verdicts on
    /// those not taken now (the others are `New`).
    pub async fn claim(
        &mut self,
        batch_id: u64,
        stamped_ms: i64,
        keys: &[u128],
    ) -> Result<HashMap<u128, Verdict>, LedgerError> {
        let epoch = self.epoch()?;
        let mut call = self.claim.prepare_invoke();
        call.key(self.key(EPOCH))
            .key(self.key("batches"))
            .key(self.key(&format!("b:{batch_id:016x}")));
        call.arg(epoch)
            .arg(format!("{batch_id:016x}"))
            .arg(format!("p:{}:{stamped_ms}", self.replica))
            .arg(self.span_ms())
            .arg(&self.prefix)
            .arg(self.state_expiry_ms());
        for &key in keys {
            call.arg(key.to_be_bytes().as_slice());
        }
        let answer: Vec<i64> = match call.invoke_async(&mut self.redis).await {
            Ok(answer) => answer,
            Err(e) => return Err(self.failed_call(e)),
        };
        let mut verdicts = HashMap::with_capacity(answer.len() / 2);
        for pair in answer.chunks_exact(2) {
            let Some(&key) = usize::try_from(pair[0]).ok().and_then(|i| keys.get(i)) else {
                continue;
            };
            let verdict = if pair[1] == 1 {
                Verdict::Duplicate
            } else {
                Verdict::Busy
            };
            verdicts.insert(key, verdict);
        }
        Ok(verdicts)
    }

    /// Gives back `keys` that batch `batch_id` took but will not insert.
    pub async fn release(&mut self, batch_id: u64, keys: &[u128]) -> Result<(), LedgerError> {
        let epoch = self.epoch()?;
        let mut call = self.release.prepare_invoke();
        call.key(self.key(EPOCH));
        call.arg(epoch)
            .arg(format!("{batch_id:016x}"))
            .arg(self.span_ms())
            .arg(&self.prefix);
        for &key in keys {
            call.arg(key.to_be_bytes().as_slice());
        }
        match call.invoke_async::<i64>(&mut self.redis).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed_call(e)),
        }
    }

    /// Batch `batch_id` is stored: its ids are accepted. When Redis cannot be told, it is told
    /// before the next batch (until then the ids are held: retries wait).
    pub async fn committed(&mut self, batch_id: u64, keys: KeySet) {
        if let Err(e) = self.end_batch(batch_id, "c", &[]).await {
            tracing::warn!(error = %e, batch_id, "could not mark a stored batch; marking it before the next batch");
            self.unmarked.push((batch_id, keys.into_iter().collect()));
        }
    }

    /// The stamp of the oldest batch this replica holds in doubt.
    pub fn oldest_in_doubt_ms(&self) -> Option<i64> {
        self.in_doubt.oldest_ms()
    }

    /// Batch `batch_id` failed: ended at once when it is known not to be stored, settled
    /// before the next batch otherwise.
    pub async fn failed(&mut self, batch_id: u64, keys: KeySet, stamped_ms: i64, in_doubt: bool) {
        if in_doubt {
            self.in_doubt.hold(batch_id, stamped_ms, keys);
            return;
        }
        if let Err(e) = self.end_batch(batch_id, "a", &[]).await {
            tracing::warn!(error = %e, batch_id, "could not release a refused batch's ids; settling it later");
            self.in_doubt.hold(batch_id, stamped_ms, keys);
        }
    }

    /// Ends batch `batch_id`, pending, in `state`; `landed` are ids of it known stored (all of
    /// them for `s`; for `c`, given when they may have been taken under an earlier epoch).
    async fn end_batch(
        &mut self,
        batch_id: u64,
        state: &str,
        landed: &[u128],
    ) -> Result<(), LedgerError> {
        let epoch = self.epoch()?;
        let mut call = self.end.prepare_invoke();
        call.key(self.key(EPOCH))
            .key(self.key("batches"))
            .key(self.key(&format!("b:{batch_id:016x}")))
            .key(self.key(&format!("l:{batch_id:016x}")));
        call.arg(epoch)
            .arg(format!("{batch_id:016x}"))
            .arg(state)
            .arg(self.state_expiry_ms())
            .arg(self.span_ms())
            .arg(&self.prefix);
        for &key in landed {
            call.arg(key.to_be_bytes().as_slice());
        }
        match call.invoke_async::<i64>(&mut self.redis).await {
            Ok(1) => Ok(()),
            Ok(_) => {
                // Settled by another replica meanwhile: it looked in ClickHouse after every
                // attempt of this batch could have landed, so its word stands.
                tracing::warn!(batch_id, state, "batch already ended by another replica");
                Ok(())
            }
            Err(e) => Err(self.failed_call(e)),
        }
    }

    /// A connection to the same Redis.
    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Waits until Redis holds the accepted ids of the window (loading them, or waiting for
    /// the replica that loads them), at most two minutes.
    pub async fn prepare(&mut self, store: &Store) -> Result<(), LedgerError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = match self.ensure_epoch(store).await {
                Ok(()) => self.drop_epoch_older_than_embedded_writers(store).await,
                Err(e) => Err(e),
            };
            match ready {
                // Being loaded, or Redis restarting: a replica starting then waits.
                Err(LedgerError::Reloading | LedgerError::Redis(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    /// Drops the epoch (so that the window is loaded again) when a process that kept ids in its
    /// own memory beat since the window was loaded: the ids it accepted are in ClickHouse only.
    /// No such process runs beside a replica (`writers`), so this is looked at once, at start.
    async fn drop_epoch_older_than_embedded_writers(
        &mut self,
        store: &Store,
    ) -> Result<(), LedgerError> {
        let epoch = self.epoch()?;
        let loaded_s: u32 = epoch
            .split_once('.')
            .and_then(|(_, began)| began.parse().ok())
            .unwrap_or(0);
        let last_embedded_s: u32 = store
            .client()
            .query(crate::store::queries::LAST_EMBEDDED_BEAT)
            .fetch_one()
            .await
            .map_err(crate::store::StoreError::from)?;
        if last_embedded_s < loaded_s {
            return Ok(());
        }
        tracing::warn!(
            "a process that kept accepted ids in its own memory ran since redis was loaded: \
             loading the dedup window from clickhouse again"
        );
        // Dropped only if no other replica loaded it again meanwhile (the script that releases
        // a lock: delete if unchanged).
        let dropped: i64 = Script::new(scripts::UNLOCK)
            .key(self.key(EPOCH))
            .arg(&epoch)
            .invoke_async(&mut self.redis)
            .await
            .map_err(redis_error)?;
        tracing::debug!(dropped, "stale epoch");
        self.epoch = None;
        Err(LedgerError::Reloading)
    }
}
