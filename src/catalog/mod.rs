//! The tenants' catalog: meters, plans, customers and subscriptions.
//!
//! Stored in ClickHouse (`catalog`, one versioned JSON document per key) and held in memory as
//! one immutable snapshot per tenant, swapped on every change; reads never wait on a write.
//! Other processes' writes arrive by polling for newer versions ([`Catalog::refresh`]).

pub mod customer;
pub mod meter;
pub mod plan;
pub mod subscription;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use customer::Customer;
pub use meter::{Aggregation, Meter};
pub use plan::Plan;
pub use subscription::Subscription;

use crate::store::{Store, StoreError, queries};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Meter,
    Plan,
    Customer,
    Subscription,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meter => "meter",
            Self::Plan => "plan",
            Self::Customer => "customer",
            Self::Subscription => "subscription",
        }
    }

    /// The docs/api.md error code for a missing item of this kind.
    pub fn not_found_code(self) -> &'static str {
        match self {
            Self::Meter => "meter_not_found",
            Self::Plan => "plan_not_found",
            Self::Customer => "customer_not_found",
            Self::Subscription => "subscription_not_found",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The document itself is wrong; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    NotFound { kind: Kind, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_found(kind: Kind, field: &str, key: &str) -> CatalogError {
    let prefix = if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    };
    CatalogError::NotFound {
        kind,
        message: format!("{prefix}no {} '{key}' in this tenant", kind.as_str()),
    }
}

/// A catalog document kind.
pub trait Item: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: Kind;
    fn key(&self) -> &str;
    fn map(catalog: &TenantCatalog) -> &BTreeMap<String, Self>;
    fn map_mut(catalog: &mut TenantCatalog) -> &mut BTreeMap<String, Self>;
    /// Checks the document and its references against the tenant's catalog.
    fn check(&self, catalog: &TenantCatalog) -> Result<(), CatalogError>;
}

impl Item for Meter {
    const KIND: Kind = Kind::Meter;
    fn key(&self) -> &str {
        &self.slug
    }
    fn map(c: &TenantCatalog) -> &BTreeMap<String, Self> {
        &c.meters
    }
    fn map_mut(c: &mut TenantCatalog) -> &mut BTreeMap<String, Self> {
        &mut c.meters
    }
    fn check(&self, _: &TenantCatalog) -> Result<(), CatalogError> {
        self.validate().map_err(CatalogError::Invalid)
    }
}

impl Item for Plan {
    const KIND: Kind = Kind::Plan;
    fn key(&self) -> &str {
        &self.code
    }
    fn map(c: &TenantCatalog) -> &BTreeMap<String, Self> {
        &c.plans
    }
    fn map_mut(c: &mut TenantCatalog) -> &mut BTreeMap<String, Self> {
        &mut c.plans
    }
    fn check(&self, catalog: &TenantCatalog) -> Result<(), CatalogError> {
        self.validate().map_err(CatalogError::Invalid)?;
        for (i, price) in self.prices.iter().enumerate() {
            if let Some(meter) = &price.meter
                && !catalog.meters.contains_key(meter)
            {
                return Err(not_found(Kind::Meter, &format!("prices[{i}].meter"), meter));
            }
        }
        Ok(())
    }
}

impl Item for Customer {
    const KIND: Kind = Kind::Customer;
    fn key(&self) -> &str {
        &self.external_id
    }
    fn map(c: &TenantCatalog) -> &BTreeMap<String, Self> {
        &c.customers
    }
    fn map_mut(c: &mut TenantCatalog) -> &mut BTreeMap<String, Self> {
        &mut c.customers
    }
    fn check(&self, _: &TenantCatalog) -> Result<(), CatalogError> {
        self.validate().map_err(CatalogError::Invalid)
    }
}

impl Item for Subscription {
    const KIND: Kind = Kind::Subscription;
    fn key(&self) -> &str {
        &self.external_id
    }
    fn map(c: &TenantCatalog) -> &BTreeMap<String, Self> {
        &c.subscriptions
    }
    fn map_mut(c: &mut TenantCatalog) -> &mut BTreeMap<String, Self> {
        &mut c.subscriptions
    }
    fn check(&self, catalog: &TenantCatalog) -> Result<(), CatalogError> {
        if !plan::is_key(&self.external_id) {
            return Err(CatalogError::Invalid(format!(
                "external_id: {}",
                plan::KEY_RULE
            )));
        }
        if !catalog.customers.contains_key(&self.customer) {
            return Err(not_found(Kind::Customer, "customer", &self.customer));
        }
        for phase in &self.phases {
            if !catalog.plans.contains_key(&phase.plan) {
                return Err(not_found(Kind::Plan, "plan", &phase.plan));
            }
        }
        Ok(())
    }
}

/// A meter with the strings every sample repeats, shared rather than copied per event.
#[derive(Debug)]
pub struct MeterEntry {
    pub meter: Meter,
    pub slug: Arc<str>,
    /// The meter's `group_by`, then any other property a price on it groups by.
    pub group_keys: Arc<[String]>,
}

/// One tenant's catalog at one moment. Immutable once built.
#[derive(Debug, Default, Clone)]
pub struct TenantCatalog {
    pub meters: BTreeMap<String, Meter>,
    pub plans: BTreeMap<String, Plan>,
    pub customers: BTreeMap<String, Customer>,
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Accept events older than 35 days or more than 1 day ahead.
    pub allow_backfill: bool,
    versions: HashMap<(Kind, String), u64>,
    meters_by_type: HashMap<String, Vec<Arc<MeterEntry>>>,
}

impl TenantCatalog {
    /// The meters that read events of `event_type`.
    pub fn meters_for(&self, event_type: &str) -> &[Arc<MeterEntry>] {
        self.meters_by_type
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn get<T: Item>(&self, key: &str) -> Option<&T> {
        T::map(self).get(key)
    }

    /// When the item under `key` was last written (versions are write times in microseconds).
    pub fn changed_at<T: Item>(&self, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let version = *self.versions.get(&(T::KIND, key.to_owned()))?;
        chrono::DateTime::from_timestamp_micros(i64::try_from(version).ok()?)
    }

    /// When anything in this catalog was last written.
    pub fn last_changed_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let version = *self.versions.values().max()?;
        chrono::DateTime::from_timestamp_micros(i64::try_from(version).ok()?)
    }

    /// Rebuilds the ingest index after a change.
    fn reindex(&mut self) {
        let mut by_type: HashMap<String, Vec<Arc<MeterEntry>>> = HashMap::new();
        for meter in self.meters.values() {
            let mut keys = meter.group_by.clone();
            let price_keys = self
                .plans
                .values()
                .flat_map(|p| p.usage_prices())
                .filter(|p| p.meter.as_deref() == Some(&meter.slug));
            for key in price_keys.flat_map(|p| p.group_by.iter()) {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            let entry = MeterEntry {
                meter: meter.clone(),
                slug: meter.slug.as_str().into(),
                group_keys: keys.into(),
            };
            by_type
                .entry(meter.event_type.clone())
                .or_default()
                .push(Arc::new(entry));
        }
        self.meters_by_type = by_type;
    }

    /// Takes `body` as the document at `version` unless a newer one is already here.
    fn apply_raw(
        &mut self,
        kind: Kind,
        key: &str,
        body: &str,
        version: u64,
    ) -> Result<bool, serde_json::Error> {
        let current = self
            .versions
            .get(&(kind, key.to_owned()))
            .copied()
            .unwrap_or(0);
        if version <= current {
            return Ok(false);
        }
        match kind {
            Kind::Meter => insert::<Meter>(self, body)?,
            Kind::Plan => insert::<Plan>(self, body)?,
            Kind::Customer => insert::<Customer>(self, body)?,
            Kind::Subscription => insert::<Subscription>(self, body)?,
        }
        self.versions.insert((kind, key.to_owned()), version);
        Ok(true)
    }
}

fn insert<T: Item>(catalog: &mut TenantCatalog, body: &str) -> Result<(), serde_json::Error> {
    let item: T = serde_json::from_str(body)?;
    T::map_mut(catalog).insert(item.key().to_owned(), item);
    Ok(())
}

#[derive(clickhouse::Row, Serialize, serde::Deserialize)]
struct CatalogRow {
    tenant: String,
    kind: String,
    key: String,
    body: String,
    version: u64,
}

/// How far back each poll looks, for writers whose clock is behind ours (microseconds).
const POLL_OVERLAP_US: u64 = 60_000_000;

/// All tenants' catalogs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Catalog {
    tenants: Arc<RwLock<HashMap<String, Arc<TenantCatalog>>>>,
    backfill_tenants: Arc<RwLock<Vec<String>>>,
    store: Option<Store>,
    seen_version: Arc<AtomicU64>,
    last_version: Arc<AtomicU64>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field(
                "tenants",
                &self.tenants.read().map(|t| t.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl Catalog {
    /// A catalog kept only in memory (tools and tests without ClickHouse).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A catalog stored in `store`, loaded from it.
    pub async fn open(store: Store) -> Result<Self, StoreError> {
        let catalog = Self {
            store: Some(store),
            ..Self::default()
        };
        catalog.refresh().await?;
        Ok(catalog)
    }

    /// The tenant's current snapshot; an empty one for an unknown tenant.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantCatalog> {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants.get(tenant).cloned().unwrap_or_else(|| {
            let allow_backfill = self.allows_backfill(tenant);
            Arc::new(TenantCatalog {
                allow_backfill,
                ..TenantCatalog::default()
            })
        })
    }

    /// Every tenant with a catalog, and its current snapshot.
    pub fn tenants(&self) -> Vec<(String, Arc<TenantCatalog>)> {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants
            .iter()
            .map(|(tenant, snapshot)| (tenant.clone(), snapshot.clone()))
            .collect()
    }

    fn allows_backfill(&self, tenant: &str) -> bool {
        self.backfill_tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|t| t == tenant)
    }

    /// Lets `tenant` send events outside the 35-day / 1-day window.
    pub fn allow_backfill(&self, tenant: &str) {
        self.backfill_tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(tenant.to_owned());
        self.update(tenant, |c| {
            c.allow_backfill = true;
            Ok(())
        })
        .ok();
    }

    /// Applies `change` to a copy of the tenant's snapshot and swaps it in.
    fn update(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut TenantCatalog) -> Result<(), CatalogError>,
    ) -> Result<(), CatalogError> {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let mut next = tenants
            .get(tenant)
            .map(|c| (**c).clone())
            .unwrap_or_default();
        next.allow_backfill = self.allows_backfill(tenant);
        change(&mut next)?;
        next.reindex();
        tenants.insert(tenant.to_owned(), Arc::new(next));
        Ok(())
    }

    /// A version above every one this process has written or seen.
    fn next_version(&self) -> u64 {
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let mut last = self.last_version.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_version.compare_exchange(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Creates `item`; `Conflict` if its key exists.
    pub async fn create<T: Item>(&self, tenant: &str, item: T) -> Result<T, CatalogError> {
        self.write(tenant, item, true).await
    }

    /// Replaces the item with `item`'s key; `NotFound` if there is none.
    pub async fn replace<T: Item>(&self, tenant: &str, item: T) -> Result<T, CatalogError> {
        self.write(tenant, item, false).await
    }

    async fn write<T: Item>(&self, tenant: &str, item: T, create: bool) -> Result<T, CatalogError> {
        let row = self.prepare(tenant, &self.tenant(tenant), &item, create)?;
        self.commit::<T>(tenant, vec![row]).await?;
        Ok(item)
    }

    /// Creates many items of one kind in one insert (imports, benchmarks); any invalid or
    /// existing key refuses the whole lot.
    pub async fn create_all<T: Item>(
        &self,
        tenant: &str,
        items: Vec<T>,
    ) -> Result<usize, CatalogError> {
        let snapshot = self.tenant(tenant);
        let rows = items
            .iter()
            .map(|item| self.prepare(tenant, &snapshot, item, true))
            .collect::<Result<Vec<_>, _>>()?;
        self.commit::<T>(tenant, rows).await
    }

    /// Checks `item` against `snapshot` (a create needs a new key, a replace an existing one)
    /// and makes its versioned row.
    fn prepare<T: Item>(
        &self,
        tenant: &str,
        snapshot: &TenantCatalog,
        item: &T,
        create: bool,
    ) -> Result<CatalogRow, CatalogError> {
        item.check(snapshot)?;
        let exists = snapshot.get::<T>(item.key()).is_some();
        if create && exists {
            return Err(CatalogError::Conflict(format!(
                "a {} '{}' already exists; PUT replaces it",
                T::KIND.as_str(),
                item.key()
            )));
        }
        if !create && !exists {
            return Err(not_found(T::KIND, "", item.key()));
        }
        let body = serde_json::to_string(item).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        Ok(CatalogRow {
            tenant: tenant.into(),
            kind: T::KIND.as_str().into(),
            key: item.key().into(),
            body,
            version: self.next_version(),
        })
    }

    /// Stores `rows` in one insert, then swaps them into the tenant's snapshot.
    async fn commit<T: Item>(
        &self,
        tenant: &str,
        rows: Vec<CatalogRow>,
    ) -> Result<usize, CatalogError> {
        if let Some(store) = &self.store {
            let mut insert = store
                .client()
                .insert::<CatalogRow>("catalog")
                .await
                .map_err(StoreError::from)?;
            for row in &rows {
                insert.write(row).await.map_err(StoreError::from)?;
            }
            insert.end().await.map_err(StoreError::from)?;
        }
        self.update(tenant, |c| {
            for row in &rows {
                c.apply_raw(T::KIND, &row.key, &row.body, row.version)
                    .map_err(|e| CatalogError::Invalid(e.to_string()))?;
            }
            Ok(())
        })?;
        Ok(rows.len())
    }

    /// Loads documents written since the last poll (by any process); returns how many changed.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let since = self
            .seen_version
            .load(Ordering::Relaxed)
            .saturating_sub(POLL_OVERLAP_US);
        let rows: Vec<CatalogRow> = store
            .client()
            .query(queries::CATALOG_SINCE)
            .bind(since)
            .fetch_all()
            .await?;
        let mut by_tenant: BTreeMap<&str, Vec<&CatalogRow>> = BTreeMap::new();
        for row in &rows {
            by_tenant.entry(&row.tenant).or_default().push(row);
        }
        let mut changed = 0;
        for (tenant, rows) in by_tenant {
            let _ = self.update(tenant, |c| {
                for row in rows {
                    let Some(kind) = [Kind::Meter, Kind::Plan, Kind::Customer, Kind::Subscription].into_iter().find(|k| k.as_str() == row.kind) else { continue };
                    match c.apply_raw(kind, &row.key, &row.body, row.version) {
                        Ok(true) => changed += 1,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(tenant, kind = row.kind, key = row.key, error = %e, "unreadable catalog document skipped"),
                    }
                }
                Ok(())
            });
        }
        if let Some(max) = rows.iter().map(|r| r.version).max() {
            self.seen_version.fetch_max(max, Ordering::Relaxed);
            self.last_version.fetch_max(max, Ordering::Relaxed);
        }
        Ok(changed)
    }

    /// Polls for other processes' changes every `every`.
    pub fn spawn_refresh(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let catalog = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = catalog.refresh().await {
                    tracing::debug!(error = %e, "catalog refresh failed");
                }
            }
        })
    }

    /// Applies a seed file: backfill settings, then every item not already present.
    pub async fn seed(&self, seed: &Seed) -> Result<(), CatalogError> {
        for tenant in &seed.tenants {
            if tenant.allow_backfill {
                self.allow_backfill(&tenant.id);
            }
            seed_items(self, &tenant.id, &tenant.meters).await?;
            seed_items(self, &tenant.id, &tenant.plans).await?;
            seed_items(self, &tenant.id, &tenant.customers).await?;
            let now = chrono::Utc::now();
            let subscriptions: Vec<_> = tenant
                .subscriptions
                .iter()
                .cloned()
                .map(|s| s.into_subscription(now))
                .collect();
            seed_items(self, &tenant.id, &subscriptions).await?;
        }
        Ok(())
    }

    /// An in-memory catalog from seed JSON (see `demo/catalog.json`).
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let seed: Seed = serde_json::from_str(text)?;
        let catalog = Self::in_memory();
        run_ready(catalog.seed(&seed))?;
        Ok(catalog)
    }

    /// Reads a seed file.
    pub fn read_seed(path: &Path) -> anyhow::Result<Seed> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading catalog {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("catalog {}: {e}", path.display()))
    }

    /// An in-memory catalog from a seed file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let seed = Self::read_seed(path)?;
        let catalog = Self::in_memory();
        run_ready(catalog.seed(&seed))?;
        Ok(catalog)
    }
}

async fn seed_items<T: Item>(
    catalog: &Catalog,
    tenant: &str,
    items: &[T],
) -> Result<(), CatalogError> {
    for item in items {
        match catalog.create(tenant, item.clone()).await {
            Ok(_) | Err(CatalogError::Conflict(_)) => {}
            Err(e) => {
                return Err(CatalogError::Invalid(format!(
                    "tenant {tenant}, {} {}: {e}",
                    T::KIND.as_str(),
                    item.key()
                )));
            }
        }
    }
    Ok(())
}

/// Runs a future that never waits on IO (an in-memory catalog's writes) to completion.
fn run_ready<F: std::future::Future>(future: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

/// A catalog seed file: tenants with their settings and items, created if missing.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub tenants: Vec<SeedTenant>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTenant {
    pub id: String,
    #[serde(default)]
    pub allow_backfill: bool,
    #[serde(default)]
    pub meters: Vec<Meter>,
    #[serde(default)]
    pub plans: Vec<Plan>,
    #[serde(default)]
    pub customers: Vec<Customer>,
    #[serde(default)]
    pub subscriptions: Vec<subscription::SubscriptionInput>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_groups_meters_by_event_type() {
        let catalog = Catalog::from_json(
            r#"{"tenants": [{"id": "t1", "meters": [
                {"slug": "calls", "name": "Calls", "event_type": "api_call", "aggregation": "count"},
                {"slug": "tokens", "name": "Tokens", "event_type": "api_call", "aggregation": "sum", "value_property": "tokens"}]}]}"#,
        )
        .unwrap();
        assert_eq!(catalog.tenant("t1").meters_for("api_call").len(), 2);
        assert!(catalog.tenant("t1").meters_for("other").is_empty());
        assert!(catalog.tenant("nobody").meters_for("api_call").is_empty());
    }

    #[test]
    fn an_invalid_meter_names_its_tenant_and_slug() {
        let err = Catalog::from_json(
            r#"{"tenants": [{"id": "t1", "meters": [
                {"slug": "tokens", "name": "Tokens", "event_type": "llm", "aggregation": "sum"}]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tenant t1, meter tokens"), "{err}");
    }

    #[test]
    fn samples_group_by_the_meter_keys_then_its_prices_keys() {
        let catalog = Catalog::from_json(
            r#"{"tenants": [{"id": "t", "meters": [
                {"slug": "tokens", "name": "T", "event_type": "llm", "aggregation": "sum", "value_property": "n", "group_by": ["model"]}],
              "plans": [{"code": "p", "name": "P", "currency": "USD", "interval": "month", "prices": [
                {"code": "t", "type": "usage", "meter": "tokens", "model": "per_unit", "unit_amount": "1", "group_by": ["region", "model"]}]}]}]}"#,
        )
        .unwrap();
        let tenant = catalog.tenant("t");
        assert_eq!(
            &*tenant.meters_for("llm")[0].group_keys,
            ["model".to_string(), "region".to_string()]
        );
    }

    #[test]
    fn references_must_exist_and_keys_must_be_new() {
        let catalog = Catalog::in_memory();
        let plan: Plan = serde_json::from_str(
            r#"{"code": "p", "name": "P", "currency": "USD", "interval": "month", "prices": [
                {"code": "t", "type": "usage", "meter": "nope", "model": "per_unit", "unit_amount": "1"}]}"#,
        )
        .unwrap();
        let err = run_ready(catalog.create("t", plan)).unwrap_err();
        assert!(
            matches!(
                err,
                CatalogError::NotFound {
                    kind: Kind::Meter,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().starts_with("prices[0].meter"), "{err}");
        let customer: Customer = serde_json::from_str(r#"{"external_id": "c1"}"#).unwrap();
        run_ready(catalog.create("t", customer.clone())).unwrap();
        assert!(matches!(
            run_ready(catalog.create("t", customer)),
            Err(CatalogError::Conflict(_))
        ));
    }
}
