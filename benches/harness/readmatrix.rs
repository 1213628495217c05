//! `readbench --matrix`: storage reads against the naive raw scan across customer densities, in
//! one store (the heaviest customer shares the box with many light ones): customers with 10,
//! 300, 10,000 and 1,000,000 events a day for 30 days, one plan with three usage prices, the
//! answers kept in memory turned off. Each density is read over three windows (the current
//! period, seven ragged days, one UTC day), twice: before the day grain is built (the hour
//! rollup and the samples) and after, and with the day grain also `?as_of=` now (no event
//! arrived since: the read checks every hour of the window for late samples, then reads like
//! a read from ClickHouse). Also the daily series of every customer of the tenant.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{TimeDelta, Utc};
use serde_json::Value;

use meterhouse::app::InProcess;
use meterhouse::config::Config;
use meterhouse::domain::Plan;
use meterhouse::store::Store;
use meterhouse::store::local::LocalClickHouse;

use super::{
    ReadbenchArgs, catalog_json, check_same, fresh_store, get, naive_quantities, percentile,
    rate_naive,
};

const DATABASE: &str = "readbench_matrix";
const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

/// Events a day per customer, and customers, of each density.
fn classes(heaviest: u64) -> Vec<(u64, u64)> {
    vec![(10, 1_000), (300, 100), (10_000, 10), (heaviest, 1)]
}

/// Events of one density, through the ingest views: customer `c{per_day}_{i}`, the three
/// metered event types in turn, spread evenly over the 30 days before `now_ms`.
const GENERATE: &str = "INSERT INTO events (tenant, id, customer, event_type, ts_ms, ts, properties, ingested_ms, ingested_at, batch_id, \
     sample_meter, sample_value, sample_value_str, sample_group_keys, sample_group_values) \
     SELECT 'bench', concat(?, '-', toString(n)), concat('c', ?, '_', toString(n % ?)), concat('t', toString(k)), ts_ms, \
       toDateTime(intDiv(ts_ms, 1000)), \
       concat('{\"tokens\":', toString(tok), ',\"model\":\"', model, '\",\"user\":\"', toString(user), '\"}'), \
       ingested, toDateTime(intDiv(ingested, 1000)), toUInt64(0), \
       [concat('m', toString(k))], [toDecimal128(if(k = 1, tok, 1), 12)], [if(k = 2, toString(user), '')], \
       [if(k = 1, ['model'], emptyArrayString())], [if(k = 1, [model], emptyArrayString())] \
     FROM (SELECT number + ? AS n, intDiv(n, ?) % 3 AS k, ? + toInt64(intDiv(n * ?, ?)) AS ts_ms, ? AS ingested, \
       100 + n % 900 AS tok, ['gpt-x', 'gpt-y', 'small'][n % 3 + 1] AS model, n % 5000 AS user \
       FROM numbers(?))";

#[derive(Debug, serde::Serialize)]
pub struct Cell {
    pub events_per_day: u64,
    pub window: &'static str,
    /// `hours`: before the day grain (hour rollup and samples); `days`: with it.
    pub grain: &'static str,
    pub reads: usize,
    pub storage_p50_ms: f64,
    pub storage_p99_ms: f64,
    pub naive_p50_ms: f64,
    pub naive_p99_ms: f64,
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    /// The same reads `?as_of=` now (nothing from memory; rollup hours checked for late
    /// samples); measured with the day grain only.
    pub as_of_p50_ms: Option<f64>,
    pub as_of_p99_ms: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
pub struct MatrixReport {
    pub events: u64,
    pub generate_seconds: f64,
    pub compact_seconds: f64,
    pub cells: Vec<Cell>,
    /// The daily series of every customer over 30 days: p50/p99 ms, hours then days, and naive.
    pub series: Vec<(String, f64, f64)>,
    /// Bytes on disk and primary-key bytes in memory of each table.
    pub tables: Vec<(String, u64, u64, u64)>,
}

pub async fn run(args: ReadbenchArgs) -> anyhow::Result<MatrixReport> {
    let (url, owned) =
        LocalClickHouse::given_or_started(args.clickhouse_url.as_deref(), &args.data_dir).await?;
    let mut config = Config::defaults();
    config.store.clickhouse_url = Some(url.clone());
    config.store.database = DATABASE.into();
    config.api_keys = format!("{}:{}:admin", super::KEY, super::TENANT);
    config.rate_limit_rps = 1_000_000;
    // Storage only: no answer kept in memory, none loaded, no maintenance behind the bench's back.
    config.usage_cache_customers = 0;
    config.light_read_samples = args.light_read_samples;
    config.usage_preload_every_s = 0;
    config.rollup_maintenance_every_s = 0;
    let classes = classes(args.matrix_heaviest);
    let now = Utc::now();
    let (events, generate_seconds) = if args.reuse {
        (0, 0.0)
    } else {
        generate(&url, &config, &classes, now).await?
    };
    let store = Store::new(&url, &config.store).connect().await?;
    let mut cells = Vec::new();
    let mut series = Vec::new();
    let phase = Phase {
        config: &config,
        store: &store,
        args: &args,
        classes: &classes,
    };
    phase.measure("hours", &mut cells, &mut series).await?;

    // The generated days are complete: the marks their events left as late are dropped, then
    // every closed day is sealed.
    let started = Instant::now();
    store
        .client()
        .query("TRUNCATE TABLE rollup_days_reopened")
        .execute()
        .await?;
    loop {
        let round = store
            .compact_days(31, 1_000, Duration::from_secs(600))
            .await?;
        eprintln!(
            "sealed {} days in {:.0} s",
            round.sealed,
            started.elapsed().as_secs_f64()
        );
        if round.sealed == 0 {
            break;
        }
    }
    let compact_seconds = started.elapsed().as_secs_f64();
    phase.measure("days", &mut cells, &mut series).await?;
    let tables = store
        .client()
        .query(
            "SELECT table, sum(rows), sum(bytes_on_disk), sum(primary_key_bytes_in_memory) FROM system.parts \
             WHERE database = currentDatabase() AND active AND table IN ('events', 'usage_samples', 'usage_rollup_hour', 'usage_rollup_day', 'usage_rollup_to_date') \
             GROUP BY table ORDER BY table",
        )
        .fetch_all::<(String, u64, u64, u64)>()
        .await?;
    if let Some(mut local) = owned {
        local.stop().await;
    }
    Ok(MatrixReport {
        events,
        generate_seconds,
        compact_seconds,
        cells,
        series,
        tables,
    })
}

async fn generate(
    url: &str,
    config: &Config,
    classes: &[(u64, u64)],
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<(u64, f64)> {
    // Every current period began 29 days and 7 hours ago.
    let start = now - TimeDelta::days(DAYS - 1) - TimeDelta::hours(7);
    let accounts: Vec<_> = classes
        .iter()
        .flat_map(|&(per_day, count)| (0..count).map(move |i| format!("c{per_day}_{i}")))
        .map(|name| (name.clone(), format!("sub_{name}"), start))
        .collect();
    let store = fresh_store(url, config, DATABASE, &accounts, now).await?;

    let started = Instant::now();
    let now_ms = now.timestamp_millis();
    let span_ms = DAYS * DAY_MS;
    let mut total = 0;
    for &(per_day, count) in classes {
        let events = per_day * count * DAYS as u64;
        let mut offset = 0;
        while offset < events {
            let n = 10_000_000u64.min(events - offset);
            store
                .client()
                .query(GENERATE)
                .bind(per_day.to_string())
                .bind(per_day.to_string())
                .bind(count)
                .bind(offset)
                .bind(count)
                .bind(now_ms - span_ms)
                .bind(span_ms)
                .bind(events)
                .bind(now_ms)
                .bind(n)
                .execute()
                .await
                .context("generating events")?;
            offset += n;
        }
        total += events;
        eprintln!(
            "generated {total} events in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok((total, seconds))
}

/// Waits (up to 30 s) until no period-to-date states have been written for a second.
async fn states_written(store: &Store) -> anyhow::Result<()> {
    let complete = "SELECT count() FROM usage_rollup_to_date WHERE meter = ''";
    let mut last = u64::MAX;
    for _ in 0..30 {
        let now: u64 = store.client().query(complete).fetch_one().await?;
        if now == last {
            return Ok(());
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// What each measured phase shares.
struct Phase<'a> {
    config: &'a Config,
    store: &'a Store,
    args: &'a ReadbenchArgs,
    classes: &'a [(u64, u64)],
}

impl Phase<'_> {
    /// Starts the service, measures every cell and the series as `grain`, stops it.
    async fn measure(
        &self,
        grain: &'static str,
        cells: &mut Vec<Cell>,
        series: &mut Vec<(String, f64, f64)>,
    ) -> anyhow::Result<()> {
        let service = InProcess::start(self.config).await?;
        let measured = measure(&service.base, self, grain, cells, series).await;
        service.stop().await?;
        measured
    }
}

async fn measure(
    base: &str,
    phase: &Phase<'_>,
    grain: &'static str,
    cells: &mut Vec<Cell>,
    series: &mut Vec<(String, f64, f64)>,
) -> anyhow::Result<()> {
    let (store, args, classes) = (phase.store, phase.args, phase.classes);
    let http = reqwest::Client::new();
    let spec = catalog_json();
    let plan: Plan = serde_json::from_str(&spec["plan"].to_string())?;
    let now = Utc::now();
    let at = |t: chrono::DateTime<Utc>| t.to_rfc3339().replace('+', "%2B");
    let today = now.timestamp_millis() / DAY_MS * DAY_MS;
    let day = chrono::DateTime::from_timestamp_millis(today - 3 * DAY_MS).context("day")?;
    let windows: [(&str, String); 3] = [
        ("current period", String::new()),
        (
            "7 ragged days",
            format!(
                "?from={}&to={}",
                at(now - TimeDelta::days(8) - TimeDelta::minutes(197)),
                at(now - TimeDelta::days(1) - TimeDelta::minutes(131))
            ),
        ),
        (
            "one UTC day",
            format!("?from={}&to={}", at(day), at(day + TimeDelta::days(1))),
        ),
    ];
    for &(per_day, count) in classes {
        let reads = if per_day >= 1_000_000 {
            args.samples.min(20)
        } else {
            args.samples.min(200)
        };
        for (window, query) in &windows {
            // Warm-up, not measured: each customer read below, once. The service learns a
            // customer's density from its first read (`readmodel::plan`), so the figures are
            // those of the reads after it: a light customer's from its samples alone.
            // A current period is read three times: a dense customer's second read asks for
            // its states to date, written in the background (`readmodel::to_date`) once a day,
            // two at a time (a request past that is dropped: the third read asks again), and
            // the reads after them take them.
            let warm_ups = if query.is_empty() { 3 } else { 1 };
            let names: std::collections::BTreeSet<String> = (0..reads)
                .map(|i| format!("c{per_day}_{}", (i as u64 * 7919) % count))
                .collect();
            for round in 0..warm_ups {
                for name in &names {
                    get(
                        &http,
                        &format!("{base}/v1/subscriptions/sub_{name}/usage{query}"),
                    )
                    .await?;
                }
                if round > 0 {
                    states_written(store).await?;
                }
            }
            let (mut ours, mut naive, mut as_of) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..reads {
                let name = format!("c{per_day}_{}", (i as u64 * 7919) % count);
                let url = format!("{base}/v1/subscriptions/sub_{name}/usage{query}");
                let started = Instant::now();
                let answer = get(&http, &url).await?;
                ours.push(started.elapsed());
                if grain == "days" {
                    let separator = if query.is_empty() { "?" } else { "&" };
                    let url = format!("{url}{separator}as_of={}", at(Utc::now()));
                    let started = Instant::now();
                    let then = get(&http, &url).await?;
                    as_of.push(started.elapsed());
                    anyhow::ensure!(
                        then["charges"] == answer["charges"],
                        "{name} {window}: as of now {then} differs from {answer}"
                    );
                }
                let started = Instant::now();
                let quantities = naive_quantities(store, &name, &answer).await?;
                let _amounts = rate_naive(&plan, &quantities)?;
                naive.push(started.elapsed());
                check_same(&answer, &quantities).with_context(|| format!("{name} {window}"))?;
            }
            ours.sort_unstable();
            naive.sort_unstable();
            as_of.sort_unstable();
            let measured = |p| (!as_of.is_empty()).then(|| percentile(&as_of, p));
            let cell = Cell {
                events_per_day: per_day,
                window,
                grain,
                reads,
                storage_p50_ms: percentile(&ours, 0.5),
                storage_p99_ms: percentile(&ours, 0.99),
                naive_p50_ms: percentile(&naive, 0.5),
                naive_p99_ms: percentile(&naive, 0.99),
                ratio_p50: percentile(&naive, 0.5) / percentile(&ours, 0.5),
                ratio_p99: percentile(&naive, 0.99) / percentile(&ours, 0.99),
                as_of_p50_ms: measured(0.5),
                as_of_p99_ms: measured(0.99),
            };
            eprintln!("{cell:?}");
            cells.push(cell);
        }
    }
    // The daily series of every customer over 30 days, in UTC.
    let (from, to) = (now - TimeDelta::days(DAYS), now);
    let url = format!(
        "{base}/v1/meters/m1/query?window_size=day&from={}&to={}",
        at(from),
        at(to)
    );
    let naive_sql = "SELECT intDiv(ts_ms, 86400000) AS d, customer, visitParamExtractString(properties, 'model') AS g, \
         toString(sum(visitParamExtractUInt(properties, 'tokens'))) FROM events \
         WHERE tenant = 'bench' AND event_type = 't1' AND ts_ms >= ? AND ts_ms < ? GROUP BY d, customer, g";
    let (mut ours, mut naive) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let started = Instant::now();
        let body: Value = get(&http, &url).await?;
        ours.push(started.elapsed());
        let points = body["data"].as_array().map_or(0, Vec::len);
        let started = Instant::now();
        let rows: Vec<(u64, String, String, String)> = store
            .client()
            .query(naive_sql)
            .bind(from.timestamp_millis())
            .bind(to.timestamp_millis())
            .fetch_all()
            .await?;
        naive.push(started.elapsed());
        anyhow::ensure!(
            points > 0 && rows.len() >= points / 3,
            "series: {points} points, naive {} rows",
            rows.len()
        );
    }
    ours.sort_unstable();
    naive.sort_unstable();
    series.push((
        format!("{grain}: storage"),
        percentile(&ours, 0.5),
        percentile(&ours, 0.99),
    ));
    series.push((
        format!("{grain}: naive"),
        percentile(&naive, 0.5),
        percentile(&naive, 0.99),
    ));
    Ok(())
}
