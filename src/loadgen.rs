//! `meterhouse loadgen`: drives the ingest API over HTTP with many concurrent clients and
//! measures events/s and acknowledgement latency, beside a baseline: the same rows
//! bulk-inserted straight into ClickHouse (same tables and views) by the harness itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::app::InProcess;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingest::parse::{self, Context};
use crate::store::local::LocalClickHouse;
use crate::store::rows::EventRow;
use crate::store::{Store, migrate};

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
    /// Use this ClickHouse instead of starting one in a temporary directory.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
}

const METERS: &str = r#"{"tenants": [{"id": "load", "meters": [
  {"slug": "calls", "name": "Calls", "event_type": "api_call", "aggregation": "count"},
  {"slug": "tokens", "name": "Tokens", "event_type": "api_call", "aggregation": "sum",
   "value_property": "tokens", "group_by": ["model"]}]}]}"#;
const KEY: &str = "loadgen-ingest-key";

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub events: usize,
    pub rounds: usize,
    pub clients: usize,
    pub events_per_request: usize,
    pub direct_events_per_s: f64,
    pub service_events_per_s: f64,
    pub ratio: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    let scratch = tempfile_dir()?;
    let (url, owned) =
        LocalClickHouse::given_or_started(args.clickhouse_url.as_deref(), &scratch).await?;
    let run_id = format!("{:x}", rand::random::<u32>());
    let bodies = make_bodies(&args, &run_id);
    let (mut directs, mut services, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let direct = direct_baseline(&url, &args, &bodies).await?;
        let (service, round_latencies) = through_service(&url, &args, &bodies).await?;
        eprintln!("round {round}: direct {direct:.0} events/s, service {service:.0} events/s");
        directs.push(direct);
        services.push(service);
        latencies.extend(round_latencies);
    }
    latencies.sort_unstable();
    let (direct, service) = (median(&mut directs), median(&mut services));
    if let Some(mut local) = owned {
        local.stop().await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    let report = Report {
        events: args.events,
        rounds: args.rounds.max(1),
        clients: args.clients,
        events_per_request: args.batch,
        direct_events_per_s: direct,
        service_events_per_s: service,
        ratio: service / direct,
        ack_p50_ms: pct(0.50),
        ack_p99_ms: pct(0.99),
        ack_max_ms: pct(1.0),
    };
    Ok(report)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("meterhouse-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Request bodies (JSON arrays), rendered before anything is timed.
fn make_bodies(args: &LoadgenArgs, run_id: &str) -> Vec<String> {
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

fn store_config(database: &str) -> crate::config::StoreConfig {
    let mut config = Config::defaults().store;
    config.database = database.into();
    config
}

/// Rows/s of bulk inserts of the same events (samples included) straight into ClickHouse.
async fn direct_baseline(url: &str, args: &LoadgenArgs, bodies: &[String]) -> anyhow::Result<f64> {
    let store = Store::new(url, &store_config("loadgen_direct"))
        .connect()
        .await?;
    migrate::run(&store).await?;
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
    let started = Instant::now();
    for chunk in rows.chunks(args.direct_batch) {
        let mut insert = store.client().insert::<EventRow>("events").await?;
        for row in chunk {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Leave no merges behind to slow the next phase.
    store
        .client()
        .query("DROP DATABASE loadgen_direct")
        .execute()
        .await?;
    Ok(rows.len() as f64 / elapsed)
}

/// Events/s through the HTTP API, and each request's acknowledgement latency (sorted).
async fn through_service(
    url: &str,
    args: &LoadgenArgs,
    bodies: &[String],
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let mut config = Config::defaults();
    config.store = store_config("loadgen_service");
    config.store.clickhouse_url = Some(url.into());
    config.api_keys = format!("{KEY}:load:ingest");
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
            .query("DROP DATABASE IF EXISTS loadgen_service")
            .execute()
            .await?;
    }
    let service = InProcess::start(&config).await?;
    let endpoint = format!("{}/v1/events", service.base);
    let bodies: Arc<Vec<String>> = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (bodies, next, endpoint) = (bodies.clone(), next.clone(), endpoint.clone());
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
    let elapsed = started.elapsed().as_secs_f64();
    service.stop().await?;
    let _ = std::fs::remove_file(catalog_path);
    let store = Store::new(url, &config.store).connect().await?;
    store
        .client()
        .query("DROP DATABASE loadgen_service")
        .execute()
        .await?;
    if accepted != args.events {
        bail!("service accepted {accepted} of {} events", args.events);
    }
    Ok((accepted as f64 / elapsed, latencies))
}

async fn client_loop(
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
