//! Shared helpers for integration tests: one owned ClickHouse per test binary, one database
//! per test, the service on an ephemeral loopback port.

#![allow(dead_code, unreachable_pub)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meterhouse::app::Application;
use meterhouse::config::Config;
use meterhouse::store::Store;
use meterhouse::store::local::LocalClickHouse;
use rust_decimal::Decimal;
use serde_json::Value;

pub const KEYS: &str = "admin_key_a:acme:admin,ingest_key_a:acme:ingest,read_key_a:acme:read,\
                        cust_key_a:acme:customer:c1,admin_key_b:beta:admin,ingest_key_b:beta:ingest";

pub const CATALOG: &str = r#"{"tenants": [
  {"id": "acme", "meters": [
    {"slug": "calls", "name": "Calls", "event_type": "api_call", "aggregation": "count"},
    {"slug": "tokens", "name": "Tokens", "event_type": "llm_call", "aggregation": "sum",
     "value_property": "tokens", "group_by": ["model"]},
    {"slug": "eu_tokens", "name": "EU tokens", "event_type": "llm_call", "aggregation": "sum",
     "value_property": "usage.input_tokens", "filters": {"region": ["eu"]}}]},
  {"id": "beta", "meters": [
    {"slug": "calls", "name": "Calls", "event_type": "api_call", "aggregation": "count"}]}]}"#;

/// Logs only when `TEST_LOG` is set.
pub fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info")
                .with_test_writer()
                .try_init();
        }
    });
}

/// A directory of this test binary's own.
pub fn scratch_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let suite = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("suite");
    std::env::temp_dir()
        .join("meterhouse-tests")
        .join(format!("{suite}-{name}"))
}

/// Starts a ClickHouse under `dir` from a thread that outlives every test's runtime.
pub fn start_clickhouse(dir: PathBuf) -> LocalClickHouse {
    std::thread::spawn(move || {
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(LocalClickHouse::start(&dir))
            .expect("starting clickhouse-server for tests")
    })
    .join()
    .expect("clickhouse start thread")
}

/// The URL of this test binary's shared ClickHouse, started on first use.
pub fn clickhouse_url() -> String {
    static SHARED: OnceLock<LocalClickHouse> = OnceLock::new();
    SHARED
        .get_or_init(|| start_clickhouse(scratch_dir("shared")))
        .url()
}

/// With `METERHOUSE_TEST_CLUSTER` set, the suites' services run in cluster mode on a local
/// cluster of 2 shards × 2 replicas (tests/common/cluster.rs), one per test binary, started on
/// first use; `scripts/test` runs the suites that check amounts so, besides on one server.
pub fn on_cluster() -> bool {
    std::env::var_os("METERHOUSE_TEST_CLUSTER").is_some()
}

/// The nodes of this test binary's shared cluster ([`on_cluster`]), comma-separated.
pub fn cluster_urls() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // The processes are tied to the thread that starts them: it lives as long as the
            // test binary.
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let cluster = runtime.block_on(cluster::LocalCluster::start("shared", 2, 2));
                let _ = tx.send(cluster.urls());
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("starting the shared cluster")
        })
        .clone()
}

/// The store a suite's services use: this binary's ClickHouse, or its cluster ([`on_cluster`]).
pub fn store_url() -> String {
    match on_cluster() {
        true => cluster_urls(),
        false => clickhouse_url(),
    }
}

/// A running service for one test.
pub struct TestApp {
    pub base: String,
    pub config: Config,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The configuration a test's service gets: its own database, the test keys and catalog.
pub fn test_config(test: &str, url: &str) -> Config {
    init_logs();
    let mut config = Config::defaults();
    config.store.clickhouse_url = Some(url.into());
    config.store.database = format!("test_{test}");
    if url.contains(',') {
        config.store.cluster = Some(cluster::CLUSTER.into());
    }
    config.api_keys = KEYS.into();
    let catalog = scratch_dir("catalog.json");
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    if !catalog.exists() {
        std::fs::write(&catalog, CATALOG).unwrap();
    }
    config.catalog = Some(catalog);
    config.batch_max_wait_ms = 5;
    // Tests that count reads answered from memory load nothing behind their back; the test of
    // loading turns it on.
    config.usage_preload_every_s = 0;
    config
}

/// Drops the test's database, then starts the service on it.
pub async fn spawn_app(test: &str) -> TestApp {
    spawn_with(test_config(test, &store_url()), true).await
}

/// As [`spawn_app`], with tenant `acme` allowed to send events of any date (backfill), for
/// tests whose events must sit at dates derived from the clock (a DST change up to a year ago).
pub async fn spawn_backfill_app(test: &str) -> TestApp {
    let mut config = test_config(test, &store_url());
    config.catalog = Some(backfill_catalog("catalog-backfill.json"));
    spawn_with(config, true).await
}

/// The test catalog with tenant `acme` allowed to send events of any date, written to the
/// scratch file `name` (a file per suite: another may be reading its own meanwhile).
pub fn backfill_catalog(name: &str) -> PathBuf {
    let catalog = scratch_dir(name);
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    std::fs::write(
        &catalog,
        CATALOG.replace(
            r#"{"id": "acme","#,
            r#"{"id": "acme", "allow_backfill": true,"#,
        ),
    )
    .unwrap();
    catalog
}

/// Drops the configuration's database and connects to it again (which creates it empty).
pub async fn empty_database(config: &Config) -> Store {
    let store = || {
        Store::new(
            config.store.clickhouse_url.as_deref().unwrap(),
            &config.store,
        )
    };
    store()
        .connect()
        .await
        .expect("connect")
        .client()
        .query(&format!(
            "DROP DATABASE IF EXISTS {}",
            config.store.database
        ))
        .execute()
        .await
        .expect("drop test database");
    store().connect().await.expect("connect")
}

pub async fn spawn_with(config: Config, fresh: bool) -> TestApp {
    // A cluster is this binary's own, and each test's database new on it.
    if fresh && config.store.cluster.is_none() {
        empty_database(&config).await;
    }
    let app = Application::build(&config).await.expect("build app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestApp {
        base,
        config,
        http,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    /// POSTs a JSON body to /v1/events with `key`; returns status and JSON answer.
    pub async fn post_events(&self, key: &str, body: &Value) -> (u16, Value) {
        self.post_raw("/v1/events", key, "application/json", body.to_string())
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        key: &str,
        content_type: &str,
        body: String,
    ) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("request")
    }

    /// A store handle on this test's database, for checking what was written.
    pub async fn store(&self) -> Store {
        store_of(&self.config).await
    }

    /// A single UInt64 from ClickHouse (e.g. a count) over this test's database.
    pub async fn scalar(&self, sql: &str) -> u64 {
        self.store()
            .await
            .client()
            .query(sql)
            .fetch_one::<u64>()
            .await
            .expect(sql)
    }

    /// Stops the service gracefully (flushing its batcher).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
    }
}

/// `n` events for `customer` with ids `{prefix}-{i}`.
pub fn events(prefix: &str, customer: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| serde_json::json!({"id": format!("{prefix}-{i}"), "customer": customer, "type": "api_call"}))
            .collect(),
    )
}

/// A decimal written in a test.
pub fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A decimal the API answered as a string.
pub fn dec(v: &Value) -> Decimal {
    d(v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}")))
}

/// Each group of a charge of the usage API as (its `model`, its `field`), in the answer's order.
pub fn by_model(charge: &Value, field: &str) -> Vec<(String, Decimal)> {
    charge["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups: {charge}"))
        .iter()
        .map(|g| {
            (
                g["group"]["model"].as_str().unwrap().to_owned(),
                dec(&g[field]),
            )
        })
        .collect()
}

/// The local date of Paris's latest day of `hours` hours (a DST change) strictly before today,
/// and the UTC instant of its midnight: derived from the clock, so a test keeps testing a DST
/// change on whatever day it runs.
pub fn latest_paris_day_of(hours: i64) -> (chrono::NaiveDate, chrono::DateTime<chrono::Utc>) {
    let tz = chrono_tz::Europe::Paris;
    let midnight = |date: chrono::NaiveDate| {
        date.and_hms_opt(0, 0, 0)
            .and_then(|local| local.and_local_timezone(tz).earliest())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap()
    };
    let today = chrono::Utc::now().with_timezone(&tz).date_naive();
    today
        .iter_days()
        .rev()
        .skip(1)
        .take(400)
        .find(|&date| (midnight(date.succ_opt().unwrap()) - midnight(date)).num_hours() == hours)
        .map(|date| (date, midnight(date)))
        .expect("Europe/Paris changes its clocks twice a year")
}

/// POSTs `body` with the admin key of `acme`; the answer, which must be a success.
pub async fn post_ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app
        .post_raw(path, "admin_key_a", "application/json", body.to_string())
        .await;
    assert!(status < 300, "{path}: {status} {answer}");
    answer
}

/// POSTs `body` as acme's admin to the service at `base` (a process the test started); the
/// answer, which must be a success.
pub async fn admin(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let response = http
        .post(format!("{base}{path}"))
        .bearer_auth("admin_key_a")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// GETs `path` with `key`: status and JSON body (null when not JSON).
pub async fn get_json(app: &TestApp, path: &str, key: &str) -> (u16, Value) {
    let response = app.get(path, Some(key)).await;
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// A process a test started (a `meterhouse serve`, say), killed (SIGKILL) when dropped, so a
/// failing test leaves none behind.
pub struct Service(pub std::process::Child);

impl Service {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port below the ephemeral range: a client retrying a connection to a port in
/// that range while nothing listens there can end up connected to itself (TCP simultaneous
/// open), holding the port the server is about to take.
pub fn free_server_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `redis-server` on `port`, keeping nothing on disk: started again, it is empty.
pub fn start_redis(port: u16, dir: &Path) -> Service {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Service)
        .expect("redis-server (scripts/install-deps --tests installs it)")
}

pub async fn wait_redis(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = redis::Client::open(url).unwrap();
    while Instant::now() < deadline {
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server at {url} did not answer");
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `meterhouse serve` as its own process on `port`, on this test binary's ClickHouse, with
/// the test keys and catalog and `extra` arguments. Its stderr goes to a file of its own
/// (`scratch_dir("serve-{port}.log")`), read by [`serve_log`].
pub fn serve_process(port: u16, database: &str, extra: &[&str]) -> Service {
    let url = clickhouse_url();
    // The shared ClickHouse is this test binary's: its generated password, as an operator
    // would pass it (an environment variable keeps it off the command line).
    let password = meterhouse::store::local::password_of(&url).expect("owned here");
    serve_process_on(port, &url, &password, database, extra)
}

/// [`serve_process`] on the ClickHouse at `url` (nodes, comma-separated, with `--cluster`).
pub fn serve_process_on(
    port: u16,
    url: &str,
    password: &str,
    database: &str,
    extra: &[&str],
) -> Service {
    let catalog = scratch_dir("serve-catalog.json");
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    std::fs::write(&catalog, CATALOG).unwrap();
    let log = std::fs::File::create(scratch_dir(&format!("serve-{port}.log"))).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_meterhouse"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--clickhouse-url", url, "--database", database])
        .args(["--api-keys", KEYS, "--batch-max-wait-ms", "5"])
        .arg("--catalog")
        .arg(&catalog)
        .args(extra)
        .env("METERHOUSE_CLICKHOUSE_PASSWORD", password)
        .env("METERHOUSE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map(Service)
        .expect("start meterhouse serve")
}

/// What the `meterhouse serve` on `port` logged.
pub fn serve_log(port: u16) -> String {
    std::fs::read_to_string(scratch_dir(&format!("serve-{port}.log"))).unwrap_or_default()
}

/// Waits (at most 60 s) until the service at `base` is ready.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service at {base} did not become ready");
}

/// What retrying clients saw: requests refused (or whose connection failed), requests
/// acknowledged.
#[derive(Default)]
pub struct Tally {
    pub refused: std::sync::atomic::AtomicUsize,
    pub done: std::sync::atomic::AtomicUsize,
}

/// `clients` retrying clients ([`retrying_client`]) started at once, and what they see.
pub fn spawn_retrying_clients(
    http: &reqwest::Client,
    bases: &std::sync::Arc<Vec<String>>,
    shape: (usize, usize, usize),
    prefix: &'static str,
    patience: Duration,
) -> (
    Vec<tokio::task::JoinHandle<Vec<String>>>,
    std::sync::Arc<Tally>,
) {
    spawn_retrying_clients_over(http, bases, shape, 1, prefix, patience)
}

/// [`spawn_retrying_clients`] whose events are spread over `customers` customers (`c0`, `c1`
/// …; one: `c1`).
pub fn spawn_retrying_clients_over(
    http: &reqwest::Client,
    bases: &std::sync::Arc<Vec<String>>,
    (clients, requests, events): (usize, usize, usize),
    customers: usize,
    prefix: &'static str,
    patience: Duration,
) -> (
    Vec<tokio::task::JoinHandle<Vec<String>>>,
    std::sync::Arc<Tally>,
) {
    let tally = std::sync::Arc::new(Tally::default());
    let tasks = (0..clients)
        .map(|c| {
            tokio::spawn(retrying_client(
                http.clone(),
                bases.clone(),
                (c, requests, events),
                customers,
                prefix,
                patience,
                tally.clone(),
            ))
        })
        .collect();
    (tasks, tally)
}

/// One retrying client: `requests` batches of `events` events of `customers` customers (event
/// `i` of client `client`: `c{(client + i) % customers}`; one: c1) (ids
/// `{prefix}{client}-{request}-{i}`), each sent to one of `bases` and retried with the same ids,
/// on the next base, until acknowledged, at most `patience` each. An acknowledgement counts
/// every event of its request, accepted or duplicate; any answer but `202`, `503` or a failed
/// connection fails the test. Returns the acknowledged ids.
pub async fn retrying_client(
    http: reqwest::Client,
    bases: std::sync::Arc<Vec<String>>,
    (client, requests, events): (usize, usize, usize),
    customers: usize,
    prefix: &'static str,
    patience: Duration,
    tally: std::sync::Arc<Tally>,
) -> Vec<String> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut acknowledged = Vec::new();
    for request in 0..requests {
        let ids: Vec<String> = (0..events)
            .map(|i| format!("{prefix}{client}-{request}-{i}"))
            .collect();
        let body: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let customer = match customers {
                    0 | 1 => "c1".to_owned(),
                    n => format!("c{}", (client + i) % n),
                };
                serde_json::json!({"id": id, "customer": customer, "type": "api_call"})
            })
            .collect();
        let mut base = (client + request) % bases.len();
        let deadline = std::time::Instant::now() + patience;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "request {client}-{request} never acknowledged"
            );
            let sent = http
                .post(format!("{}/v1/events", bases[base]))
                .bearer_auth("ingest_key_a")
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 202 => {
                    let ack: Value = r.json().await.unwrap();
                    let counted =
                        ack["accepted"].as_u64().unwrap() + ack["duplicates"].as_u64().unwrap();
                    assert_eq!(counted, events as u64, "{ack}");
                    acknowledged.extend(ids);
                    tally.done.fetch_add(1, Relaxed);
                    break;
                }
                Ok(r) if r.status() == 503 => {
                    assert!(
                        r.headers().contains_key("retry-after"),
                        "a 503 says when to retry"
                    );
                    tally.refused.fetch_add(1, Relaxed);
                }
                Ok(r) => panic!(
                    "unexpected {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                // Connection refused or reset: that process is down; retry on the next.
                Err(_) => {
                    tally.refused.fetch_add(1, Relaxed);
                }
            }
            base = (base + 1) % bases.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acknowledged
}

/// A handle on the database of `config`.
pub async fn store_of(config: &Config) -> Store {
    let url = config.store.clickhouse_url.clone().unwrap();
    Store::new(&url, &config.store)
        .connect()
        .await
        .expect("connect")
}

/// Writes the events of `body` (tenant `acme`) as batch `batch_id`, stamped `now_ms`, straight
/// into `events` while the view `view` is detached: as if an insert stopped before that view ran.
pub async fn insert_bypassing(
    config: &Config,
    view: &str,
    batch_id: u64,
    now_ms: i64,
    body: &serde_json::Value,
) {
    use meterhouse::ingest::parse::{Context, decode};
    let store = store_of(config).await;
    let statement = |verb: &str| format!("{verb} TABLE {view}");
    let run = |sql: String| {
        let store = store.clone();
        async move { store.client().query(&sql).execute().await.unwrap() }
    };
    run(statement("DETACH")).await;
    let catalog = meterhouse::catalog::Catalog::load(config.catalog.as_ref().unwrap()).unwrap();
    let tenant_catalog = catalog.tenant("acme");
    let ctx = Context {
        tenant: &"acme".into(),
        catalog: &tenant_catalog,
        now_ms,
    };
    let mut rows = decode(body.to_string().as_bytes(), false, &ctx)
        .unwrap()
        .rows;
    let mut insert = store
        .client()
        .insert::<meterhouse::store::rows::EventRow>("events")
        .await
        .unwrap();
    for row in &mut rows {
        row.stamp(now_ms, batch_id);
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
    run(statement("ATTACH")).await;
}

/// Ids stored in `database.events`, each as often as stored.
pub async fn stored_ids(store: &Store, database: &str) -> Vec<String> {
    store
        .client()
        .query(&format!(
            "SELECT id FROM {database}.events WHERE tenant = 'acme'"
        ))
        .fetch_all()
        .await
        .unwrap()
}

/// Ages the day grain's re-opening marks of `store` by ten minutes, so that a round of its maintenance takes those days (marks younger than that are
/// left to a later round).
pub async fn age_reopening_marks(store: &meterhouse::store::Store) {
    store
        .client()
        .query("ALTER TABLE rollup_days_reopened UPDATE at = at - 600 WHERE 1")
        .execute()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let left: u64 = store
            .client()
            .query(
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
                 AND table = 'rollup_days_reopened' AND is_done = 0",
            )
            .fetch_one()
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the marks of {} were not aged within 60 s",
            store.database()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
