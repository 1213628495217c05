//! `meterhouse soak`: ingest at a steady rate for a long time while readers ask for usage, then
//! check the store. Reports the achieved rate, p50/p99 of acknowledgements and reads, errors,
//! and the process's resident memory over the run (service and harness share the process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use meterhouse::app::InProcess;
use meterhouse::config::Config;
use meterhouse::readmodel::UsageReader;
use meterhouse::store::Store;
use meterhouse::store::local::LocalClickHouse;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long to ingest, in seconds.
    #[arg(long, default_value_t = 600)]
    pub duration_s: u64,
    /// Target events per second.
    #[arg(long, default_value_t = 40_000)]
    pub rate: u64,
    /// Events per request.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Concurrent ingest clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Concurrent readers, each asking for a random subscription's usage or billing state.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Cap of the dedup set (default: the service's); a small cap shows memory once it is full.
    #[arg(long)]
    pub dedup_max_ids: Option<usize>,
    /// Use this ClickHouse instead of starting one in a temporary directory.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Alerts to define before the load, spread over the subscriptions, each on a calls
    /// threshold the run crosses; a webhook receiver in this process times each delivery
    /// from the acknowledgement of the batch that crossed its threshold.
    #[arg(long, default_value_t = 0)]
    pub alerts: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub target_events_per_s: u64,
    pub events_per_s: f64,
    pub acknowledged: u64,
    pub stored: u64,
    pub ingest_errors: usize,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    pub reads: usize,
    pub read_errors: usize,
    pub read_p50_ms: f64,
    pub read_p99_ms: f64,
    /// Usage reads answered from the service's memory, of all its usage reads.
    pub reads_from_memory: f64,
    /// Resident memory after the first tenth of the run, at the end, and at most.
    pub rss_mb_warm: f64,
    pub rss_mb_end: f64,
    pub rss_mb_max: f64,
    /// Resident memory at each tenth of the run.
    pub rss_mb_by_tenth: Vec<f64>,
    /// CPU seconds this process (service and harness) used while sending, per million events
    /// acknowledged.
    pub cpu_s_per_million_events: f64,
    pub alerts: usize,
    /// Alert thresholds the acknowledged events crossed, webhooks that arrived for them,
    /// arrivals of an event already received, and crossings without a webhook.
    pub alerts_crossed: usize,
    pub webhooks_received: usize,
    pub webhook_duplicates: usize,
    pub webhooks_missing: usize,
    /// From the acknowledgement that crossed a threshold to the webhook's arrival (0 when it
    /// arrived first, counted in `webhooks_before_ack`).
    pub webhook_p50_ms: f64,
    pub webhook_p99_ms: f64,
    pub webhook_max_ms: f64,
    pub webhooks_before_ack: usize,
}

const CUSTOMERS: usize = 100;
const MODELS: [&str; 2] = ["a", "b"];
const INGEST_KEY: &str = "soak-ingest-key";
const ADMIN_KEY: &str = "soak-admin-key";
const READ_KEY: &str = "soak-read-key";

fn catalog() -> String {
    let start = (chrono::Utc::now() - chrono::TimeDelta::days(1)).to_rfc3339();
    let customers: Vec<_> = (0..CUSTOMERS)
        .map(|i| json!({"external_id": format!("s{i}"), "name": format!("Soak {i}")}))
        .collect();
    let subscriptions: Vec<_> = (0..CUSTOMERS)
        .map(|i| json!({"external_id": format!("sub{i}"), "customer": format!("s{i}"), "plan": "soak", "start_date": start}))
        .collect();
    json!({"tenants": [{"id": "soak",
        "meters": [
            {"slug": "calls", "name": "Calls", "event_type": "api_call", "aggregation": "count"},
            {"slug": "tokens", "name": "Tokens", "event_type": "api_call", "aggregation": "sum",
             "value_property": "tokens", "group_by": ["model"]}],
        "plans": [{"code": "soak", "name": "Soak", "currency": "USD", "interval": "month", "prices": [
            {"code": "base", "type": "flat", "amount": "10.00"},
            {"code": "calls", "type": "usage", "meter": "calls", "model": "graduated", "included_units": "1000",
             "tiers": [{"up_to": "100000", "unit_amount": "0.001"}, {"up_to": null, "unit_amount": "0.0005"}]},
            {"code": "tokens", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
             "package_amount": "0.02", "group_by": ["model"]}]}],
        "customers": customers,
        "subscriptions": subscriptions}]})
    .to_string()
}

/// The share of usage reads the service answered from memory.
fn memory_share(usage: &UsageReader) -> f64 {
    let cache = usage.cache();
    let hits = cache.hits.load(Ordering::Relaxed) as f64;
    let reads = hits + cache.misses.load(Ordering::Relaxed) as f64;
    if reads > 0.0 { hits / reads } else { 0.0 }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds this process has used (user and system).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

pub async fn run(args: SoakArgs) -> anyhow::Result<SoakReport> {
    let scratch = std::env::temp_dir().join(format!("meterhouse-soak-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (url, owned) =
        LocalClickHouse::given_or_started(args.clickhouse_url.as_deref(), &scratch).await?;
    let mut config = Config::defaults();
    config.store.clickhouse_url = Some(url.clone());
    config.store.database = "soak".into();
    config.api_keys =
        format!("{INGEST_KEY}:soak:ingest,{READ_KEY}:soak:read,{ADMIN_KEY}:soak:admin");
    config.rate_limit_rps = 1_000_000;
    config.rate_limit_eps = 100_000_000;
    if let Some(cap) = args.dedup_max_ids {
        config.dedup_max_ids = cap;
    }
    let catalog_path = scratch.join("catalog.json");
    std::fs::write(&catalog_path, catalog())?;
    config.catalog = Some(catalog_path);
    Store::new(&url, &config.store)
        .connect()
        .await?
        .client()
        .query("DROP DATABASE IF EXISTS soak")
        .execute()
        .await?;
    let service = InProcess::start(&config).await?;
    let base = service.base.clone();

    let http = reqwest::Client::new();
    let alerts = Alerts::define(&http, &base, &args).await?;
    let cpu_before = cpu_s();
    let started = Instant::now();
    let run_for = Duration::from_secs(args.duration_s);
    let batches = (args.rate * args.duration_s).div_ceil(args.batch as u64) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let mut ingest = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (http, base, next, args) = (http.clone(), base.clone(), next.clone(), args.clone());
        let alerts = alerts.clone();
        ingest.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut accepted) = (Vec::new(), 0usize, 0u64);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= batches {
                    break;
                }
                // Batch k is due at k × batch / rate seconds: a steady rate, not a burst.
                let due = started
                    + Duration::from_secs_f64(k as f64 * args.batch as f64 / args.rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let now = chrono::Utc::now().timestamp_millis();
                let events: Vec<_> = (0..args.batch)
                    .map(|i| {
                        let n = k * args.batch + i;
                        json!({"id": format!("soak-{n}"), "customer": format!("s{}", n % CUSTOMERS),
                               "type": "api_call", "timestamp": now,
                               "properties": {"tokens": 10 + n % 900, "model": MODELS[n % 2]}})
                    })
                    .collect();
                let mut per_customer = [0u64; CUSTOMERS];
                for i in 0..args.batch {
                    per_customer[(k * args.batch + i) % CUSTOMERS] += 1;
                }
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(INGEST_KEY)
                    .json(&events)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 202 => {
                        let ack: serde_json::Value = r.json().await.unwrap_or_default();
                        accepted += ack["accepted"].as_u64().unwrap_or(0);
                        latencies.push(sent.elapsed());
                        alerts.acknowledged(&per_customer);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors, accepted)
        }));
    }
    let reading = Arc::new(AtomicBool::new(true));
    let mut readers = Vec::new();
    for r in 0..args.readers {
        let (http, base, reading) = (http.clone(), base.clone(), reading.clone());
        readers.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut i) = (Vec::new(), 0usize, r);
            while reading.load(Ordering::Relaxed) {
                i = (i * 7 + 13) % CUSTOMERS;
                let path = if i % 2 == 0 {
                    format!("/v1/subscriptions/sub{i}/usage")
                } else {
                    format!("/v1/customers/s{i}/billing_state")
                };
                let sent = Instant::now();
                match http
                    .get(format!("{base}{path}"))
                    .bearer_auth(READ_KEY)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => latencies.push(sent.elapsed()),
                    _ => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (latencies, errors)
        }));
    }
    let (mut rss_warm, mut rss_max, mut by_tenth) = (0.0f64, 0.0f64, Vec::new());
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_mb();
        rss_max = rss_max.max(rss);
        if rss_warm == 0.0 && started.elapsed() >= run_for / 10 {
            rss_warm = rss;
        }
        if started.elapsed() >= run_for.mul_f64((by_tenth.len() + 1) as f64 / 10.0) {
            by_tenth.push((rss * 10.0).round() / 10.0);
        }
    }
    let (mut ingest_latencies, mut ingest_errors, mut acknowledged) = (Vec::new(), 0, 0);
    for task in ingest {
        let (latencies, errors, accepted) = task.await?;
        ingest_latencies.extend(latencies);
        ingest_errors += errors;
        acknowledged += accepted;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_s() - cpu_before;
    reading.store(false, Ordering::Relaxed);
    let (mut read_latencies, mut read_errors) = (Vec::new(), 0);
    for task in readers {
        let (latencies, errors) = task.await?;
        read_latencies.extend(latencies);
        read_errors += errors;
    }
    let rss_end = rss_mb();
    let reads_from_memory = memory_share(&service.usage);
    let webhooks = alerts.settle().await;
    service.stop().await?;
    let store = Store::new(&url, &config.store).connect().await?;
    let stored = store
        .client()
        .query("SELECT count() FROM soak.events WHERE tenant = 'soak'")
        .fetch_one::<u64>()
        .await?;
    store.client().query("DROP DATABASE soak").execute().await?;
    if let Some(mut local) = owned {
        local.stop().await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    ingest_latencies.sort_unstable();
    read_latencies.sort_unstable();
    let report = SoakReport {
        duration_s: elapsed,
        target_events_per_s: args.rate,
        events_per_s: acknowledged as f64 / elapsed,
        acknowledged,
        stored,
        ingest_errors,
        ingest_p50_ms: percentile(&ingest_latencies, 0.50),
        ingest_p99_ms: percentile(&ingest_latencies, 0.99),
        reads: read_latencies.len(),
        read_errors,
        read_p50_ms: percentile(&read_latencies, 0.50),
        read_p99_ms: percentile(&read_latencies, 0.99),
        reads_from_memory,
        rss_mb_warm: rss_warm,
        rss_mb_end: rss_end,
        rss_mb_max: rss_max,
        rss_mb_by_tenth: by_tenth,
        cpu_s_per_million_events: cpu / (acknowledged.max(1) as f64 / 1e6),
        alerts: args.alerts,
        alerts_crossed: webhooks.crossed,
        webhooks_received: webhooks.received,
        webhook_duplicates: webhooks.duplicates,
        webhooks_missing: webhooks.missing,
        webhook_p50_ms: percentile(&webhooks.latencies, 0.50),
        webhook_p99_ms: percentile(&webhooks.latencies, 0.99),
        webhook_max_ms: percentile(&webhooks.latencies, 1.0),
        webhooks_before_ack: webhooks.before_ack,
    };
    if stored != acknowledged {
        bail!("{acknowledged} events acknowledged but {stored} stored: {report:?}");
    }
    Ok(report)
}

/// The alerts of a run and what became of them: thresholds crossed (when the acknowledgement
/// that crossed each arrived) and webhooks received (when).
#[derive(Clone, Default)]
struct Alerts {
    /// Per customer, its thresholds in calls, ascending.
    thresholds: Arc<Vec<Vec<u64>>>,
    /// Per customer, the calls acknowledged so far.
    acknowledged: Arc<Vec<std::sync::atomic::AtomicU64>>,
    crossed: Arc<Mutex<HashMap<(usize, u64), Instant>>>,
    /// (customer, threshold) → arrivals; event id → how many times it arrived.
    arrived: Arc<Mutex<HashMap<(usize, u64), Instant>>>,
    events: Arc<Mutex<HashMap<String, usize>>>,
}

/// What the alerts' webhooks did.
struct Webhooks {
    crossed: usize,
    received: usize,
    duplicates: usize,
    missing: usize,
    before_ack: usize,
    latencies: Vec<Duration>,
}

impl Alerts {
    /// Starts the receiver, registers it, and defines `args.alerts` alerts: customer c's m-th
    /// alert fires at the share (m + 1) / (its alerts + 1) of the calls the run sends it.
    async fn define(http: &reqwest::Client, base: &str, args: &SoakArgs) -> anyhow::Result<Self> {
        let per_customer_calls = args.rate * args.duration_s / CUSTOMERS as u64;
        let mut thresholds = vec![Vec::new(); CUSTOMERS];
        let each = args.alerts.div_ceil(CUSTOMERS) as u64;
        for j in 0..args.alerts {
            let m = (j / CUSTOMERS) as u64;
            thresholds[j % CUSTOMERS].push((per_customer_calls * (m + 1) / (each + 1)).max(1));
        }
        let alerts = Self {
            thresholds: Arc::new(thresholds),
            acknowledged: Arc::new((0..CUSTOMERS).map(|_| Default::default()).collect()),
            ..Self::default()
        };
        if args.alerts == 0 {
            return Ok(alerts);
        }
        let receiver = alerts.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let receiver = receiver.clone();
                async move { receiver.received(&body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let admin = |path: &str, body: serde_json::Value| {
            http.post(format!("{base}{path}"))
                .bearer_auth(ADMIN_KEY)
                .json(&body)
                .send()
        };
        let created = admin("/v1/webhook_endpoints", json!({"url": url})).await?;
        anyhow::ensure!(created.status() == 201, "endpoint: {}", created.status());
        for (c, thresholds) in alerts.thresholds.iter().enumerate() {
            for t in thresholds {
                let alert = json!({"code": format!("a{c}_{t}"), "subscription": format!("sub{c}"),
                    "price": "calls", "threshold": t.to_string()});
                let created = admin("/v1/alerts", alert).await?;
                anyhow::ensure!(created.status() == 201, "alert: {}", created.status());
            }
        }
        Ok(alerts)
    }

    fn received(&self, body: &str) -> axum::http::StatusCode {
        let at = Instant::now();
        let event: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let data = &event["data"];
        let customer = data["customer"].as_str().and_then(|c| c.strip_prefix('s'));
        let threshold = data["threshold"]
            .as_str()
            .and_then(|t| t.parse::<u64>().ok());
        if let (Some(Ok(customer)), Some(threshold)) = (customer.map(str::parse), threshold) {
            lock(&self.arrived)
                .entry((customer, threshold))
                .or_insert(at);
        }
        *lock(&self.events)
            .entry(event["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
        axum::http::StatusCode::OK
    }

    /// Calls per customer of a batch just acknowledged.
    fn acknowledged(&self, calls: &[u64; CUSTOMERS]) {
        let now = Instant::now();
        for (c, n) in calls.iter().enumerate() {
            let before = self.acknowledged[c].fetch_add(*n, Ordering::Relaxed);
            for t in &self.thresholds[c] {
                if before < *t && *t <= before + n {
                    lock(&self.crossed).insert((c, *t), now);
                }
            }
        }
    }

    /// Waits (at most 30 s) for a webhook of every threshold crossed; what arrived.
    async fn settle(&self) -> Webhooks {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&self.arrived).len() < lock(&self.crossed).len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Late duplicates would show within a few more seconds.
        if !self.thresholds.iter().all(Vec::is_empty) {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let crossed = lock(&self.crossed).clone();
        let arrived = lock(&self.arrived).clone();
        let events = lock(&self.events).clone();
        let (mut latencies, mut before_ack) = (Vec::new(), 0);
        for (key, acked) in &crossed {
            if let Some(at) = arrived.get(key) {
                if at < acked {
                    before_ack += 1;
                }
                latencies.push(at.saturating_duration_since(*acked));
            }
        }
        latencies.sort_unstable();
        Webhooks {
            crossed: crossed.len(),
            received: events.values().sum(),
            duplicates: events.values().map(|n| n - 1).sum(),
            missing: crossed.len() - latencies.len(),
            before_ack,
            latencies,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
