//! ClickHouse, and nothing else: the client and its read budget, error classes, row structs,
//! statements and their values (`sql`, `queries`, `usage_sql`, `series_sql`), migrations,
//! the catalog's table, the dashboards' (`dashboard`), and a server this process owns (`local`).

pub mod as_of_sql;
pub mod catalog;
mod changes;
pub mod combined_sql;
pub mod dashboard;
mod days;
pub use days::{Compacted, DayParts};
mod error;
mod events;
pub mod keys;
pub use events::{MAX_ATTEMPT, SEND_TIMEOUT};
pub mod local;
pub mod migrate;
pub mod priced_sql;
pub mod queries;
mod repair;
pub use repair::Repaired;
pub mod rows;
pub mod series_sql;
pub mod sql;
pub mod usage_sql;
pub mod webhooks;
pub mod weighted_sql;

pub use error::StoreError;

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;

use crate::config::StoreConfig;

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
    dirty: Arc<changes::Marks>,
    days: Arc<days::DayGrain>,
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
            days: Arc::default(),
        }
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
    fn versions_parse_to_their_major_number() {
        assert_eq!(major_version("18.16.1"), 18);
        assert_eq!(major_version("25.3.2.1"), 25);
        assert_eq!(major_version("garbage"), 0);
    }
}
