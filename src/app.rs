//! Start-up and shutdown: store (owned or external), migrations, dedup state, catalog, keys,
//! the batcher, and the HTTP server.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::KeyRing;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::ingest::batcher::{self, BatcherHandle, Settings};
use crate::ingest::dedup::DedupSet;
use crate::ingest::ledger::Ledger;
use crate::ingest::shared::Lock;
use crate::ingest::shared::SharedLedger;
use crate::ingest::writers::{DedupMode, Writer, WriterStatus};
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::readmodel::{UsageReader, preload};
use crate::store::local::LocalClickHouse;
use crate::store::{Store, migrate};
use redis::aio::ConnectionManager;

/// A built service, ready to serve.
pub struct Application {
    state: AppState,
    batcher: BatcherHandle,
    /// The alert task: after the batcher, it looks at the last batches, then ends.
    alert_watch: tokio::task::JoinHandle<()>,
    writer: WriterStatus,
    background: Vec<tokio::task::JoinHandle<()>>,
    owned_clickhouse: Option<LocalClickHouse>,
}

/// Connects to (or starts) ClickHouse and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<(Store, Option<LocalClickHouse>)> {
    let (url, owned) = match &config.store.clickhouse_url {
        Some(url) => (url.clone(), None),
        None => {
            let local = LocalClickHouse::start(&config.store.data_dir).await?;
            (local.url(), Some(local))
        }
    };
    let store =
        connect_with_retry(Store::new(&url, &config.store), Duration::from_secs(30)).await?;
    let migrations = async { migrate::run(&store).await.context("applying migrations") };
    let ran = match &config.redis_url {
        // Replicas may start together: one at a time.
        Some(redis) => {
            crate::ingest::shared::with_lock(redis, store.database(), "migrating", migrations)
                .await?
        }
        None => migrations.await?,
    };
    tracing::info!(migrations_applied = ran, "schema up to date");
    Ok((store, owned))
}

async fn connect_with_retry(store: Store, patience: Duration) -> anyhow::Result<Store> {
    let deadline = Instant::now() + patience;
    loop {
        match store.clone().connect().await {
            Ok(store) => return Ok(store),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::warn!(error = %e, "clickhouse not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("connecting to clickhouse"),
        }
    }
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let (store, owned_clickhouse) = open_store(config).await?;
        let mut background = Vec::new();
        let (ledger, writer, redis) = open_ledger(config, &store, &mut background).await?;
        let catalog = Catalog::open(store.clone())
            .await
            .context("loading the catalog")?;
        if let Some(path) = &config.catalog {
            catalog
                .seed(&Catalog::read_seed(path)?)
                .await
                .map_err(|e| anyhow::anyhow!("seeding the catalog: {e}"))?;
        }
        if config.rollup_maintenance_every_s > 0 {
            let every = Duration::from_secs(config.rollup_maintenance_every_s);
            let lock = redis
                .clone()
                .map(|redis| Lock::new(redis, store.database(), "maintaining"));
            let maintained = (store.clone(), catalog.clone());
            background.push(crate::ingest::repair::spawn(maintained, lock, every));
        }
        let keys = KeyRing::from_config(&config.api_keys)?;
        crate::auth::stored::load_stored(&store, &keys)
            .await
            .context("loading API keys")?;
        if keys.is_empty() {
            tracing::warn!(
                "no API keys configured: every request will get 401 (set METERHOUSE_API_KEYS)"
            );
        }
        let metrics = Metrics::new();
        let settings = Settings {
            max_events: config.batch_max_events,
            max_wait: config.batch_max_wait(),
            queue_max_events: config.queue_max_events,
            ack_timeout: config.ack_timeout(),
        };
        background.extend([
            crate::auth::stored::spawn_refresh(
                store.clone(),
                keys.clone(),
                crate::auth::stored::REFRESH_EVERY,
            ),
            catalog.spawn_refresh(Duration::from_secs(1)),
        ]);
        let usage = if config.usage_cache_customers > 0 {
            let every = Duration::from_millis(config.usage_changes_poll_ms);
            let (usage, poller) =
                UsageReader::with_cache(store.clone(), config.usage_cache_customers, every).await;
            background.push(poller);
            if config.usage_preload_every_s > 0 {
                let every = Duration::from_secs(config.usage_preload_every_s);
                let (usage, catalog) = (usage.clone(), catalog.clone());
                background.push(preload::spawn_load_current_periods(usage, catalog, every));
            }
            usage
        } else {
            UsageReader::uncached(store.clone())
        };
        let usage = usage.with_light_read_samples(config.light_read_samples);
        let alerts = crate::alerts::start(crate::alerts::Context {
            store: store.clone(),
            catalog: catalog.clone(),
            usage: usage.clone(),
            redis: redis.clone(),
            webhook_timeout: Duration::from_millis(config.webhook_timeout_ms),
        })?;
        background.push(alerts.sender);
        let outbox = alerts.outbox;
        let observer = std::sync::Arc::new((usage.clone(), alerts.touches));
        let (ingestor, batcher) = batcher::start(
            store.clone(),
            ledger,
            writer.clone(),
            settings,
            metrics.clone(),
            observer,
        );
        let limits = RateLimits::new(config.rate_limit_rps, config.rate_limit_eps);
        let dashboard = http::dashboard::DashboardSettings::new(
            crate::auth::links::DashboardKeys::load(store.clone())
                .await
                .context("loading the dashboard secrets")?,
            &config.dashboard_frame_ancestors,
        )?;
        let state = AppState {
            store,
            redis,
            usage,
            ingestor,
            catalog,
            keys,
            limits,
            metrics,
            outbox,
            dashboard,
        };
        Ok(Self {
            state,
            batcher,
            alert_watch: alerts.watcher,
            writer,
            background,
            owned_clickhouse,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: stops accepting, lets
    /// in-flight requests finish, flushes the batcher, stops an owned ClickHouse.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let router = http::router(self.state.clone());
        tracing::info!("listening on {addr}");
        crate::server::serve(listener, router, shutdown).await;
        tracing::info!("http server stopped; flushing");
        self.shutdown().await;
        Ok(())
    }

    /// Flushes what the batcher holds and stops background work and an owned ClickHouse.
    pub async fn shutdown(self) {
        let Self {
            state,
            batcher,
            alert_watch,
            writer,
            background,
            owned_clickhouse,
        } = self;
        batcher.shutdown().await;
        // The batcher's end dropped what told the alert task of batches: it looks at the last
        // ones and ends.
        let mut alert_watch = alert_watch;
        if tokio::time::timeout(Duration::from_secs(10), &mut alert_watch)
            .await
            .is_err()
        {
            tracing::warn!("the alert task did not end within 10 s");
            alert_watch.abort();
        }
        for task in &background {
            task.abort();
        }
        for task in background {
            let _ = task.await;
        }
        // After the beats stopped: a beat written later would say the batches are unsettled.
        writer.stopped(&state.store).await;
        // Close our connections first: the server waits for open ones before it exits.
        drop(state);
        if let Some(mut clickhouse) = owned_clickhouse {
            clickhouse.stop().await;
        }
        tracing::info!("shutdown complete");
    }
}

/// The accepted ids: shared in Redis with `--redis-url`, in this process's memory (loaded from
/// ClickHouse) otherwise. Registers this process as a writer of its database, which refuses a
/// second process beside one that keeps ids in its own memory.
async fn open_ledger(
    config: &Config,
    store: &Store,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<(Ledger, WriterStatus, Option<ConnectionManager>)> {
    let mode = match config.redis_url {
        None => DedupMode::Embedded,
        Some(_) => DedupMode::Shared,
    };
    // Before the ids are read: a writer stopping meanwhile has stopped accepting any.
    let (beats, writer) = Writer::new(mode).register(store).await?;
    background.push(beats);
    let (ledger, redis) = match &config.redis_url {
        None => {
            // Before the ids are read: what a dead predecessor left in doubt is decided first.
            writer
                .settle_dead(store)
                .await
                .context("settling the batches of a writer that died")?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let window = config.dedup_window();
            let dedup = DedupSet::load(store, window, config.dedup_max_ids, now_ms)
                .await
                .context("loading accepted event ids")?;
            tracing::info!(
                remembered_ids = dedup.len(),
                window_hours = config.dedup_window_hours,
                "dedup state loaded"
            );
            (Ledger::embedded(dedup), None)
        }
        Some(url) => {
            let (mut shared, heartbeat) =
                SharedLedger::open(url, store.database(), config.dedup_window())
                    .await
                    .context("connecting to redis (--redis-url)")?;
            background.push(heartbeat);
            // Before the ids are loaded: what a dead writer that kept ids in its own memory
            // left in doubt is decided first, by one replica.
            let settling = async {
                writer
                    .settle_dead(store)
                    .await
                    .context("settling the batches of a writer that died")
            };
            crate::ingest::shared::with_lock(url, store.database(), "settling_writers", settling)
                .await?;
            shared
                .prepare(store)
                .await
                .context("loading accepted event ids into redis")?;
            tracing::info!(
                window_hours = config.dedup_window_hours,
                "dedup shared through redis"
            );
            let redis = shared.connection();
            (Ledger::Shared(Box::new(shared)), Some(redis))
        }
    };
    Ok((ledger, writer, redis))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}

/// The service on an ephemeral loopback port inside this process, for the benchmark and soak
/// harnesses.
pub struct InProcess {
    pub base: String,
    pub store: Store,
    pub usage: UsageReader,
    pub catalog: Catalog,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let app = Application::build(config).await?;
        let store = app.state().store.clone();
        let usage = app.state().usage.clone();
        let catalog = app.state().catalog.clone();
        let metrics = app.state().metrics.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            base,
            store,
            usage,
            catalog,
            metrics,
            stop,
            server,
        })
    }

    /// Drains and stops it, as SIGTERM would.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }
}
