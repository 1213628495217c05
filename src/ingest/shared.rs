//! Accepted event ids shared by every replica, in Redis (`--redis-url`).
//!
//! Keys, under `mh:{database}:`:
//! - `id:{key}`: an event id: `d` once its batch is stored (expires with the dedup window), or
//!   `c:{batch}:{replica}` while a batch of that replica claims it.
//! - `batch:{batch}` and the set `batches`: each claiming batch, with its replica, when it was
//!   stamped and its ids, until it is settled.
//! - `replica:{replica}`: present while that replica is alive (refreshed every second).
//! - `epoch`: written once the ids of the window are loaded; a Redis that lost its data lacks it.
//!
//! A batch claims its ids (and records itself) in one script before its insert, and marks them
//! `d` after it. Ids claimed by another batch are refused (`503`, the client retries) until that
//! batch is settled. A batch whose outcome is unknown (its insert failed ambiguously, or its
//! replica died) is settled against ClickHouse: its inserts still running are stopped, then its
//! rows are looked up (`settle::landed`, which also repairs what the insert left undone); its
//! ids become `d` if it landed and are released otherwise. Only then may another batch take
//! them: a retry after a crash is neither lost nor counted twice.
//!
//! A replica whose heartbeat has not been written for [`STOP_INSERTS_AFTER`] starts no insert:
//! other replicas count it dead once its heartbeat expired ([`REPLICA_TTL`]), later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};

use super::dedup::KeySet;
use super::ledger::{LedgerError, Verdict};
use super::settle;
use crate::store::Store;

/// A replica counts as dead once its heartbeat is this old.
const REPLICA_TTL: Duration = Duration::from_secs(5);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica that could not refresh its heartbeat for this long starts no insert.
pub const STOP_INSERTS_AFTER: Duration = Duration::from_millis(2500);
/// How often other replicas' claiming batches are looked at for dead owners.
const LOOK_FOR_DEAD_EVERY: Duration = Duration::from_secs(1);
/// Ids written per command while loading the window into an empty Redis.
const LOAD_CHUNK: usize = 10_000;

/// Claims the ids of a batch: `KEYS` epoch, the set of batches, the batch's record, then the
/// ids; `ARGV` the expected epoch, the claim, the batch id, its record, the claim's expiry (ms).
/// Returns per id 0 (claimed now), 1 (accepted before, or claimed by this batch) or the claim
/// of the batch that holds it.
const CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
local out = {}
local claimed = 0
for i = 4, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[5])
    out[#out + 1] = 0
    claimed = claimed + 1
  elseif v == 'd' or v == ARGV[2] then
    out[#out + 1] = 1
  else
    out[#out + 1] = v
  end
end
if claimed > 0 then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  redis.call('SADD', KEYS[2], ARGV[3])
end
return out
";

/// Ends claims: `KEYS` epoch, the set of batches, the batch's record, then ids; `ARGV` the
/// expected epoch, the claim, the batch id, `d` (stored: mark the ids accepted, also those no
/// longer claimed by anyone) or `r` (release what the claim holds), the ids' expiry (ms), and
/// `1` to forget the batch's record.
const FINISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
for i = 4, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if ARGV[4] == 'd' then
    if v == ARGV[2] or not v then redis.call('SET', KEYS[i], 'd', 'PX', ARGV[5]) end
  elseif v == ARGV[2] then
    redis.call('DEL', KEYS[i])
  end
end
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[2], ARGV[3])
end
return 1
";

/// A claiming batch's record in Redis.
#[derive(serde::Serialize, serde::Deserialize)]
struct BatchRecord {
    replica: String,
    stamped_ms: i64,
    /// The ids, as hex keys.
    keys: Vec<String>,
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
    /// This replica's batches known stored whose ids Redis could not be told of: marked
    /// accepted before its next batch.
    unmarked: Vec<(u64, Vec<u128>)>,
    /// When the heartbeat was last written (shared with the heartbeat task).
    alive: std::sync::Arc<std::sync::Mutex<Instant>>,
    looked_for_dead: Instant,
    claim: Script,
    finish: Script,
}

fn redis_error(e: redis::RedisError) -> LedgerError {
    if e.to_string().contains("EPOCH") {
        LedgerError::Reloading
    } else {
        LedgerError::Redis(e.to_string())
    }
}

/// A Redis connection that reconnects by itself and gives up on a command after a second.
pub async fn connect(url: &str) -> Result<ConnectionManager, LedgerError> {
    let client = redis::Client::open(url).map_err(redis_error)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(redis_error)
}

impl SharedLedger {
    /// The ledger of replica `replica` over `database`, ids kept for `window`; its heartbeat
    /// task is spawned.
    pub async fn open(
        url: &str,
        database: &str,
        window: Duration,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), LedgerError> {
        let redis = connect(url).await?;
        let replica = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let prefix = format!("mh:{database}:");
        let alive = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
        let heartbeat = spawn_heartbeat(
            redis.clone(),
            format!("{prefix}replica:{replica}"),
            alive.clone(),
        );
        let ledger = Self {
            redis,
            prefix,
            replica,
            window_ms: window.as_millis() as i64,
            epoch: None,
            in_doubt: settle::InDoubt::default(),
            unmarked: Vec::new(),
            alive,
            looked_for_dead: Instant::now() - LOOK_FOR_DEAD_EVERY,
            claim: Script::new(CLAIM),
            finish: Script::new(FINISH),
        };
        Ok((ledger, heartbeat))
    }

    fn id_key(&self, key: u128) -> String {
        format!("{}id:{key:032x}", self.prefix)
    }

    fn token(&self, batch_id: u64) -> String {
        format!("c:{batch_id:016x}:{}", self.replica)
    }

    /// Whether this replica may start an insert: its heartbeat is fresh.
    pub fn may_insert(&self) -> bool {
        let alive = *self.alive.lock().unwrap_or_else(|e| e.into_inner());
        alive.elapsed() < STOP_INSERTS_AFTER
    }

    /// Makes sure Redis holds the ids of the window: a Redis without the epoch lost its data (or
    /// is new) and is loaded from ClickHouse first, by one replica; the others wait for it.
    async fn ensure_epoch(&mut self, store: &Store) -> Result<(), LedgerError> {
        let epoch_key = format!("{}epoch", self.prefix);
        let current: Option<String> = self.redis.get(&epoch_key).await.map_err(redis_error)?;
        if let Some(current) = current {
            self.epoch = Some(current);
            return Ok(());
        }
        let lock_key = format!("{}loading", self.prefix);
        let locked: bool = redis::cmd("SET")
            .arg(&lock_key)
            .arg(&self.replica)
            .arg("NX")
            .arg("PX")
            .arg(120_000)
            .query_async::<Option<String>>(&mut self.redis)
            .await
            .map_err(redis_error)?
            .is_some();
        if !locked {
            return Err(LedgerError::Reloading);
        }
        let loaded = self.load_window(store).await;
        if loaded.is_ok() {
            let epoch = format!("{:016x}", rand::random::<u64>());
            let _: () = self
                .redis
                .set(&epoch_key, &epoch)
                .await
                .map_err(redis_error)?;
            self.epoch = Some(epoch);
        }
        let _: () = self.redis.del(&lock_key).await.map_err(redis_error)?;
        loaded
    }

    /// Loads the ids accepted within the window from ClickHouse as accepted, once every insert
    /// still running there has stopped (one that lands later would be missing).
    async fn load_window(&mut self, store: &Store) -> Result<(), LedgerError> {
        tracing::warn!("redis holds no accepted ids: loading the dedup window from clickhouse");
        store.kill_all_inserts().await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let accepted = super::dedup::accepted_since(store, now_ms - self.window_ms).await?;
        let count = accepted.len();
        for chunk in accepted.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for &(key, ingested_ms) in chunk {
                let expires = (ingested_ms + self.window_ms - now_ms).max(1);
                pipe.cmd("SET")
                    .arg(self.id_key(key))
                    .arg("d")
                    .arg("PX")
                    .arg(expires)
                    .arg("NX")
                    .ignore();
            }
            let _: () = pipe
                .query_async(&mut self.redis)
                .await
                .map_err(redis_error)?;
        }
        tracing::info!(ids = count, "dedup window loaded into redis");
        Ok(())
    }

    /// Settles this replica's batches in doubt, and other replicas' claiming batches whose
    /// replica is dead.
    pub async fn settle(&mut self, store: &Store) -> Result<(), LedgerError> {
        self.ensure_epoch(store).await?;
        while let Some((batch_id, keys)) = self.unmarked.pop() {
            if let Err(e) = self.finish(batch_id, &keys, true, true).await {
                self.unmarked.push((batch_id, keys));
                return Err(e);
            }
        }
        if !self.in_doubt.is_empty() {
            let mut settled = self.in_doubt.settle(store).await?.into_iter();
            while let Some(batch) = settled.next() {
                let finished = self.finish(batch.batch_id, &batch.keys, batch.landed, true);
                if let Err(e) = finished.await {
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

    async fn settle_dead_replicas(&mut self, store: &Store) -> Result<(), LedgerError> {
        let batches: Vec<String> = self
            .redis
            .smembers(format!("{}batches", self.prefix))
            .await
            .map_err(redis_error)?;
        for batch in batches {
            let record_key = format!("{}batch:{batch}", self.prefix);
            let record: Option<String> = self.redis.get(&record_key).await.map_err(redis_error)?;
            let Some(record) = record.and_then(|r| serde_json::from_str::<BatchRecord>(&r).ok())
            else {
                // Its record expired: nothing is left to settle.
                let _: () = self
                    .redis
                    .srem(format!("{}batches", self.prefix), &batch)
                    .await
                    .map_err(redis_error)?;
                continue;
            };
            if record.replica == self.replica {
                continue;
            }
            let heartbeat = format!("{}replica:{}", self.prefix, record.replica);
            let alive: bool = self.redis.exists(&heartbeat).await.map_err(redis_error)?;
            if alive {
                continue;
            }
            let Ok(batch_id) = u64::from_str_radix(&batch, 16) else {
                continue;
            };
            self.settle_for_dead(store, batch_id, record).await?;
        }
        Ok(())
    }

    /// Settles a batch of a dead replica, unless another replica is settling it.
    async fn settle_for_dead(
        &mut self,
        store: &Store,
        batch_id: u64,
        record: BatchRecord,
    ) -> Result<(), LedgerError> {
        let lock = format!("{}settling:{batch_id:016x}", self.prefix);
        let locked = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.replica)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async::<Option<String>>(&mut self.redis)
            .await
            .map_err(redis_error)?
            .is_some();
        if !locked {
            return Ok(());
        }
        store.kill_inserts_of(batch_id).await?;
        let landed = settle::landed(store, &[batch_id], record.stamped_ms).await?;
        let stored = landed.contains(&batch_id);
        tracing::warn!(
            batch_id,
            replica = %record.replica,
            landed = stored,
            ids = record.keys.len(),
            "settled a batch of a dead replica"
        );
        let keys: Vec<u128> = record
            .keys
            .iter()
            .filter_map(|k| u128::from_str_radix(k, 16).ok())
            .collect();
        let token = format!("c:{batch_id:016x}:{}", record.replica);
        self.finish_with(batch_id, &token, &keys, stored, true)
            .await?;
        let _: () = self.redis.del(&lock).await.map_err(redis_error)?;
        Ok(())
    }

    /// Claims `keys` (distinct) for batch `batch_id`, stamped at `stamped_ms`.
    pub async fn claim(
        &mut self,
        batch_id: u64,
        stamped_ms: i64,
        keys: &[u128],
    ) -> Result<HashMap<u128, Verdict>, LedgerError> {
        let epoch = self.epoch.clone().ok_or(LedgerError::Reloading)?;
        let record = BatchRecord {
            replica: self.replica.clone(),
            stamped_ms,
            keys: keys.iter().map(|k| format!("{k:032x}")).collect(),
        };
        let record =
            serde_json::to_string(&record).map_err(|e| LedgerError::Redis(e.to_string()))?;
        let mut call = self.claim.prepare_invoke();
        call.key(format!("{}epoch", self.prefix))
            .key(format!("{}batches", self.prefix))
            .key(format!("{}batch:{batch_id:016x}", self.prefix));
        for &key in keys {
            call.key(self.id_key(key));
        }
        call.arg(epoch)
            .arg(self.token(batch_id))
            .arg(format!("{batch_id:016x}"))
            .arg(record)
            .arg(self.window_ms);
        let answers: Vec<Value> = call.invoke_async(&mut self.redis).await.map_err(|e| {
            if e.to_string().contains("EPOCH") {
                self.epoch = None;
            }
            redis_error(e)
        })?;
        Ok(keys
            .iter()
            .zip(answers)
            .map(|(&key, answer)| {
                let verdict = match answer {
                    Value::Int(0) => Verdict::New,
                    Value::Int(_) => Verdict::Duplicate,
                    _ => Verdict::Busy,
                };
                (key, verdict)
            })
            .collect())
    }

    /// Releases the claims of `keys` that batch `batch_id` will not insert.
    pub async fn release(&mut self, batch_id: u64, keys: &[u128]) -> Result<(), LedgerError> {
        self.finish(batch_id, keys, false, false).await
    }

    /// Batch `batch_id` is stored: its ids are accepted. When Redis cannot be told, they are
    /// marked before the next batch (until then they stay claimed: retries wait).
    pub async fn committed(&mut self, batch_id: u64, keys: KeySet) {
        let keys: Vec<u128> = keys.into_iter().collect();
        if let Err(e) = self.finish(batch_id, &keys, true, true).await {
            tracing::warn!(error = %e, batch_id, "could not mark a stored batch's ids accepted; marking them before the next batch");
            self.unmarked.push((batch_id, keys));
        }
    }

    /// Batch `batch_id` failed: released at once when it is known not to be stored, settled
    /// before the next batch otherwise.
    pub async fn failed(&mut self, batch_id: u64, keys: KeySet, stamped_ms: i64, in_doubt: bool) {
        if in_doubt {
            self.in_doubt.hold(batch_id, stamped_ms, keys);
            return;
        }
        let keys: Vec<u128> = keys.into_iter().collect();
        if let Err(e) = self.finish(batch_id, &keys, false, true).await {
            tracing::warn!(error = %e, batch_id, "could not release a refused batch's ids; settling it later");
            self.in_doubt
                .hold(batch_id, stamped_ms, keys.into_iter().collect());
        }
    }

    async fn finish(
        &mut self,
        batch_id: u64,
        keys: &[u128],
        stored: bool,
        forget: bool,
    ) -> Result<(), LedgerError> {
        let token = self.token(batch_id);
        self.finish_with(batch_id, &token, keys, stored, forget)
            .await
    }

    async fn finish_with(
        &mut self,
        batch_id: u64,
        token: &str,
        keys: &[u128],
        stored: bool,
        forget: bool,
    ) -> Result<(), LedgerError> {
        let epoch = self.epoch.clone().ok_or(LedgerError::Reloading)?;
        let mut call = self.finish.prepare_invoke();
        call.key(format!("{}epoch", self.prefix))
            .key(format!("{}batches", self.prefix))
            .key(format!("{}batch:{batch_id:016x}", self.prefix));
        for &key in keys {
            call.key(self.id_key(key));
        }
        call.arg(epoch)
            .arg(token)
            .arg(format!("{batch_id:016x}"))
            .arg(if stored { "d" } else { "r" })
            .arg(self.window_ms)
            .arg(if forget { "1" } else { "0" });
        let _: i64 = call.invoke_async(&mut self.redis).await.map_err(|e| {
            if e.to_string().contains("EPOCH") {
                self.epoch = None;
            }
            redis_error(e)
        })?;
        Ok(())
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
            match self.ensure_epoch(store).await {
                Err(LedgerError::Reloading) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }
}

/// Writes the replica's heartbeat every second, with an expiry of [`REPLICA_TTL`]; records
/// when it last succeeded.
fn spawn_heartbeat(
    mut redis: ConnectionManager,
    key: String,
    alive: std::sync::Arc<std::sync::Mutex<Instant>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let written: Result<(), _> =
                redis.pset_ex(&key, 1, REPLICA_TTL.as_millis() as u64).await;
            match written {
                Ok(()) => *alive.lock().unwrap_or_else(|e| e.into_inner()) = started,
                Err(e) => tracing::warn!(error = %e, "could not write this replica's heartbeat"),
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    })
}

/// Releases a lock if this holder still has it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Runs `work` while holding the migration lock of `database` in Redis: replicas that start
/// together apply migrations one at a time (the second finds them applied). Waits up to five
/// minutes for the lock; it expires by itself after ten, should its holder die.
pub async fn with_migration_lock<T>(
    url: &str,
    database: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut redis = connect(url).await?;
    let key = format!("mh:{database}:migrating");
    let token = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let locked: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(600_000)
            .query_async(&mut redis)
            .await
            .map_err(redis_error)?;
        if locked.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("another replica has held the migration lock ({key}) for five minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = work.await;
    let unlocked: Result<i64, _> = Script::new(UNLOCK)
        .key(&key)
        .arg(&token)
        .invoke_async(&mut redis)
        .await;
    if let Err(e) = unlocked {
        tracing::warn!(error = %e, "could not release the migration lock; it expires by itself");
    }
    outcome
}

/// Whether Redis answers and holds the dedup window (for `/readyz`).
pub async fn ready(redis: &mut ConnectionManager, database: &str) -> bool {
    let epoch: Result<Option<String>, _> = redis.get(format!("mh:{database}:epoch")).await;
    matches!(epoch, Ok(Some(_)))
}
