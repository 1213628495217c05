//! The usage read model: what a subscription used and owes, read from the store's tables and
//! kept in memory.
//!
//! - `window`: where each piece of a window is read from (rollup hours, sample edges).
//! - `plan`: a light customer's reads from its samples alone, by the density last seen.
//! - [`UsageReader`]: the reads, through the answers kept in memory (`cache`).
//! - `changes`: how kept answers follow changes: this process's batches are folded in
//!   ([`crate::ingest::batcher::BatchObserver`]), everyone else's are polled.
//! - `preload`: current periods' answers loaded in bulk before their first read.
//! - `report`: usage rated into charges over a window; `dynamic`: the measured amounts of
//!   prices that price each event at its own unit amount.
//! - `weighted`: the integrals of `weighted_sum` meters, from their samples.
//! - `account`: a customer's active subscriptions and their current periods.

pub mod account;
pub mod cache;
pub mod changes;
mod dynamic;
pub mod plan;
pub mod preload;
pub mod report;
pub mod to_date;
pub mod weighted;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::Aggregation;
use crate::store::as_of_sql::{LateWindow, as_of_statement, late_events_statement};
use crate::store::combined_sql::{Meters, combined_statement, customers_statement};
use crate::store::series_sql::{SeriesPoint, SeriesQuery, series_statement};
use crate::store::usage_sql::{GroupUsage, MeterGroupUsage, Part, Scope, usage_statement};
use crate::store::{DayParts, Store, StoreError};
use cache::{AnswerKey, UsageCache};

/// One meter's usage of one customer over a window.
#[derive(Debug, Clone)]
pub struct UsageQuery<'a> {
    pub tenant: &'a str,
    pub meter: &'a str,
    pub aggregation: Aggregation,
    pub customer: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Group keys to split by (a price's `group_by`); empty for one total.
    pub group_by: &'a [String],
}

/// What one customer's read from the store takes (`plan`).
enum Choice {
    /// These parts, in one statement: its samples alone, or the day grain's days and samples.
    Parts(Vec<Part>),
    /// The rollups' statement, with the day grain's view of the window if it was looked up.
    Rollups(Option<DayParts>),
}

/// Reads usage from the store, through the answers kept in memory. Cheap to clone.
///
/// A reader made by [`UsageReader::as_of`] reads usage as it stood at a past moment instead:
/// from the samples ingested up to then, never from memory or the rollups.
#[derive(Clone)]
pub struct UsageReader {
    store: Store,
    cache: Arc<UsageCache>,
    /// Only samples ingested at or before this instant (epoch ms).
    as_of_ms: Option<i64>,
    /// Each customer's density, which chooses where its reads from storage are taken from.
    densities: plan::Densities,
    /// The period-to-date states this process asked for (`to_date`).
    to_date: to_date::Builds,
}

impl UsageReader {
    /// A reader that asks the store every time.
    pub fn uncached(store: Store) -> Self {
        Self {
            store,
            cache: Arc::new(UsageCache::new(0)),
            as_of_ms: None,
            densities: plan::Densities::default(),
            to_date: to_date::Builds::default(),
        }
    }

    /// A reader that keeps the answers of up to `customers` customers, and the task that keeps
    /// them valid by polling the store's changes every `every`: answers are only kept by a
    /// process that polls. The first poll is made before this returns, so that no answer read
    /// afterwards misses a change.
    pub async fn with_cache(
        store: Store,
        customers: usize,
        every: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let reader = Self {
            store,
            cache: Arc::new(UsageCache::new(customers)),
            as_of_ms: None,
            densities: plan::Densities::default(),
            to_date: to_date::Builds::default(),
        };
        let since = changes::poll(&reader, None).await.ok();
        let poller = changes::spawn_poll(reader.clone(), every, since);
        (reader, poller)
    }

    /// This reader's reads as they stood with the events ingested up to `at`.
    pub fn as_of(&self, at: DateTime<Utc>) -> Self {
        Self {
            as_of_ms: Some(at.timestamp_millis()),
            ..self.clone()
        }
    }

    /// The moment of a reader made by [`UsageReader::as_of`] (epoch ms).
    pub fn as_of_ms(&self) -> Option<i64> {
        self.as_of_ms
    }

    /// How many events of `customer` with a sample in one of `windows` arrived after this
    /// reader's moment; `None` for a reader of the present.
    pub async fn late_events(
        &self,
        tenant: &str,
        customer: &str,
        windows: &[LateWindow<'_>],
    ) -> Result<Option<u64>, StoreError> {
        let Some(as_of_ms) = self.as_of_ms else {
            return Ok(None);
        };
        let statement = late_events_statement(tenant, customer, windows, as_of_ms);
        let store = self.store.for_customer(tenant, customer);
        Ok(Some(store.late_events(&statement).await?))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store handles that hold `customer` of `tenant` (its shard's), or every customer of
    /// it (every shard's); one handle on one server.
    pub fn stores_for(&self, tenant: &str, customer: Option<&str>) -> Vec<Store> {
        match customer {
            Some(customer) => vec![self.store.for_customer(tenant, customer)],
            None => self.store.shards(),
        }
    }

    pub fn cache(&self) -> &UsageCache {
        &self.cache
    }

    /// This reader with its light reads (`plan`) bounded at `limit` samples (0: none).
    pub fn with_light_read_samples(mut self, limit: u64) -> Self {
        self.densities = plan::Densities::new(limit);
        self
    }

    /// This reader with its period-to-date states (`to_date`) asked for at most once every
    /// `every` (a minute by default).
    pub fn with_to_date_retry(mut self, every: Duration) -> Self {
        self.to_date = to_date::Builds::new(every);
        self
    }

    /// This reader with the clock of its period-to-date states stopped at `now_ms` (tests: a
    /// horizon that does not move while they run; never ahead of ClickHouse's clock).
    pub fn with_to_date_clock_stopped_at(mut self, now_ms: i64) -> Self {
        self.to_date = self.to_date.stopped_at(now_ms);
        self
    }

    /// The customers' densities this reader learnt (`plan`).
    pub fn densities(&self) -> &plan::Densities {
        &self.densities
    }

    /// One meter's usage per group of the query's `group_by`.
    pub async fn of_meter(&self, q: &UsageQuery<'_>) -> Result<Vec<GroupUsage>, StoreError> {
        let key = (q.tenant, q.meter, Some(q.customer));
        let store = self.store.for_customer(q.tenant, q.customer);
        let parts = match self.as_of_ms {
            Some(_) => window::split(q.from_ms, q.to_ms, false),
            None => window::parts_of(&store, key, (q.from_ms, q.to_ms), (true, true)).await?,
        };
        if parts.is_empty() {
            return Ok(vec![]);
        }
        let scope = Scope {
            tenant: q.tenant,
            meter: q.meter,
            customer: Some(q.customer),
            filters: &[],
            as_of_ms: self.as_of_ms,
        };
        let statement = usage_statement(&parts, q.aggregation, q.group_by, &scope);
        store.usage(&statement).await
    }

    /// Usage of several meters of one customer over `bounds` (epoch ms), per meter and
    /// combination of the samples' group values, in one statement; from memory when this
    /// customer's usage has not changed since it was last read. `None` when some hour of the
    /// rollup may be incomplete: the caller then reads meter by meter.
    pub async fn of_meters(
        &self,
        tenant: &str,
        customer: &str,
        bounds: (i64, i64),
        meters: &Meters<'_>,
        from_start: bool,
    ) -> Result<Option<Arc<Vec<MeterGroupUsage>>>, StoreError> {
        if self.cache.capacity() == 0 || !self.cache.fresh() || self.as_of_ms.is_some() {
            return Ok(self
                .of_meters_from_store(tenant, customer, bounds, meters, from_start)
                .await?
                .map(Arc::new));
        }
        let key = AnswerKey::new(bounds, meters);
        let ticket = match self.cache.lookup(tenant, customer, &key) {
            Ok(answer) => return Ok(Some(answer)),
            Err(ticket) => ticket,
        };
        // `None` (hours marked for repair) is not kept: those reads go meter by meter.
        let Some(rows) = self
            .of_meters_from_store(tenant, customer, bounds, meters, from_start)
            .await?
        else {
            return Ok(None);
        };
        let answer = Arc::new(rows);
        self.cache
            .store(ticket, tenant, customer, key, answer.clone());
        Ok(Some(answer))
    }

    /// [`UsageReader::of_meters`], from the store whatever is kept (as of this reader's moment,
    /// if it has one: from samples only). `from_start`: the window starts where a billing
    /// period does, so that its period-to-date states are worth keeping (`to_date`).
    pub async fn of_meters_from_store(
        &self,
        tenant: &str,
        customer: &str,
        bounds: (i64, i64),
        meters: &Meters<'_>,
        from_start: bool,
    ) -> Result<Option<Vec<MeterGroupUsage>>, StoreError> {
        if let Some(as_of_ms) = self.as_of_ms {
            if meters.is_empty() || bounds.0 >= bounds.1 {
                return Ok(Some(vec![]));
            }
            let store = self.store.for_customer(tenant, customer);
            let parts =
                window::parts_as_of(&store, (tenant, customer), bounds, as_of_ms, meters).await?;
            let statement = as_of_statement(tenant, customer, &parts, as_of_ms, meters);
            let mut usage = store.usage_of_meters(&statement, true).await?;
            return Ok(Some(usage.remove(customer).unwrap_or_default()));
        }
        // A light customer's ragged window from its samples alone (`plan`), judged and learnt
        // over the window's past. Only where the rollups' statement would read ragged edges
        // beside the hours: a window of whole hours is one part either way, with fewer rows.
        // A denser one's from the day grain's whole days and its samples for the rest, when
        // the rest is light.
        let reads = plan::Reads::of(tenant, customer, meters.iter().map(|(m, _)| *m));
        let now = chrono::Utc::now().timestamp_millis();
        let past = (bounds.0, bounds.1.min(now));
        let ragged = window::split(bounds.0, bounds.1, true).len() > 1;
        let store = self.store.for_customer(tenant, customer);
        // A period's closed days from its states to date, for a customer known to be dense
        // (a light one's samples alone are cheaper).
        if from_start && self.densities.dense(&reads, past) {
            let read = to_date::read(&self.to_date, &store, (tenant, customer), bounds, meters);
            match read.await {
                Ok(Some(rows)) => {
                    self.densities.learn(&reads, past, &rows);
                    return Ok(Some(rows));
                }
                Ok(None) => {}
                // The states are a shortcut: the read goes on without them.
                Err(e) => {
                    tracing::debug!(tenant, customer, error = %e, "period-to-date states not read");
                }
            }
        }
        // The day grain's view of the window, when the plan looked it up: the rollups' read
        // takes it rather than asking again.
        let mut grain = None;
        if ragged && !meters.is_empty() {
            let choice = if self.densities.light(&reads, past) {
                Choice::Parts(window::split(bounds.0, bounds.1, false))
            } else {
                self.days_and_samples(&store, (tenant, customer), bounds, &reads, now)
                    .await?
            };
            match choice {
                Choice::Parts(parts) => {
                    let statement = combined_statement(tenant, customer, &parts, meters);
                    match store.usage_of_meters(&statement, true).await {
                        Ok(mut usage) => {
                            let rows = usage.remove(customer).unwrap_or_default();
                            self.densities.learn(&reads, past, &rows);
                            return Ok(Some(rows));
                        }
                        // Denser than its last read said: the rollups, which will teach it
                        // again.
                        Err(StoreError::OverBudget(e)) => {
                            tracing::debug!(tenant, customer, error = %e, "samples over the read budget; reading the rollups");
                            self.densities.forget(&reads);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Choice::Rollups(looked_up) => grain = looked_up,
            }
        }
        let asked = [(customer, bounds)];
        let usage = match grain {
            Some(_) => Self::of_customers_on(&store, tenant, &asked, meters, grain).await?,
            None => self.of_customers(tenant, &asked, meters).await?,
        };
        let rows = usage.map(|mut by_customer| by_customer.remove(customer).unwrap_or_default());
        if let Some(rows) = &rows {
            self.densities.learn(&reads, past, rows);
        }
        Ok(rows)
    }

    /// A customer's window read as the day grain's whole days and samples for the rest
    /// (`window::days_and_samples`), when the rest is expected to hold few samples (`plan`);
    /// the rollups otherwise, when the grain holds none of its days, or while some hour may be
    /// marked for repair (the rollups' reads take those apart).
    async fn days_and_samples(
        &self,
        store: &Store,
        (tenant, customer): (&str, &str),
        bounds: (i64, i64),
        reads: &plan::Reads,
        now: i64,
    ) -> Result<Choice, StoreError> {
        // Not even an hour of its samples is light: no window of it past a day is.
        if !self.densities.light(reads, (0, window::HOUR_MS))
            || store.may_have_dirty_hours().await?
        {
            return Ok(Choice::Rollups(None));
        }
        let grain = store.day_parts(tenant, Some(customer), bounds).await?;
        let parts = window::with_days(window::split(bounds.0, bounds.1, true), &grain);
        let light = parts.iter().any(|p| matches!(p, Part::Days(..)))
            && self
                .densities
                .light(reads, (0, window::beyond_days(&parts, now)));
        Ok(match light {
            true => Choice::Parts(window::days_and_samples(parts)),
            false => Choice::Rollups(Some(grain)),
        })
    }

    /// [`UsageReader::of_meters_from_store`] of several customers of a tenant, each over its
    /// own window, in one statement; each customer at most once. A customer with no usage in
    /// its window has no entry. `None` when some hour of the rollup in any of the windows may
    /// be incomplete.
    pub async fn of_customers(
        &self,
        tenant: &str,
        asked: &[(&str, (i64, i64))],
        meters: &Meters<'_>,
    ) -> Result<Option<HashMap<String, Vec<MeterGroupUsage>>>, StoreError> {
        debug_assert!(
            self.as_of_ms.is_none(),
            "reads as of a moment go through of_meters_from_store"
        );
        let asked: Vec<(&str, (i64, i64))> =
            asked.iter().copied().filter(|(_, (a, b))| a < b).collect();
        if meters.is_empty() || asked.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        let Some(cluster) = self.store.cluster() else {
            return Self::of_customers_on(&self.store, tenant, &asked, meters, None).await;
        };
        // Each shard answers for its customers; together, for all of them.
        let mut by_shard = vec![Vec::new(); cluster.shard_count()];
        for &(customer, window) in &asked {
            by_shard[cluster.shard_of(tenant, customer)].push((customer, window));
        }
        let mut usage = HashMap::new();
        let shards = self.store.shards();
        // Every shard holding some of them, at once.
        let reads = shards
            .iter()
            .zip(&by_shard)
            .filter(|(_, asked)| !asked.is_empty())
            .map(|(shard, asked)| Self::of_customers_on(shard, tenant, asked, meters, None));
        for read in futures_util::future::join_all(reads).await {
            match read? {
                Some(of_shard) => usage.extend(of_shard),
                None => return Ok(None),
            }
        }
        Ok(Some(usage))
    }

    /// [`UsageReader::of_customers`] from one shard (or the one server), for customers it holds;
    /// one customer's read with `grain`, the day grain's view of its window, if already known.
    async fn of_customers_on(
        store: &Store,
        tenant: &str,
        asked: &[(&str, (i64, i64))],
        meters: &Meters<'_>,
        grain: Option<DayParts>,
    ) -> Result<Option<HashMap<String, Vec<MeterGroupUsage>>>, StoreError> {
        let windows = window::windows_of(asked);
        if windows.hours().is_some() && store.may_have_dirty_hours().await? {
            let one = match asked[..] {
                [(customer, _)] => Some(customer),
                _ => None,
            };
            let (from, to) = windows.span();
            for &(meter, _) in meters {
                let dirty = store.dirty_hours(tenant, meter, one, from, to).await?;
                if !dirty.is_empty() {
                    return Ok(None);
                }
            }
        }
        let usage = match asked[..] {
            [(customer, (from, to))] => {
                let grain = match grain {
                    Some(grain) => grain,
                    None => store.day_parts(tenant, Some(customer), (from, to)).await?,
                };
                let parts = window::with_days(window::split(from, to, true), &grain);
                let statement = combined_statement(tenant, customer, &parts, meters);
                store.usage_of_meters(&statement, true).await?
            }
            _ => {
                let statement = customers_statement(tenant, &windows, meters);
                store.usage_of_meters(&statement, false).await?
            }
        };
        Ok(Some(usage))
    }

    /// A meter's series per window, customer and group.
    pub async fn series(&self, q: &SeriesQuery<'_>) -> Result<Vec<SeriesPoint>, StoreError> {
        let scope = &q.scope;
        let key = (scope.tenant, scope.meter, scope.customer);
        let hours = q.hours_align && q.window_size != crate::store::series_sql::WindowSize::Minute;
        let days = q.utc_days && q.window_size == crate::store::series_sql::WindowSize::Day;
        let bounds = (q.from_ms, q.to_ms);
        // One customer's series from its shard; every customer's from every shard, each
        // customer's points whole on its own.
        let stores = match scope.customer {
            Some(customer) => vec![self.store.for_customer(scope.tenant, customer)],
            None => self.store.shards(),
        };
        // Every shard at once.
        let reads = stores.iter().map(|store| async move {
            let parts = match scope.as_of_ms {
                Some(_) => window::split(q.from_ms, q.to_ms, false),
                None => window::parts_of(store, key, bounds, (hours, days)).await?,
            };
            if parts.is_empty() {
                return Ok(vec![]);
            }
            store.series(&series_statement(&parts, q)).await
        });
        let mut points = Vec::new();
        for read in futures_util::future::join_all(reads).await {
            points.extend(read?);
        }
        if stores.len() > 1 {
            points.sort_by(|a, b| {
                (a.window, &a.customer, &a.usage.group).cmp(&(
                    b.window,
                    &b.customer,
                    &b.usage.group,
                ))
            });
        }
        Ok(points)
    }
}
