//! Ingest and usage reads through a local ClickHouse cluster (2 shards × 2 replicas, ZooKeeper)
//! beside one ClickHouse server on the same box, alternately, round by round: the service's
//! events/s into each, each ClickHouse node's CPU per event, and the p50/p99 of a customer's
//! usage (one shard) and of a tenant-wide series (every shard).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::bail;
use meterhouse::app::InProcess;
use meterhouse::config::Config;
use meterhouse::store::local::LocalClickHouse;

use crate::loadgen::{self, KEY, LoadgenArgs, METERS, Measured, Phase, median, percentile};
use crate::local_cluster::cluster::{CLUSTER, LocalCluster};

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Events sent in each phase.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Alternating rounds (one server, then the cluster); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Timed reads of one customer's usage per phase (the tenant-wide series: a tenth).
    #[arg(long, default_value_t = 200)]
    pub reads: usize,
}

/// What a run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub events: usize,
    pub rounds: usize,
    pub cores: usize,
    pub one_server: Side,
    pub cluster: Side,
    /// The cluster's events/s ÷ one server's.
    pub ingest_ratio: f64,
    /// Per ClickHouse node of the cluster (shard, replica): CPU µs per event of the whole run,
    /// and per event of its own shard.
    pub node_cpu_us_per_event: Vec<NodeCpu>,
}

#[derive(Debug, serde::Serialize)]
pub struct Side {
    pub events_per_s: f64,
    /// CPU per event: the whole box, this process (service and clients), ClickHouse (and, for
    /// the cluster, ZooKeeper).
    pub cpu_us_per_event: loadgen::CpuPerEvent,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub customer_read_p50_ms: f64,
    pub customer_read_p99_ms: f64,
    pub series_read_p50_ms: f64,
    pub series_read_p99_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeCpu {
    pub shard: usize,
    pub replica: usize,
    pub cpu_us_per_event: f64,
    pub cpu_us_per_shard_event: f64,
}

/// One phase: ingest, then reads.
struct Phase1 {
    ingest: Measured,
    acks: Vec<Duration>,
    customer_reads: Vec<Duration>,
    series_reads: Vec<Duration>,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<Report> {
    let scratch =
        std::env::temp_dir().join(format!("meterhouse-clusterbench-{}", std::process::id()));
    let mut single = LocalClickHouse::start(&scratch).await?;
    let cluster = LocalCluster::start("bench", 2, 2).await;
    let load = LoadgenArgs {
        events: args.events,
        batch: args.batch,
        clients: args.clients,
        direct_batch: 0,
        rounds: 1,
        batch_max_events: Config::defaults().batch_max_events,
        clickhouse_url: None,
        replicas: 0,
        redis_url: None,
    };
    let (mut ones, mut clustereds) = (Vec::new(), Vec::new());
    let mut node_ticks = vec![0u64; cluster.nodes.len()];
    let mut cluster_events = 0usize;
    for round in 0..args.rounds.max(1) {
        let bodies = loadgen::make_bodies(&load, &format!("r{round}"));
        let one = phase(
            &single.url(),
            None,
            &format!("bench_one_{round}"),
            &args,
            &bodies,
        )
        .await?;
        eprintln!("round {round}: one server {}", one.ingest);
        let before = ticks_of(&cluster);
        let on_cluster = phase(
            &cluster.urls(),
            Some(CLUSTER),
            &format!("bench_cluster_{round}"),
            &args,
            &bodies,
        )
        .await?;
        for (total, (after, before)) in node_ticks
            .iter_mut()
            .zip(ticks_of(&cluster).into_iter().zip(before))
        {
            *total += after.saturating_sub(before);
        }
        cluster_events += args.events;
        eprintln!("round {round}: cluster {}", on_cluster.ingest);
        ones.push(one);
        clustereds.push(on_cluster);
    }
    // Customers per shard, as placed.
    let per_shard: Vec<f64> = (0..2)
        .map(|s| {
            (0..10_000)
                .filter(|c| {
                    meterhouse::store::cluster::shard_of("load", &format!("cust_{c}"), 2) == s
                })
                .count() as f64
                / 10_000.0
        })
        .collect();
    let tick_us = 1e6 / ticks_per_second();
    let node_cpu_us_per_event = cluster
        .nodes
        .iter()
        .zip(&node_ticks)
        .map(|(node, ticks)| {
            let per_event = *ticks as f64 * tick_us / cluster_events as f64;
            NodeCpu {
                shard: node.shard,
                replica: node.replica,
                cpu_us_per_event: per_event,
                cpu_us_per_shard_event: per_event / per_shard[node.shard],
            }
        })
        .collect();
    let one_server = side(&mut ones);
    let cluster_side = side(&mut clustereds);
    single.stop().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Report {
        events: args.events,
        rounds: args.rounds.max(1),
        cores: loadgen::cores(),
        ingest_ratio: cluster_side.events_per_s / one_server.events_per_s,
        one_server,
        cluster: cluster_side,
        node_cpu_us_per_event,
    })
}

/// The median phase's ingest, and the latencies of every phase together.
fn side(phases: &mut [Phase1]) -> Side {
    let mut ingests: Vec<Measured> = phases.iter().map(|p| p.ingest).collect();
    let ingest = median(&mut ingests);
    let all = |pick: fn(&Phase1) -> &Vec<Duration>| {
        let mut v: Vec<Duration> = phases
            .iter()
            .flat_map(|p| pick(p).iter().copied())
            .collect();
        v.sort_unstable();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    };
    let acks = all(|p| &p.acks);
    let customer = all(|p| &p.customer_reads);
    let series = all(|p| &p.series_reads);
    Side {
        events_per_s: ingest.events_per_s,
        cpu_us_per_event: ingest.cpu,
        ack_p50_ms: acks.0,
        ack_p99_ms: acks.1,
        customer_read_p50_ms: customer.0,
        customer_read_p99_ms: customer.1,
        series_read_p50_ms: series.0,
        series_read_p99_ms: series.1,
    }
}

/// Ingests `bodies` through a service on `url` (a cluster's nodes with `cluster`), then times
/// reads from storage (nothing kept in memory).
async fn phase(
    url: &str,
    cluster: Option<&str>,
    database: &str,
    args: &ClusterArgs,
    bodies: &[String],
) -> anyhow::Result<Phase1> {
    let mut config = Config::defaults();
    config.store.database = database.into();
    config.store.clickhouse_url = Some(url.into());
    config.store.cluster = cluster.map(str::to_owned);
    config.api_keys = format!("{KEY}:load:ingest,loadgen-read-key:load:read");
    config.rate_limit_rps = 1_000_000;
    config.rate_limit_eps = 100_000_000;
    config.usage_cache_customers = 0;
    let catalog = std::env::temp_dir().join(format!("meterhouse-clusterbench-{database}.json"));
    std::fs::write(&catalog, METERS)?;
    config.catalog = Some(catalog.clone());
    let service = InProcess::start(&config).await?;
    let bodies: Arc<Vec<String>> = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let timed = Phase::start();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let endpoint = format!("{}/v1/events", service.base);
        let (bodies, next) = (bodies.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            loadgen::client_loop(&endpoint, &bodies, &next).await
        }));
    }
    let (mut acks, mut accepted) = (Vec::new(), 0);
    for client in clients {
        let (latencies, n) = client.await??;
        acks.extend(latencies);
        accepted += n;
    }
    let ingest = timed.stop(accepted);
    if accepted != args.events {
        bail!("the service accepted {accepted} of {} events", args.events);
    }
    let http = reqwest::Client::new();
    let now = chrono::Utc::now();
    let window = format!(
        "from={}&to={}&window_size=day",
        (now - chrono::TimeDelta::days(1)).format("%Y-%m-%dT00:00:00Z"),
        (now + chrono::TimeDelta::days(1)).format("%Y-%m-%dT00:00:00Z")
    );
    let mut customer_reads = Vec::new();
    for i in 0..args.reads {
        let path = format!(
            "/v1/meters/tokens/query?{window}&customer=cust_{}&group_by=model",
            (i * 37) % 10_000
        );
        customer_reads.push(timed_get(&http, &service.base, &path).await?);
    }
    let mut series_reads = Vec::new();
    for _ in 0..(args.reads / 10).max(1) {
        series_reads.push(
            timed_get(
                &http,
                &service.base,
                &format!("/v1/meters/calls/query?{window}"),
            )
            .await?,
        );
    }
    service.stop().await?;
    let _ = std::fs::remove_file(catalog);
    Ok(Phase1 {
        ingest,
        acks,
        customer_reads,
        series_reads,
    })
}

async fn timed_get(http: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth("loadgen-read-key")
        .send()
        .await?;
    let status = response.status();
    let _ = response.bytes().await?;
    if status != 200 {
        bail!("{path} answered {status}");
    }
    Ok(started.elapsed())
}

/// utime + stime (clock ticks) of each node's process.
fn ticks_of(cluster: &LocalCluster) -> Vec<u64> {
    (0..cluster.nodes.len())
        .map(|i| {
            let Some(pid) = cluster.pid(i) else { return 0 };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // After the command: state is field 3; utime and stime are fields 14 and 15.
            let field = |n: usize| {
                fields
                    .get(n - 3)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            field(14) + field(15)
        })
        .collect()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
