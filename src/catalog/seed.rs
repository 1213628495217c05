//! Seed files: tenants, their settings and items, created where missing (the demo catalog,
//! `--catalog`, tools and tests).

use std::path::Path;

use super::Catalog;
use super::item::{CatalogError, Item};
use crate::domain::{Customer, Meter, Plan, subscription};

impl Catalog {
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
pub(super) fn run_ready<F: std::future::Future>(future: F) -> F::Output {
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
