//! `readbench --pages`: the dashboards' pages on a store `readbench` generated (`--reuse`):
//! the tenant's overview, customers' pages and the meter explorer, each the whole HTTP request
//! (session cookie, reads, rating, HTML and SVG) after the current periods were loaded into
//! memory as the service loads them at start, and the day grain written up to its horizon as
//! the service's maintenance keeps it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;

use meterhouse::app::Application;
use meterhouse::config::Config;
use meterhouse::readmodel::preload::load_current_periods;

use super::{KEY, ReadbenchArgs, TENANT, percentile};

/// Overview renders that read their week from storage (none kept), after the first.
const WEEK_READS: usize = 20;

#[derive(Debug, serde::Serialize)]
pub struct PagesReport {
    pub customers: u64,
    pub samples: usize,
    /// Days written into the day grain before measuring (the maintenance's rounds, at once).
    pub days_sealed: u32,
    /// The overview's first render: its week read from storage.
    pub tenant_first_ms: f64,
    /// Renders of the overview with no week kept ([`WEEK_READS`]): each reads it from storage.
    pub tenant_storage_p50_ms: f64,
    pub tenant_storage_p99_ms: f64,
    /// Renders of the overview with its week kept (read again in the background when stale).
    pub tenant_p50_ms: f64,
    pub tenant_p99_ms: f64,
    pub customer_p50_ms: f64,
    pub customer_p99_ms: f64,
    /// `/dashboard/meters/m1?customer=…`: a day, hourly, split by model.
    pub meter_customer_p50_ms: f64,
    pub meter_customer_p99_ms: f64,
    /// `/dashboard/meters/m0`: a day, hourly, every customer.
    pub meter_all_p50_ms: f64,
    pub meter_all_p99_ms: f64,
    /// Bytes of the HTML of the tenant's overview and of a customer's page.
    pub tenant_bytes: usize,
    pub customer_bytes: usize,
}

pub async fn run(config: &Config, args: &ReadbenchArgs) -> anyhow::Result<PagesReport> {
    let mut config = config.clone();
    config.usage_preload_every_s = 0;
    // The day grain is written up to its horizon once, below, and not maintained meanwhile: a
    // round of maintenance would run beside the measured pages (and stop this one's).
    config.rollup_maintenance_every_s = 0;
    let app = Application::build(&config).await?;
    let state = app.state().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut days_sealed = 0;
    // Each shard keeps its own day grain (one shard on one server).
    for shard in state.store.shards() {
        loop {
            let round = shard
                .compact_days(40, 1_000, Duration::from_secs(600))
                .await?;
            days_sealed += round.sealed;
            if round.sealed == 0 && round.resealed == 0 {
                break;
            }
        }
    }
    load_current_periods(
        &state.usage,
        TENANT,
        &state.catalog.tenant(TENANT),
        Utc::now(),
    )
    .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let link: serde_json::Value = http
        .post(format!("{base}/v1/dashboard/links"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    let url = link["url"].as_str().context("a link")?;
    let opened = http.get(format!("{base}{url}")).send().await?;
    let cookie = opened
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("a session cookie")?
        .to_owned();
    let page = |path: String| {
        let (http, base, cookie) = (&http, &base, &cookie);
        async move {
            let started = Instant::now();
            let response = http
                .get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            if !status.is_success() {
                bail!(
                    "{path}: {status} {}",
                    body.chars().take(300).collect::<String>()
                );
            }
            anyhow::Ok((started.elapsed(), body.len()))
        }
    };
    let pick = |i: usize| (i as u64 * 7919) % args.customers;
    let tenant_first_ms = page("/dashboard".into()).await?.0.as_secs_f64() * 1e3;
    let mut tenant_storage = Vec::with_capacity(WEEK_READS);
    for _ in 0..WEEK_READS {
        state.dashboard.forget_weeks();
        tenant_storage.push(page("/dashboard".into()).await?.0);
    }
    for i in 0..5 {
        page("/dashboard".into()).await?;
        page(format!(
            "/dashboard/customers/cust_{}",
            pick(args.samples + i)
        ))
        .await?;
    }
    let tenant_samples = args.samples.min(50);
    let (mut tenant, mut customer, mut meter_customer, mut meter_all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tenant_bytes, mut customer_bytes) = (0, 0);
    for _ in 0..tenant_samples {
        let (took, bytes) = page("/dashboard".into()).await?;
        tenant.push(took);
        tenant_bytes = bytes;
        let (took, _) = page("/dashboard/meters/m0".into()).await?;
        meter_all.push(took);
    }
    for i in 0..args.samples {
        let (took, bytes) = page(format!("/dashboard/customers/cust_{}", pick(i))).await?;
        customer.push(took);
        customer_bytes = bytes;
        let path = format!(
            "/dashboard/meters/m1?customer=cust_{}&group_by=model",
            pick(i)
        );
        meter_customer.push(page(path).await?.0);
    }
    let _ = stop.send(());
    server.await??;
    let sorted = |mut list: Vec<Duration>| {
        list.sort_unstable();
        list
    };
    let tenant_storage = sorted(tenant_storage);
    let (tenant, customer, meter_customer, meter_all) = (
        sorted(tenant),
        sorted(customer),
        sorted(meter_customer),
        sorted(meter_all),
    );
    Ok(PagesReport {
        customers: args.customers,
        samples: args.samples,
        days_sealed,
        tenant_first_ms,
        tenant_storage_p50_ms: percentile(&tenant_storage, 0.5),
        tenant_storage_p99_ms: percentile(&tenant_storage, 0.99),
        tenant_p50_ms: percentile(&tenant, 0.5),
        tenant_p99_ms: percentile(&tenant, 0.99),
        customer_p50_ms: percentile(&customer, 0.5),
        customer_p99_ms: percentile(&customer, 0.99),
        meter_customer_p50_ms: percentile(&meter_customer, 0.5),
        meter_customer_p99_ms: percentile(&meter_customer, 0.99),
        meter_all_p50_ms: percentile(&meter_all, 0.5),
        meter_all_p99_ms: percentile(&meter_all, 0.99),
        tenant_bytes,
        customer_bytes,
    })
}
