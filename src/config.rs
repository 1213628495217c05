//! Service configuration: flags with `METERHOUSE_*` environment equivalents and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the events live: an external ClickHouse, or one this process starts and owns.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreConfig {
    /// ClickHouse HTTP URL. Unset: start and own a local `clickhouse-server` under `--data-dir`.
    #[arg(long, env = "METERHOUSE_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    #[arg(long, env = "METERHOUSE_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    #[arg(
        long,
        env = "METERHOUSE_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// Database that holds meterhouse's tables; created if missing.
    #[arg(long, env = "METERHOUSE_DATABASE", default_value = "meterhouse")]
    pub database: String,
    /// The longest a read statement of a request may run in ClickHouse (seconds); past it the
    /// request is answered `422 query_too_large`.
    #[arg(long, env = "METERHOUSE_READ_TIMEOUT_S", default_value_t = 10)]
    pub read_timeout_s: u64,
    /// The most memory a read statement of a request may take in ClickHouse (bytes); past it
    /// the request is answered `422 query_too_large`.
    #[arg(long, env = "METERHOUSE_READ_MEMORY_BYTES", default_value_t = 1 << 30)]
    pub read_memory_bytes: u64,
    /// A cluster in the ClickHouse servers' `remote_servers` (their `shard` and `replica`
    /// macros and ZooKeeper set): tables are created replicated `ON CLUSTER`, customers are
    /// spread over its shards, and `--clickhouse-url` lists its nodes, comma-separated.
    /// Unset: one server, plain tables.
    #[arg(long, env = "METERHOUSE_CLUSTER")]
    pub cluster: Option<String>,
    /// Replicas of a shard that hold a batch before it is acknowledged (ClickHouse's
    /// `insert_quorum`), in cluster mode; default 2. With fewer replicas of a shard answering,
    /// its writes are refused with 503.
    #[arg(long, env = "METERHOUSE_INSERT_QUORUM")]
    pub insert_quorum: Option<u64>,
    /// Directory for the owned ClickHouse's files (and nothing else).
    #[arg(long, env = "METERHOUSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// Everything `meterhouse serve` needs.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[arg(long, env = "METERHOUSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreConfig,
    /// `key:tenant:role[:customer]`, comma-separated. Roles: admin, ingest, read, customer.
    #[arg(
        long,
        env = "METERHOUSE_API_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub api_keys: String,
    /// JSON file with tenants and their meters (see `demo/catalog.json`).
    #[arg(long, env = "METERHOUSE_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// A batch is inserted once it holds this many events...
    #[arg(long, env = "METERHOUSE_BATCH_MAX_EVENTS", default_value_t = 100_000)]
    pub batch_max_events: usize,
    /// ...or this many milliseconds after its first event arrived (when saturated, also an
    /// eighth of the previous insert's time after it ended, at most this long).
    #[arg(long, env = "METERHOUSE_BATCH_MAX_WAIT_MS", default_value_t = 50)]
    pub batch_max_wait_ms: u64,
    /// Events waiting for an insert, at most; past it requests get 503 (bounds memory).
    #[arg(long, env = "METERHOUSE_QUEUE_MAX_EVENTS", default_value_t = 500_000)]
    pub queue_max_events: usize,
    /// A request waits this long for its batch to be durable before it gets 503.
    #[arg(long, env = "METERHOUSE_ACK_TIMEOUT_MS", default_value_t = 30_000)]
    pub ack_timeout_ms: u64,
    /// An accepted event id is remembered for dedup this many hours of ingestion time...
    #[arg(long, env = "METERHOUSE_DEDUP_WINDOW_HOURS", default_value_t = 72)]
    pub dedup_window_hours: u64,
    /// ...and at most this many ids (about 40 bytes each).
    #[arg(long, env = "METERHOUSE_DEDUP_MAX_IDS", default_value_t = 20_000_000)]
    pub dedup_max_ids: usize,
    /// Redis (or Valkey) shared by every replica: accepted event ids and batches in flight
    /// (`redis://HOST:PORT[/DB]`). Unset: ids are kept in this process's memory, and no other
    /// process may ingest into the same database.
    #[arg(long, env = "METERHOUSE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Requests per second per API key.
    #[arg(long, env = "METERHOUSE_RATE_LIMIT_RPS", default_value_t = 2_000)]
    pub rate_limit_rps: u32,
    /// Events per second per API key.
    #[arg(long, env = "METERHOUSE_RATE_LIMIT_EPS", default_value_t = 2_000_000)]
    pub rate_limit_eps: u32,
    /// Customers whose usage answers are kept in memory, updated by this process's own batches,
    /// until another writer changes their usage (0: read ClickHouse every time).
    #[arg(
        long,
        env = "METERHOUSE_USAGE_CACHE_CUSTOMERS",
        default_value_t = 100_000
    )]
    pub usage_cache_customers: usize,
    /// How often other processes' writes are looked for, so that usage kept in memory is
    /// dropped once they change it (milliseconds).
    #[arg(long, env = "METERHOUSE_USAGE_CHANGES_POLL_MS", default_value_t = 250)]
    pub usage_changes_poll_ms: u64,
    /// A customer's read of a ragged window expected (from its last read) to hold at most this
    /// many samples is taken from its samples alone instead of the rollups (0: never). The
    /// default is `readmodel::plan::LIGHT_SAMPLES` (config sits below the read model).
    #[arg(long, env = "METERHOUSE_LIGHT_READ_SAMPLES", default_value_t = 20_000)]
    pub light_read_samples: u64,
    /// How often the current billing period's usage of every subscription is loaded into
    /// memory in bulk, for those whose answer is not held (seconds; first at start-up; 0: never,
    /// each is read on its first request). Needs the usage cache.
    #[arg(long, env = "METERHOUSE_USAGE_PRELOAD_EVERY_S", default_value_t = 60)]
    pub usage_preload_every_s: u64,
    /// How often the rollups are maintained (seconds; 0: never): hours marked for repair
    /// (`rollup_dirty`: hours an interrupted insert may have left incomplete in the hour rollup)
    /// are rebuilt from samples and unmarked, so that reads return to the rollup; closed days
    /// are compacted into the day grain, and days re-opened by late events written again. With
    /// replicas, one at a time does it.
    #[arg(
        long,
        env = "METERHOUSE_ROLLUP_MAINTENANCE_EVERY_S",
        default_value_t = 30
    )]
    pub rollup_maintenance_every_s: u64,
    /// How long a webhook receiver may take to answer before the attempt counts as failed and
    /// is retried (milliseconds).
    #[arg(long, env = "METERHOUSE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Origins allowed to show the dashboard pages in an `<iframe>` (`https://app.example.com`,
    /// comma-separated). Unset: no page may be framed.
    #[arg(
        long,
        env = "METERHOUSE_DASHBOARD_FRAME_ANCESTORS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub dashboard_frame_ancestors: Vec<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "METERHOUSE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Config {
    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.dedup_window_hours * 3600)
    }

    /// Defaults as `serve` would have them with no flags and no environment; for tests and tools.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        Wrapper::parse_from(["meterhouse"]).config
    }
}
