//! Redis itself: the connection, errors, the replica's heartbeat, the migration lock and
//! readiness.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::scripts::UNLOCK;
use super::{HEARTBEAT_EVERY, REPLICA_TTL};
use crate::ingest::ledger::LedgerError;

pub(super) fn redis_error(e: redis::RedisError) -> LedgerError {
    if e.to_string().contains("EPOCH") {
        LedgerError::Reloading
    } else {
        LedgerError::Redis(e.to_string())
    }
}

/// A Redis connection that reconnects by itself and gives up on a command after two seconds.
/// Redis not answering yet (restarting) is waited for, up to two minutes.
pub async fn connect(url: &str) -> Result<ConnectionManager, LedgerError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let client = redis::Client::open(url).map_err(redis_error)?;
        match client
            .get_connection_manager_with_config(config.clone())
            .await
        {
            Ok(connection) => return Ok(connection),
            Err(e) if Instant::now() < deadline && e.is_io_error() => {
                tracing::warn!(error = %e, "redis not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(redis_error(e)),
        }
    }
}

/// Writes the replica's heartbeat every second, with an expiry of [`REPLICA_TTL`]; records
/// when it last succeeded.
pub(super) fn spawn_heartbeat(
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

/// A lock of one database in Redis, for work that one replica at a time may do. It expires by
/// itself should its holder die.
pub struct Lock {
    redis: ConnectionManager,
    key: String,
    token: String,
}

impl Lock {
    pub fn new(redis: ConnectionManager, database: &str, name: &str) -> Self {
        Self {
            redis,
            key: format!("mh:{database}:{name}"),
            token: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        }
    }

    /// Takes the lock for `ms` unless another holds it.
    pub async fn try_take(&mut self, ms: u64) -> Result<bool, redis::RedisError> {
        take_lock(&mut self.redis, &self.key, &self.token, ms).await
    }

    /// Gives the lock back if this holder still holds it.
    pub async fn give_back(&mut self) {
        give_lock_back(&mut self.redis, &self.key, &self.token).await;
    }
}

/// Takes lock `key` for `holder`, for `ms`, unless someone holds it.
pub(super) async fn take_lock(
    redis: &mut ConnectionManager,
    key: &str,
    holder: &str,
    ms: u64,
) -> Result<bool, redis::RedisError> {
    let locked: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(holder)
        .arg("NX")
        .arg("PX")
        .arg(ms)
        .query_async(redis)
        .await?;
    Ok(locked.is_some())
}

/// Gives lock `key` back if `holder` still holds it; it expires by itself otherwise.
pub(super) async fn give_lock_back(redis: &mut ConnectionManager, key: &str, holder: &str) {
    let unlocked: Result<i64, _> = Script::new(UNLOCK)
        .key(key)
        .arg(holder)
        .invoke_async(redis)
        .await;
    if let Err(e) = unlocked {
        tracing::warn!(error = %e, lock = %key, "could not give a lock back; it expires by itself");
    }
}

/// Runs `work` while holding the lock `name` of `database` in Redis, for start-up work that
/// replicas starting together do one at a time, the later ones finding it done (`migrating`:
/// migrations; `settling_writers`: batches a dead embedded writer left). Waits up to five
/// minutes for the lock; it expires by itself after ten, should its holder die.
pub async fn with_lock<T>(
    url: &str,
    database: &str,
    name: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut lock = Lock::new(connect(url).await?, database, name);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match lock.try_take(600_000).await {
            Ok(true) => break,
            Ok(false) => {}
            // Redis restarting: the starting replica waits for it.
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                tracing::warn!(error = %e, "redis not reachable yet; retrying");
            }
            Err(e) => return Err(redis_error(e).into()),
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "another replica has held the lock {} for five minutes",
                lock.key
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = work.await;
    lock.give_back().await;
    outcome
}

/// Whether Redis answers and holds the dedup window (for `/readyz`).
pub async fn ready(redis: &mut ConnectionManager, database: &str) -> bool {
    let epoch: Result<Option<String>, _> =
        redis.get(format!("mh:{database}:{}", super::EPOCH)).await;
    matches!(epoch, Ok(Some(_)))
}
