//! ClickHouse access: the client, error classification, row structs, migrations, owned server.

pub mod local;
pub mod migrate;
pub mod queries;
pub mod rows;
pub mod usage;
pub mod usage_cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use clickhouse::Client;

use crate::config::StoreConfig;

/// A failure talking to ClickHouse, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Network trouble, timeouts, overload, a full disk: try again later; nothing was stored,
    /// or (for an insert) it is not known whether it was.
    #[error("clickhouse unavailable: {0}")]
    Unavailable(String),
    /// ClickHouse refused the statement itself; retrying the same thing will fail again.
    #[error("clickhouse rejected the request: {0}")]
    Rejected(String),
    /// A read of a request went past its time or memory budget (`--read-timeout-s`,
    /// `--read-memory-bytes`): the request asks too much, retrying will not help.
    #[error("the read exceeded its budget: {0}")]
    OverBudget(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The error of a read made through [`Store::reader`]: its own budget's limits are
    /// `OverBudget`, anything else as any statement's.
    pub fn from_read(err: clickhouse::error::Error) -> Self {
        if let clickhouse::error::Error::BadResponse(message) = &err {
            let own_limit = match server_code(message) {
                // TIMEOUT_EXCEEDED, TOO_SLOW: only the reader sets max_execution_time.
                Some(159 | 160) => true,
                // MEMORY_LIMIT_EXCEEDED of this query, not of the whole server.
                Some(241) => message.contains("for query"),
                _ => false,
            };
            if own_limit {
                return Self::OverBudget(message.lines().next().unwrap_or_default().to_owned());
            }
        }
        err.into()
    }
}

/// ClickHouse server error codes that describe a passing condition, not a bad statement.
const RETRYABLE_CODES: &[u32] = &[
    159,  // TIMEOUT_EXCEEDED
    164,  // READONLY (e.g. read-only disk, replica in read-only mode)
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    241,  // MEMORY_LIMIT_EXCEEDED
    243,  // NOT_ENOUGH_SPACE
    252,  // TOO_MANY_PARTS
    425,  // SYSTEM_ERROR (errno, e.g. EROFS / ENOSPC)
    1000, // POCO_EXCEPTION (I/O errors, cannot write to file)
    1001, // STD_EXCEPTION
];

fn server_code(message: &str) -> Option<u32> {
    let rest = message.split("Code: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl From<clickhouse::error::Error> for StoreError {
    fn from(err: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        // With its causes, so that a refused certificate or a refused connection says so.
        let mut text = err.to_string();
        for cause in std::iter::successors(std::error::Error::source(&err), |e| e.source()) {
            let cause = cause.to_string();
            if !text.contains(&cause) {
                text = format!("{text}: {cause}");
            }
        }
        match &err {
            E::Network(_) | E::TimedOut => Self::Unavailable(text),
            E::BadResponse(message) => match server_code(message) {
                Some(code) if !RETRYABLE_CODES.contains(&code) => Self::Rejected(text),
                // Unknown shape (a proxy page, a truncated body): treat as passing trouble.
                _ => Self::Unavailable(text),
            },
            _ => Self::Rejected(text),
        }
    }
}

/// `client` whose statements stop past `seconds` or `bytes` (0: no bound).
fn with_budget(client: Client, (seconds, bytes): (u64, u64)) -> Client {
    client
        .with_setting("max_execution_time", seconds.to_string())
        .with_setting("max_memory_usage", bytes.to_string())
}

/// A handle on meterhouse's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// `client` with the read budget of a request's statements.
    reader: Client,
    database: String,
    dirty: Arc<DirtyHours>,
    usage_cache: Arc<usage_cache::UsageCache>,
}

/// Whether `rollup_dirty` holds anything: usually not, and then reads skip looking it up.
/// Re-checked at most once a second; set at once by this process's own marks.
#[derive(Default)]
struct DirtyHours {
    any: AtomicBool,
    checked_ms: AtomicI64,
}

impl Store {
    /// A client for `url`, without touching the network.
    pub fn new(url: &str, config: &StoreConfig) -> Self {
        // A server this process owns has a generated password, unless one is given.
        let password = match local::password_of(url) {
            Some(owned) if config.clickhouse_password.is_empty() => owned,
            _ => config.clickhouse_password.clone(),
        };
        let client = Client::default()
            .with_url(url)
            .with_user(&config.clickhouse_user)
            .with_password(password)
            .with_database(&config.database)
            // Old servers lack RowBinaryWithNamesAndTypes input; `connect` turns it back on.
            .with_validation(false);
        Self {
            reader: with_budget(
                client.clone(),
                (config.read_timeout_s, config.read_memory_bytes),
            ),
            client,
            database: config.database.clone(),
            dirty: Arc::default(),
            usage_cache: Arc::new(usage_cache::UsageCache::new(0)),
        }
    }

    /// Keeps the usage answers of up to `customers` customers in memory (0: none); see
    /// `usage_cache`. Only a process that polls `usage_change_batches` (`usage_cache::spawn_poll`)
    /// may keep any.
    pub fn with_usage_cache(mut self, customers: usize) -> Self {
        self.usage_cache = Arc::new(usage_cache::UsageCache::new(customers));
        self
    }

    pub fn usage_cache(&self) -> &usage_cache::UsageCache {
        &self.usage_cache
    }

    /// Records that hours were just marked in `rollup_dirty`.
    pub fn dirty_hours_marked(&self) {
        self.dirty.any.store(true, Ordering::Relaxed);
    }

    /// Whether `rollup_dirty` may hold hours: false without a query while nothing is marked and
    /// the last check (at most a second ago) found nothing.
    pub async fn may_have_dirty_hours(&self) -> Result<bool, StoreError> {
        if self.dirty.any.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let now = chrono::Utc::now().timestamp_millis();
        if now - self.dirty.checked_ms.load(Ordering::Relaxed) < 1_000 {
            return Ok(false);
        }
        let marked: u64 = self
            .client
            .query(queries::ANY_DIRTY_HOURS)
            .fetch_one()
            .await?;
        self.dirty.checked_ms.store(now, Ordering::Relaxed);
        if marked > 0 {
            self.dirty.any.store(true, Ordering::Relaxed);
        }
        Ok(marked > 0)
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
        let sql = match customer {
            Some(_) => queries::DIRTY_HOURS_OF_CUSTOMER,
            None => queries::DIRTY_HOURS,
        };
        let mut query = self
            .client
            .query(sql)
            .bind(tenant)
            .bind(meter)
            .bind(from_ms.div_euclid(1000))
            .bind(to_ms.div_euclid(1000) + 1);
        if let Some(customer) = customer {
            query = query.bind(customer);
        }
        let mut hours: Vec<i64> = query.fetch_all().await?;
        hours.sort_unstable();
        Ok(hours)
    }

    /// Checks the server, creates the database and enables schema validation where supported.
    pub async fn connect(mut self) -> Result<Self, StoreError> {
        let bare = self.client.clone().with_database("default");
        let version: String = bare.query("SELECT version()").fetch_one().await?;
        if major_version(&version) >= 24 {
            self.client = self.client.with_validation(true);
            self.reader = self.reader.with_validation(true);
        }
        tracing::info!(clickhouse_version = %version, database = %self.database, "connected to clickhouse");
        bare.query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_ident(&self.database)
        ))
        .execute()
        .await?;
        Ok(self)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client for the reads a request makes: each statement is bounded in time and memory
    /// (map its errors with [`StoreError::from_read`]).
    pub fn reader(&self) -> &Client {
        &self.reader
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// `SELECT 1` with a short deadline: is the server answering right now?
    pub async fn ping(&self) -> Result<(), StoreError> {
        let query = self.client.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(Duration::from_secs(2), query).await {
            Ok(result) => result.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("ping timed out".into())),
        }
    }
}

fn major_version(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Quotes an identifier that comes from configuration (a database name), never from requests.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_read_from_exception_text() {
        assert_eq!(
            server_code("Code: 243, e.displayText() = DB::Exception: no space"),
            Some(243)
        );
        assert_eq!(
            server_code("bad response: Code: 62. DB::Exception: Syntax error"),
            Some(62)
        );
        assert_eq!(server_code("gateway timeout"), None);
    }

    #[test]
    fn versions_parse_to_their_major_number() {
        assert_eq!(major_version("18.16.1"), 18);
        assert_eq!(major_version("25.3.2.1"), 25);
        assert_eq!(major_version("garbage"), 0);
    }
}
