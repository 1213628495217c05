//! Alerts fired as usage reaches them. The batcher tells [`Touches`] of every committed batch
//! before it acknowledges it; the customers with samples in it, of tenants that have alerts,
//! go to one task that rates the billing periods their events fall in (the current one, and a
//! past one a late event reached) through the usage read model (usage kept in memory, so
//! usually without a query) and fires each alert whose value reached its threshold.
//!
//! Each alert fires once per subscription and billing period: its event id is derived from
//! the tenant, the alert (its code and creation), the subscription and the period's start, and
//! is recorded in `alert_firings` with the deliveries to every endpoint that receives
//! `alert.triggered`. A replica claims the id in Redis before it looks the id up and records
//! it, so two replicas never record it both; without Redis one process writes. The task also
//! looks again at every alert's subscriptions at start-up and whenever an alert is added, and
//! (with replicas) at each customer again a few seconds after its batch, once other replicas'
//! batches are visible, so that batches of several replicas that reach a threshold together
//! fire it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::outbox::Outbox;
use super::{ALERT_TRIGGERED, Context};
use crate::billing::period::Period;
use crate::catalog::TenantCatalog;
use crate::domain::Subscription;
use crate::domain::alert::{Alert, AlertMetric};
use crate::ingest::batcher::BatchObserver;
use crate::ingest::shared::Lock;
use crate::readmodel::report::{ResolvedSubscription, UsageReport, report};
use crate::store::StoreError;
use crate::store::rows::EventRow;
use crate::store::webhooks::{DeliveryRow, FiringRow};

/// Batches waiting for the task, at most; past it, the task looks at every alert again.
const QUEUE: usize = 4_096;
/// With replicas: when a customer is looked at again after its batch.
const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(3);
/// How long a round waits for more batches after the first: the cost of alerts is per customer
/// and round, not per batch.
const GATHER: Duration = Duration::from_millis(150);
/// How long fired ids are remembered in memory, and how often older ones are forgotten.
const REMEMBER_FIRED_MS: i64 = 40 * 86_400_000;
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// How often the task looks for alerts added (by any process) and for looks due.
const TICK: Duration = Duration::from_secs(1);

/// A customer whose usage a batch changed, and the times of its earliest and latest events.
#[derive(Debug, Clone)]
pub struct Touched {
    pub tenant: Arc<str>,
    pub customer: String,
    pub earliest_ms: i64,
    pub latest_ms: i64,
    /// Not a batch's: a look at every alert (start-up, lost touches, a new alert). Such a look
    /// cannot tell when a past period's usage reached an alert, so there an alert counts only
    /// for periods that ended after it was made.
    pub scan: bool,
}

/// Tells the alert task of committed batches. Cheap: tenants without alerts cost one look-up
/// per batch.
pub struct Touches {
    context: Context,
    tx: mpsc::Sender<Vec<Touched>>,
    overflow: Arc<AtomicBool>,
}

impl BatchObserver for Touches {
    fn inserting(&self, _: u64, _: &[EventRow]) {}

    fn committed(&self, _: u64, rows: &[EventRow]) {
        let mut touched: HashMap<(&str, &str), (i64, i64)> = HashMap::new();
        let mut tenant: Option<(&str, bool)> = None;
        for row in rows.iter().filter(|r| !r.sample_meter.is_empty()) {
            let watched = match tenant {
                Some((t, watched)) if t == &*row.tenant => watched,
                _ => {
                    let watched = !self.context.catalog.tenant(&row.tenant).alerts.is_empty();
                    tenant = Some((&row.tenant, watched));
                    watched
                }
            };
            if watched {
                let (earliest, latest) = touched
                    .entry((&row.tenant, &row.customer))
                    .or_insert((row.ts_ms, row.ts_ms));
                *earliest = (*earliest).min(row.ts_ms);
                *latest = (*latest).max(row.ts_ms);
            }
        }
        if touched.is_empty() {
            return;
        }
        let batch = touched
            .into_iter()
            .map(|((tenant, customer), (earliest_ms, latest_ms))| Touched {
                tenant: tenant.into(),
                customer: customer.to_owned(),
                earliest_ms,
                latest_ms,
                scan: false,
            })
            .collect();
        if self.tx.try_send(batch).is_err() {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }

    fn failed(&self, _: u64, _: &[EventRow]) {}
}

/// Starts the alert task.
pub(super) fn start(context: Context, outbox: Outbox) -> (Touches, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let touches = Touches {
        context: context.clone(),
        tx,
        overflow: overflow.clone(),
    };
    let watcher = Watcher {
        context,
        outbox,
        overflow,
        fired: HashMap::new(),
        pruned: Instant::now(),
        known: HashMap::new(),
        indexes: HashMap::new(),
        again: VecDeque::new(),
        reached: Vec::new(),
    };
    (touches, tokio::spawn(watcher.run(rx)))
}

/// Alerts of one tenant catalog, by what they watch, and the customers concerned.
#[derive(Default)]
struct Index {
    by_subscription: HashMap<String, Vec<String>>,
    by_plan: HashMap<String, Vec<String>>,
    /// Customer → subscriptions some alert may watch.
    customers: HashMap<String, Vec<String>>,
}

impl Index {
    fn of(catalog: &TenantCatalog) -> Self {
        let mut index = Index::default();
        for alert in catalog.alerts.values() {
            if let Some(s) = &alert.subscription {
                index
                    .by_subscription
                    .entry(s.clone())
                    .or_default()
                    .push(alert.code.clone());
            }
            if let Some(p) = &alert.plan {
                index
                    .by_plan
                    .entry(p.clone())
                    .or_default()
                    .push(alert.code.clone());
            }
        }
        for s in catalog.subscriptions.values() {
            let watched = index.by_subscription.contains_key(&s.external_id)
                || s.phases.iter().any(|p| index.by_plan.contains_key(&p.plan));
            if watched {
                index
                    .customers
                    .entry(s.customer.clone())
                    .or_default()
                    .push(s.external_id.clone());
            }
        }
        index
    }

    /// The alerts watching `subscription` while it is on `plan`.
    fn alerts<'c>(
        &self,
        catalog: &'c TenantCatalog,
        subscription: &str,
        plan: &str,
    ) -> Vec<&'c Alert> {
        let codes = self.by_subscription.get(subscription).into_iter().flatten();
        let codes = codes.chain(self.by_plan.get(plan).into_iter().flatten());
        codes.filter_map(|code| catalog.alerts.get(code)).collect()
    }
}

/// An alert's code and creation: an alert made again under its code is new.
type AlertMade = (String, Option<DateTime<Utc>>);

struct Watcher {
    context: Context,
    outbox: Outbox,
    overflow: Arc<AtomicBool>,
    /// Event ids known to have fired, and when this process learnt it (ms); forgotten after
    /// [`REMEMBER_FIRED_MS`] (`alert_firings` still knows them).
    fired: HashMap<String, i64>,
    pruned: Instant,
    /// Per tenant, the alerts already looked at everywhere (code and creation).
    known: HashMap<String, HashSet<AlertMade>>,
    /// Per tenant, the index of the catalog snapshot it was built from.
    indexes: HashMap<String, (Arc<TenantCatalog>, Arc<Index>)>,
    /// Customers to look at again, when.
    again: VecDeque<(Instant, Touched)>,
    /// Alerts this round reached, to record and send at its end.
    reached: Vec<FiringRow>,
}

impl Watcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Vec<Touched>>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut pending: Vec<Touched> = Vec::new();
            let mut look_again = false;
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { return };
                    pending.extend(batch);
                    // One round for the batches of the next moments: a customer is rated once
                    // however many of them touched it.
                    tokio::time::sleep(GATHER).await;
                    while let Ok(batch) = rx.try_recv() {
                        pending.extend(batch);
                    }
                    look_again = self.context.redis.is_some();
                }
                _ = tick.tick() => {
                    if self.pruned.elapsed() >= PRUNE_EVERY {
                        self.pruned = Instant::now();
                        let forget_before = Utc::now().timestamp_millis() - REMEMBER_FIRED_MS;
                        self.fired.retain(|_, learnt| *learnt >= forget_before);
                    }
                    let everything = self.overflow.swap(false, Ordering::Relaxed);
                    pending.extend(self.added_alerts(everything));
                    let now = Instant::now();
                    while self.again.front().is_some_and(|(due, _)| *due <= now) {
                        if let Some((_, touched)) = self.again.pop_front() {
                            pending.push(touched);
                        }
                    }
                }
            }
            // Per event id reached, the customer to look at again should recording it fail.
            let mut customers: HashMap<String, Touched> = HashMap::new();
            let round = std::time::Instant::now();
            let pending = coalesce(pending);
            let looked_at = pending.len();
            for touched in pending {
                let reached_before = self.reached.len();
                let again = match self.look_at(&touched).await {
                    Ok(watched) => watched && look_again,
                    Err(e) => {
                        tracing::warn!(tenant = %touched.tenant, customer = %touched.customer,
                            error = %e, "checking alerts failed; looked at again shortly");
                        true
                    }
                };
                for firing in &self.reached[reached_before..] {
                    customers.insert(firing.id.clone(), touched.clone());
                }
                if again {
                    self.again
                        .push_back((Instant::now() + LOOK_AGAIN_AFTER, touched));
                }
            }
            let fired = self.reached.len();
            self.fire_reached(&customers).await;
            if looked_at > 0 {
                tracing::debug!(
                    customers = looked_at,
                    fired,
                    elapsed_us = round.elapsed().as_micros() as u64,
                    "alert round"
                );
            }
        }
    }

    /// The customers of alerts not looked at yet (all of them with `everything`), to look at
    /// in their current periods; at start-up, and after touches were lost (`everything`), in
    /// every period of the last 35 days (how late an event may come without backfill), since
    /// batches acknowledged just before may not have been looked at.
    fn added_alerts(&mut self, everything: bool) -> Vec<Touched> {
        let now_ms = Utc::now().timestamp_millis();
        let mut out = Vec::new();
        for (tenant, catalog) in self.context.catalog.tenants() {
            let first = !self.known.contains_key(&tenant);
            let alerts: HashSet<AlertMade> = catalog
                .alerts
                .values()
                .map(|a| (a.code.clone(), a.created_at))
                .collect();
            let known = self.known.entry(tenant.clone()).or_default();
            if !everything && alerts.is_subset(known) {
                *known = alerts;
                continue;
            }
            *known = alerts;
            let index = Index::of(&catalog);
            let tenant: Arc<str> = tenant.as_str().into();
            let since_ms = if first || everything {
                now_ms - 35 * 86_400_000
            } else {
                now_ms
            };
            out.extend(index.customers.keys().map(|customer| Touched {
                tenant: tenant.clone(),
                customer: customer.clone(),
                earliest_ms: since_ms,
                latest_ms: now_ms,
                scan: true,
            }));
        }
        out
    }

    fn index(&mut self, tenant: &str, catalog: &Arc<TenantCatalog>) -> Arc<Index> {
        if let Some((built_from, index)) = self.indexes.get(tenant)
            && Arc::ptr_eq(built_from, catalog)
        {
            return index.clone();
        }
        let index = Arc::new(Index::of(catalog));
        self.indexes
            .insert(tenant.to_owned(), (catalog.clone(), index.clone()));
        index
    }

    /// Checks the alerts of the customer's watched subscriptions in the periods of its events;
    /// whether any alert watches the customer.
    async fn look_at(&mut self, touched: &Touched) -> Result<bool, StoreError> {
        let catalog = self.context.catalog.tenant(&touched.tenant);
        let index = self.index(&touched.tenant, &catalog);
        let Some(subscriptions) = index.customers.get(&touched.customer) else {
            return Ok(false);
        };
        let now = Utc::now();
        let earliest = DateTime::from_timestamp_millis(touched.earliest_ms).unwrap_or(now);
        let latest = DateTime::from_timestamp_millis(touched.latest_ms).unwrap_or(now);
        for key in subscriptions {
            let Some(subscription) = catalog.subscriptions.get(key) else {
                continue;
            };
            let Ok(resolved) = ResolvedSubscription::new(&touched.tenant, &catalog, subscription)
            else {
                continue;
            };
            for period in periods_of(&resolved, earliest, now, latest) {
                let since = touched.scan.then_some(period.window.to);
                self.check(&resolved, &index, subscription, &period, since)
                    .await?;
            }
        }
        Ok(true)
    }

    async fn check(
        &mut self,
        resolved: &ResolvedSubscription<'_>,
        index: &Index,
        subscription: &Subscription,
        period: &Period,
        made_before: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let Some(phase) = subscription.phases.get(period.phase) else {
            return Ok(());
        };
        let catalog = resolved.catalog;
        let due: Vec<(&Alert, String)> = index
            .alerts(catalog, &subscription.external_id, &phase.plan)
            .into_iter()
            .filter(|alert| {
                made_before.is_none_or(|end| alert.created_at.is_none_or(|made| made < end))
            })
            .map(|alert| {
                (
                    alert,
                    event_id(resolved.tenant, alert, subscription, period),
                )
            })
            .filter(|(_, id)| !self.fired.contains_key(id))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let report = match report(
            &self.context.usage,
            resolved,
            period.window.from,
            period.window.to,
        )
        .await
        {
            Ok(report) => report,
            Err(crate::readmodel::report::UsageError::Store(e)) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, subscription = %subscription.external_id,
                    "no report for alerts");
                return Ok(());
            }
        };
        let now = Utc::now();
        for (alert, id) in due {
            let Some((value, threshold)) = measure(alert, &report) else {
                continue;
            };
            if value >= threshold {
                let reached = Reached {
                    id,
                    alert,
                    report: &report,
                    plan: &phase.plan,
                    period,
                    value,
                    threshold,
                };
                self.reached.push(FiringRow {
                    tenant: resolved.tenant.to_owned(),
                    id: reached.id.clone(),
                    alert: alert.code.clone(),
                    subscription: subscription.external_id.clone(),
                    period_from_ms: period.window.from.timestamp_millis(),
                    payload: reached.payload(now).to_string(),
                    fired_ms: now.timestamp_millis(),
                });
            }
        }
        Ok(())
    }

    /// Records the alerts this round reached, unless recorded already, with their deliveries,
    /// in one insert per table; then sends them. The customers of those it could not record are
    /// looked at again shortly.
    async fn fire_reached(&mut self, customers: &HashMap<String, Touched>) {
        let mut reached = std::mem::take(&mut self.reached);
        if reached.is_empty() {
            return;
        }
        let store = self.context.store.clone();
        let mut claims = Vec::new();
        if let Some(redis) = self.context.redis.clone() {
            let mut claimed = Vec::new();
            for firing in reached {
                let name = format!("alert:{}:{}", firing.tenant, firing.id);
                let mut claim = Lock::new(redis.clone(), store.database(), &name);
                match claim.try_take(30_000).await {
                    Ok(true) => {
                        claims.push(claim);
                        claimed.push(firing);
                    }
                    // Another replica is recording it; should it die first, the claim expires
                    // and a later look fires it.
                    Ok(false) => self.look_again_at(customers, &firing),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis unavailable: an alert waits");
                        self.look_again_at(customers, &firing);
                    }
                }
            }
            reached = claimed;
        }
        match self.record(&reached).await {
            Ok(()) => {
                let now_ms = Utc::now().timestamp_millis();
                self.fired
                    .extend(reached.into_iter().map(|f| (f.id, now_ms)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording fired alerts failed; looked at again shortly");
                for firing in &reached {
                    self.look_again_at(customers, firing);
                }
            }
        }
        for mut claim in claims {
            claim.give_back().await;
        }
    }

    fn look_again_at(&mut self, customers: &HashMap<String, Touched>, firing: &FiringRow) {
        if let Some(touched) = customers.get(&firing.id) {
            self.again
                .push_back((Instant::now() + LOOK_AGAIN_AFTER, touched.clone()));
        }
    }

    /// Stores the firings not stored yet and their deliveries, and sends the deliveries: they
    /// go once stored, and the firings are stored last, so that a firing on record always has
    /// its deliveries.
    async fn record(&self, reached: &[FiringRow]) -> Result<(), StoreError> {
        let store = &self.context.store;
        let mut by_tenant: HashMap<&str, Vec<&FiringRow>> = HashMap::new();
        for firing in reached {
            by_tenant.entry(&firing.tenant).or_default().push(firing);
        }
        let (mut firings, mut deliveries) = (Vec::new(), Vec::new());
        // Made now: other processes leave a delivery never attempted to its maker for a while
        // from this moment.
        let made_ms = Utc::now().timestamp_millis();
        for (tenant, candidates) in by_tenant {
            let ids: Vec<String> = candidates.iter().map(|f| f.id.clone()).collect();
            let recorded = store.fired_among(tenant, &ids).await?;
            let catalog = self.context.catalog.tenant(tenant);
            for firing in candidates.into_iter().filter(|f| !recorded.contains(&f.id)) {
                deliveries.extend(
                    catalog
                        .webhook_endpoints
                        .values()
                        .filter(|e| e.receives(ALERT_TRIGGERED))
                        .map(|endpoint| DeliveryRow {
                            tenant: tenant.to_owned(),
                            id: firing.id.clone(),
                            endpoint: endpoint.id.clone(),
                            kind: ALERT_TRIGGERED.into(),
                            payload: firing.payload.clone(),
                            created_ms: made_ms,
                            state: "pending".into(),
                            attempts: 0,
                            next_attempt_ms: made_ms,
                            last_status: 0,
                            last_error: String::new(),
                            version: 0,
                        }),
                );
                tracing::info!(tenant, alert = %firing.alert, subscription = %firing.subscription,
                    event = %firing.id, "alert fired");
                firings.push(firing.clone());
            }
        }
        store.insert_deliveries(&deliveries).await?;
        for row in deliveries {
            self.outbox.send_new(row);
        }
        store.insert_firings(&firings).await
    }
}

/// An alert reached in one period.
struct Reached<'a> {
    id: String,
    alert: &'a Alert,
    report: &'a UsageReport,
    plan: &'a str,
    period: &'a Period,
    value: Decimal,
    threshold: Decimal,
}

impl Reached<'_> {
    /// The `alert.triggered` event.
    fn payload(&self, now: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": ALERT_TRIGGERED,
            "created_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": {
                "alert": self.alert.code,
                "subscription": self.report.subscription,
                "customer": self.report.customer,
                "plan": self.plan,
                "price": self.alert.price,
                "metric": self.alert.metric(),
                "threshold": self.threshold,
                "value": self.value,
                "currency": self.report.currency,
                "period": {"from": self.period.window.from, "to": self.period.window.to},
            }
        })
    }
}

/// The alert's value in the report and the threshold it fires at; `None` when the report has
/// no such price (a plan of the period without it) or the price includes no units for a
/// percent threshold.
fn measure(alert: &Alert, report: &UsageReport) -> Option<(Decimal, Decimal)> {
    let Some(price) = &alert.price else {
        return Some((report.total, alert.threshold_for(Decimal::ZERO)?));
    };
    let charges: Vec<_> = report
        .charges
        .iter()
        .filter(|c| &c.price == price)
        .collect();
    if charges.is_empty() {
        return None;
    }
    let value = match alert.metric() {
        AlertMetric::Quantity => charges.iter().map(|c| c.quantity).sum(),
        AlertMetric::Amount => charges.iter().map(|c| c.amount).sum(),
    };
    let included = charges.iter().map(|c| c.included_units).max()?;
    Some((value, alert.threshold_for(included)?))
}

/// The id of an alert's event for one subscription and period: the same in every process and
/// after any restart; a new alert under an old code (created anew) gets new ids.
pub fn event_id(
    tenant: &str,
    alert: &Alert,
    subscription: &Subscription,
    period: &Period,
) -> String {
    let created = alert.created_at.map_or(0, |t| t.timestamp_micros());
    let mut hash = Sha256::new();
    for part in [
        tenant,
        &alert.code,
        &created.to_string(),
        &subscription.external_id,
        &period.window.from.timestamp_millis().to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    format!("evt_{}", &hex::encode(hash.finalize())[..32])
}

/// One entry per (tenant, customer), with the earliest and latest times.
fn coalesce(touched: Vec<Touched>) -> Vec<Touched> {
    let mut by: HashMap<(Arc<str>, String, bool), (i64, i64)> = HashMap::new();
    for t in touched {
        let (earliest, latest) = by
            .entry((t.tenant, t.customer, t.scan))
            .or_insert((t.earliest_ms, t.latest_ms));
        *earliest = (*earliest).min(t.earliest_ms);
        *latest = (*latest).max(t.latest_ms);
    }
    by.into_iter()
        .map(
            |((tenant, customer, scan), (earliest_ms, latest_ms))| Touched {
                tenant,
                customer,
                earliest_ms,
                latest_ms,
                scan,
            },
        )
        .collect()
}

/// The most billing periods besides the current one a look rates for one subscription (the
/// latest ones).
const MOST_PERIODS: usize = 12;

/// The billing periods events from `earliest` to `latest` fall in, and the current one (its
/// phase the one in force now): those a batch's alerts may have reached.
fn periods_of(
    resolved: &ResolvedSubscription<'_>,
    earliest: DateTime<Utc>,
    now: DateTime<Utc>,
    latest: DateTime<Utc>,
) -> Vec<Period> {
    let mut periods: Vec<Period> = Vec::new();
    let timeline = &resolved.timeline;
    if let Ok(Some(current)) = timeline.period_at(now) {
        periods.push(current);
    }
    let mut others: VecDeque<Period> = VecDeque::new();
    let mut t = earliest.max(timeline.start);
    while t <= latest.max(now) {
        let Ok(Some(period)) = timeline.period_at(t) else {
            break;
        };
        t = period.window.to;
        if !periods.iter().any(|p| p.window.from == period.window.from) {
            // The latest ones when there are more.
            if others.len() == MOST_PERIODS {
                others.pop_front();
            }
            others.push_back(period);
        }
    }
    periods.extend(others);
    periods
}
