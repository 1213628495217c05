//! The tenants' catalog: meters, plans, customers, subscriptions, alerts and webhook endpoints.
//!
//! Stored in ClickHouse (`catalog`, one versioned JSON document per key; `store::catalog`) and
//! held in memory as one immutable snapshot per tenant, swapped on every change; reads never
//! wait on a write. Other processes' writes arrive by polling for newer versions
//! ([`Catalog::refresh`]).
//!
//! - `item`: the document kinds and their checks.
//! - `snapshot`: one tenant's catalog at one moment.
//! - `seed`: seed files.

mod item;
mod seed;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use item::not_found;
pub use item::{CatalogError, Item, Kind};
pub use seed::{Seed, SeedTenant};
pub use snapshot::{MeterEntry, PricedBy, TenantCatalog};

#[cfg(test)]
use crate::domain::{Customer, Plan};
use crate::store::catalog::CatalogRow;
use crate::store::{Store, StoreError};
#[cfg(test)]
use seed::run_ready;

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

    /// Removes the item under `key` (a row with an empty body); `NotFound` if there is none.
    /// Only for kinds nothing else refers to (alerts, webhook endpoints).
    pub async fn delete<T: Item>(&self, tenant: &str, key: &str) -> Result<(), CatalogError> {
        if self.tenant(tenant).get::<T>(key).is_none() {
            return Err(not_found(T::KIND, "", key));
        }
        let row = CatalogRow {
            tenant: tenant.into(),
            kind: T::KIND.as_str().into(),
            key: key.into(),
            body: String::new(),
            version: self.next_version(),
        };
        self.commit::<T>(tenant, vec![row]).await?;
        Ok(())
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
            store.insert_catalog_rows(&rows).await?;
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
        let rows = store.catalog_rows_since(since).await?;
        let mut by_tenant: BTreeMap<&str, Vec<&CatalogRow>> = BTreeMap::new();
        for row in &rows {
            by_tenant.entry(&row.tenant).or_default().push(row);
        }
        let mut changed = 0;
        for (tenant, rows) in by_tenant {
            let _ = self.update(tenant, |c| {
                for row in rows {
                    let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == row.kind) else { continue };
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
