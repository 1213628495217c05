//! `meterhouse loadgen`: drives the ingest API over HTTP with many concurrent clients and
//! measures events/s and acknowledgement latency, beside a baseline: the same rows
//! bulk-inserted straight into ClickHouse (same tables and views) by the harness itself.
//! A second baseline inserts into only the tables ingest must write (`events` and the samples
//! its view fills), without the rollup and change views. Each phase also reports the CPU it
//! cost per event, split between this process and the rest of the box (ClickHouse), because
//! on a small box CPU, not waiting, bounds the rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use meterhouse::app::InProcess;
use meterhouse::catalog::Catalog;
use meterhouse::config::Config;
use meterhouse::ingest::parse::{self, Context};
use meterhouse::store::local::LocalClickHouse;
use meterhouse::store::rows::EventRow;
use meterhouse::store::{Store, migrate};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Events to send in each phase.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: usize,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Rows per direct insert in the baseline.
    #[arg(long, default_value_t = 100_000)]
    pub direct_batch: usize,
    /// Alternating rounds of baseline and service; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The service's `--batch-max-events`: the largest insert it makes.
    #[arg(long, default_value_t = Config::defaults().batch_max_events)]
    pub batch_max_events: usize,
    /// Use this ClickHouse instead of starting one in a temporary directory.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Also measure this many replicas sharing their dedup through Redis (0: not), each client
    /// sending to one of them.
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// The Redis of the replicas phase; unset, `redis-server` is started in a temporary
    /// directory.
    #[arg(long)]
    pub redis_url: Option<String>,
}

pub const METERS: &str = r#"{"tenants": [{"id": "load", "meters": [
  {"slug": "calls", "name": "Calls", "event_type": "api_call", "aggregation": "count"},
  {"slug": "tokens", "name": "Tokens", "event_type": "api_call", "aggregation": "sum",
   "value_property": "tokens", "group_by": ["model"]}]}]}"#;
pub const KEY: &str = "loadgen-ingest-key";

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub events: usize,
    pub rounds: usize,
    pub clients: usize,
    pub events_per_request: usize,
    pub direct_events_per_s: f64,
    /// Into `events` and its samples only: what ClickHouse can take of the rows ingest must
    /// write, without the rollup and change views the reads rely on.
    pub direct_required_events_per_s: f64,
    pub service_events_per_s: f64,
    pub ratio: f64,
    pub cores: usize,
    pub direct_cpu: CpuPerEvent,
    pub direct_required_cpu: CpuPerEvent,
    pub service_cpu: CpuPerEvent,
    /// `cores` seconds of CPU per second divided by the service phase's CPU per event: the
    /// rate at which this box runs out of CPU at that cost, whatever the batching.
    pub service_cpu_bound_events_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    /// The replicas phase (`--replicas`), if measured.
    pub shared: Option<SharedReport>,
}

/// Replicas sharing their dedup through Redis, in the same rounds as the phases above.
#[derive(Debug, serde::Serialize)]
pub struct SharedReport {
    pub replicas: usize,
    pub events_per_s: f64,
    /// Against one process with the embedded dedup (`service_events_per_s`).
    pub ratio_to_one_process: f64,
    /// Against ClickHouse's own bulk insert (`direct_events_per_s`).
    pub ratio_to_direct: f64,
    pub cpu: CpuPerEvent,
    pub redis_commands_per_event: f64,
    /// Bytes Redis received and sent, per event.
    pub redis_bytes_in_per_event: f64,
    pub redis_bytes_out_per_event: f64,
    /// Redis's own CPU time per event (part of the box's `cpu.clickhouse_us`, the CPU of
    /// everything but this process).
    pub redis_cpu_us_per_event: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    let scratch = tempfile_dir()?;
    let (url, owned) =
        LocalClickHouse::given_or_started(args.clickhouse_url.as_deref(), &scratch).await?;
    let run_id = format!("{:x}", rand::random::<u32>());
    let bodies = make_bodies(&args, &run_id);
    let (mut directs, mut requireds, mut services) = (Vec::new(), Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    let redis = match (args.replicas, &args.redis_url) {
        (0, _) => None,
        (_, Some(url)) => Some((url.clone(), None)),
        (_, None) => {
            let (url, server) = start_redis(&scratch).await?;
            Some((url, Some(server)))
        }
    };
    let (mut shareds, mut shared_latencies, mut redis_use) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let direct = direct_baseline(&url, &args, &bodies, false).await?;
        let required = direct_baseline(&url, &args, &bodies, true).await?;
        let (service, round_latencies) = through_service(&url, &args, &bodies, None).await?;
        eprintln!(
            "round {round}: direct {direct}, required tables only {required}, service {service}"
        );
        if let Some((redis_url, _)) = &redis {
            let before = RedisUse::read(redis_url).await?;
            let replicas = Some((args.replicas, redis_url.as_str()));
            let (shared, round_latencies) = through_service(&url, &args, &bodies, replicas).await?;
            redis_use.push(RedisUse::read(redis_url).await?.minus(before));
            eprintln!(
                "round {round}: {} replicas, shared dedup {shared}",
                args.replicas
            );
            shareds.push(shared);
            shared_latencies.extend(round_latencies);
        }
        directs.push(direct);
        requireds.push(required);
        services.push(service);
        latencies.extend(round_latencies);
    }
    drop(redis);
    latencies.sort_unstable();
    shared_latencies.sort_unstable();
    let (direct, required, service) = (
        median(&mut directs),
        median(&mut requireds),
        median(&mut services),
    );
    let cores = cores();
    if let Some(mut local) = owned {
        local.stop().await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let pct = |p: f64| percentile(&latencies, p);
    let shared = (!shareds.is_empty()).then(|| {
        let measured = median(&mut shareds);
        let events = (args.events * redis_use.len()) as f64;
        let total = redis_use
            .iter()
            .fold(RedisUse::default(), |a, b| a.plus(*b));
        SharedReport {
            replicas: args.replicas,
            events_per_s: measured.events_per_s,
            ratio_to_one_process: measured.events_per_s / service.events_per_s,
            ratio_to_direct: measured.events_per_s / direct.events_per_s,
            cpu: measured.cpu,
            redis_commands_per_event: total.commands as f64 / events,
            redis_bytes_in_per_event: total.bytes_in as f64 / events,
            redis_bytes_out_per_event: total.bytes_out as f64 / events,
            redis_cpu_us_per_event: total.cpu_us as f64 / events,
            ack_p50_ms: percentile(&shared_latencies, 0.50),
            ack_p99_ms: percentile(&shared_latencies, 0.99),
        }
    });
    let report = Report {
        events: args.events,
        rounds: args.rounds.max(1),
        clients: args.clients,
        events_per_request: args.batch,
        direct_events_per_s: direct.events_per_s,
        direct_required_events_per_s: required.events_per_s,
        service_events_per_s: service.events_per_s,
        ratio: service.events_per_s / direct.events_per_s,
        cores,
        direct_cpu: direct.cpu,
        direct_required_cpu: required.cpu,
        service_cpu: service.cpu,
        service_cpu_bound_events_per_s: cores as f64 * 1e6 / service.cpu.total_us,
        ack_p50_ms: pct(0.50),
        ack_p99_ms: pct(0.99),
        ack_max_ms: pct(1.0),
        shared,
    };
    Ok(report)
}

/// The `p` quantile of sorted `latencies`, in ms.
pub fn percentile(latencies: &[Duration], p: f64) -> f64 {
    latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
}

/// `redis-server` on a free loopback port, keeping nothing on disk.
/// A `redis-server` the harness started, stopped when dropped (also when a phase fails).
struct OwnedRedis(std::process::Child);

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_redis(scratch: &std::path::Path) -> anyhow::Result<(String, OwnedRedis)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(scratch)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(OwnedRedis)
        .context("starting redis-server (scripts/install-deps --tests installs it)")?;
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if RedisUse::read(&url).await.is_ok() {
            return Ok((url, server));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not answer on {url}")
}

/// Redis's own counters: commands processed, bytes received and sent, CPU time (µs).
#[derive(Debug, Clone, Copy, Default)]
struct RedisUse {
    commands: u64,
    bytes_in: u64,
    bytes_out: u64,
    cpu_us: u64,
}

impl RedisUse {
    async fn read(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").query_async(&mut connection).await?;
        let field = |name: &str| -> f64 {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let cpu_s = field("used_cpu_sys") + field("used_cpu_user");
        Ok(Self {
            commands: field("total_commands_processed") as u64,
            bytes_in: field("total_net_input_bytes") as u64,
            bytes_out: field("total_net_output_bytes") as u64,
            cpu_us: (cpu_s * 1e6) as u64,
        })
    }

    fn minus(self, before: Self) -> Self {
        Self {
            commands: self.commands.saturating_sub(before.commands),
            bytes_in: self.bytes_in.saturating_sub(before.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            cpu_us: self.cpu_us.saturating_sub(before.cpu_us),
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            commands: self.commands + other.commands,
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
            cpu_us: self.cpu_us + other.cpu_us,
        }
    }
}

/// The median round by rate, with that round's CPU figures.
pub fn median(rounds: &mut [Measured]) -> Measured {
    rounds.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    rounds[rounds.len() / 2]
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What one phase of a round measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub events_per_s: f64,
    pub cpu: CpuPerEvent,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} events/s ({})", self.events_per_s, self.cpu)
    }
}

/// CPU time per event of one phase, in microseconds: the whole box, and the part spent by
/// this process (the service and the load clients, or the baseline's row encoding). The rest
/// is ClickHouse's (nothing else runs on a benchmark box).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuPerEvent {
    pub total_us: f64,
    pub harness_us: f64,
    pub clickhouse_us: f64,
}

impl std::fmt::Display for CpuPerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU µs/event: {:.1} ClickHouse + {:.1} harness",
            self.clickhouse_us, self.harness_us
        )
    }
}

/// CPU counters from procfs, in clock ticks: the box's busy and total time over all cores,
/// and this process's user and system time. Zero where procfs is missing.
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuTicks {
    pub(crate) busy: u64,
    pub(crate) total: u64,
    pub(crate) own: u64,
}

impl CpuTicks {
    fn now() -> Self {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        Self::parse(&read("/proc/stat"), &read("/proc/self/stat"))
    }

    /// From the texts of `/proc/stat` and `/proc/self/stat`.
    pub(crate) fn parse(stat: &str, own_stat: &str) -> Self {
        let fields: Vec<u64> = stat
            .lines()
            .find(|line| line.starts_with("cpu "))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal; idle and iowait are not busy.
        let total: u64 = fields.iter().take(8).sum();
        let idle: u64 = fields.iter().skip(3).take(2).sum();
        // utime and stime are the 12th and 13th fields after the command name, which is in
        // parentheses and may itself hold spaces and parentheses.
        let after_name = own_stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let own: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        Self {
            busy: total.saturating_sub(idle),
            total,
            own,
        }
    }

    /// Per event between `self` and `later`, over `elapsed` seconds on `cores` cores.
    pub(crate) fn per_event(
        self,
        later: Self,
        elapsed: f64,
        cores: usize,
        events: usize,
    ) -> CpuPerEvent {
        let total = later.total.saturating_sub(self.total);
        if total == 0 || events == 0 {
            return CpuPerEvent::default();
        }
        // Ticks per second of one core, from the ticks all cores counted over the phase.
        let hz = total as f64 / (elapsed * cores as f64);
        let us = |ticks: u64| ticks as f64 / hz * 1e6 / events as f64;
        let (busy, own) = (
            later.busy.saturating_sub(self.busy),
            later.own.saturating_sub(self.own),
        );
        CpuPerEvent {
            total_us: us(busy),
            harness_us: us(own),
            clickhouse_us: us(busy.saturating_sub(own)),
        }
    }
}

/// The timed part of a phase: wall time and CPU ticks since its start.
pub struct Phase {
    before: CpuTicks,
    started: Instant,
}

impl Phase {
    pub fn start() -> Self {
        Self {
            before: CpuTicks::now(),
            started: Instant::now(),
        }
    }

    /// Events/s and CPU per event of `events` handled since the start.
    pub fn stop(self, events: usize) -> Measured {
        let elapsed = self.started.elapsed().as_secs_f64();
        Measured {
            events_per_s: events as f64 / elapsed,
            cpu: self
                .before
                .per_event(CpuTicks::now(), elapsed, cores(), events),
        }
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("meterhouse-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Request bodies (JSON arrays), rendered before anything is timed.
pub fn make_bodies(args: &LoadgenArgs, run_id: &str) -> Vec<String> {
    let now = chrono::Utc::now().timestamp_millis();
    let models = ["gpt-x", "gpt-y", "small"];
    (0..args.events.div_ceil(args.batch))
        .map(|b| {
            let events: Vec<_> = (b * args.batch..((b + 1) * args.batch).min(args.events))
                .map(|i| {
                    json!({"id": format!("{run_id}-{i}"), "customer": format!("cust_{}", i % 10_000),
                           "type": "api_call", "timestamp": now - (i % 3_600_000) as i64,
                           "properties": {"tokens": 100 + i % 5_000, "model": models[i % 3]}})
                })
                .collect();
            serde_json::to_string(&events).unwrap_or_default()
        })
        .collect()
}

fn store_config(database: &str) -> meterhouse::config::StoreConfig {
    let mut config = Config::defaults().store;
    config.database = database.into();
    config
}

/// Rows/s (and CPU per row) of bulk inserts of the same events (samples included) straight into
/// ClickHouse; with `required_only`, into `events` and the samples view alone.
async fn direct_baseline(
    url: &str,
    args: &LoadgenArgs,
    bodies: &[String],
    required_only: bool,
) -> anyhow::Result<Measured> {
    let database = if required_only {
        "loadgen_required"
    } else {
        "loadgen_direct"
    };
    let store = Store::new(url, &store_config(database)).connect().await?;
    migrate::run(&store).await?;
    if required_only {
        keep_only_samples_view(&store).await?;
    }
    let catalog = Catalog::from_json(METERS)?;
    let tenant = catalog.tenant("load");
    let ctx = Context {
        tenant: &"load".into(),
        catalog: &tenant,
        now_ms: chrono::Utc::now().timestamp_millis(),
    };
    let mut rows: Vec<EventRow> = Vec::with_capacity(args.events);
    for body in bodies {
        let validated =
            parse::decode(body.as_bytes(), false, &ctx).map_err(|e| anyhow::anyhow!("{e}"))?;
        rows.extend(validated.rows);
    }
    let phase = Phase::start();
    for chunk in rows.chunks(args.direct_batch) {
        let mut insert = store.client().insert::<EventRow>("events").await?;
        for row in chunk {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    let measured = phase.stop(rows.len());
    // Leave no merges behind to slow the next phase.
    store
        .client()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await?;
    Ok(measured)
}

/// Drops every view on `events` (named `events_to_*`, as the migrations name them) but the one
/// that writes its samples.
async fn keep_only_samples_view(store: &Store) -> anyhow::Result<()> {
    const SAMPLES_VIEW: &str = "events_to_usage_samples";
    let views: Vec<String> = store
        .client()
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND engine = 'MaterializedView' AND name LIKE 'events_to_%'",
        )
        .fetch_all()
        .await?;
    if !views.iter().any(|v| v == SAMPLES_VIEW) {
        bail!("no view {SAMPLES_VIEW} among {views:?}");
    }
    for view in views.iter().filter(|v| *v != SAMPLES_VIEW) {
        store
            .client()
            .query(&format!("DROP TABLE {view}"))
            .execute()
            .await?;
    }
    Ok(())
}

/// Events/s through the HTTP API, and each request's acknowledgement latency (sorted).
/// The service phase: one process with the embedded dedup, or (`replicas`) that many sharing
/// it through Redis, the clients spread over them.
async fn through_service(
    url: &str,
    args: &LoadgenArgs,
    bodies: &[String],
    replicas: Option<(usize, &str)>,
) -> anyhow::Result<(Measured, Vec<Duration>)> {
    let mut config = Config::defaults();
    // A database of its own for each replicas phase: its ids in Redis are under its name, so
    // a phase starts as a first deployment does, whatever an earlier one left there.
    let database = match replicas {
        Some(_) => format!("loadgen_shared_{:08x}", rand::random::<u32>()),
        None => "loadgen_service".to_owned(),
    };
    config.store = store_config(&database);
    config.store.clickhouse_url = Some(url.into());
    config.api_keys = format!("{KEY}:load:ingest");
    config.batch_max_events = args.batch_max_events;
    config.rate_limit_rps = 1_000_000;
    config.rate_limit_eps = 100_000_000;
    let catalog_path =
        std::env::temp_dir().join(format!("meterhouse-loadgen-{}.json", std::process::id()));
    std::fs::write(&catalog_path, METERS)?;
    config.catalog = Some(catalog_path.clone());
    {
        let store = Store::new(url, &config.store).connect().await?;
        store
            .client()
            .query(&format!("DROP DATABASE IF EXISTS {database}"))
            .execute()
            .await?;
    }
    let count = match replicas {
        Some((count, redis)) => {
            config.redis_url = Some(redis.to_owned());
            // Ids left in Redis expire within the hour.
            config.dedup_window_hours = 1;
            count.max(1)
        }
        None => 1,
    };
    let mut services = Vec::new();
    for _ in 0..count {
        services.push(InProcess::start(&config).await?);
    }
    let bodies: Arc<Vec<String>> = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let phase = Phase::start();
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let endpoint = format!("{}/v1/events", services[c % count].base);
        let (bodies, next) = (bodies.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            client_loop(&endpoint, &bodies, &next).await
        }));
    }
    let mut latencies = Vec::new();
    let mut accepted = 0;
    for client in clients {
        let (lat, acc) = client.await??;
        latencies.extend(lat);
        accepted += acc;
    }
    let measured = phase.stop(accepted);
    let batches: u64 = services
        .iter()
        .map(|s| s.metrics.batches_inserted.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "service ({count} process): {batches} inserts, {:.0} events each on average",
        accepted as f64 / batches.max(1) as f64
    );
    for service in services {
        service.stop().await?;
    }
    let _ = std::fs::remove_file(catalog_path);
    let store = Store::new(url, &config.store).connect().await?;
    store
        .client()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await?;
    if accepted != args.events {
        bail!("service accepted {accepted} of {} events", args.events);
    }
    Ok((measured, latencies))
}

pub async fn client_loop(
    endpoint: &str,
    bodies: &[String],
    next: &AtomicUsize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut latencies = Vec::new();
    let mut accepted = 0;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = bodies.get(i) else { break };
        let started = Instant::now();
        let response = http
            .post(endpoint)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .context("posting events")?;
        let status = response.status();
        let ack: serde_json::Value = response.json().await?;
        if status != 202 {
            bail!("ingest answered {status}: {ack}");
        }
        latencies.push(started.elapsed());
        accepted += ack["accepted"].as_u64().unwrap_or(0) as usize;
    }
    Ok((latencies, accepted))
}
