//! The tenants' catalog as ingest needs it: meters and per-tenant settings, held in memory.
//!
//! Loaded from a JSON file (`--catalog`); lookups are lock-free reads of an `Arc` snapshot.

pub mod meter;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

pub use meter::{Aggregation, Meter};

/// A meter with the strings every sample repeats, shared rather than copied per event.
#[derive(Debug)]
pub struct MeterEntry {
    pub meter: Meter,
    pub slug: Arc<str>,
    pub group_keys: Arc<[String]>,
}

impl MeterEntry {
    pub fn new(meter: Meter) -> Self {
        Self {
            slug: meter.slug.as_str().into(),
            group_keys: meter.group_by.clone().into(),
            meter,
        }
    }
}

/// What ingest needs to know of one tenant.
#[derive(Debug, Default)]
pub struct TenantCatalog {
    /// Meters by the event type they read.
    pub meters_by_type: HashMap<String, Vec<Arc<MeterEntry>>>,
    /// Accept events older than 35 days or more than 1 day ahead.
    pub allow_backfill: bool,
}

impl TenantCatalog {
    pub fn meters_for(&self, event_type: &str) -> &[Arc<MeterEntry>] {
        self.meters_by_type
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    tenants: Vec<TenantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    id: String,
    #[serde(default)]
    allow_backfill: bool,
    #[serde(default)]
    meters: Vec<Meter>,
}

/// All tenants' catalogs. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tenants: Arc<RwLock<HashMap<String, Arc<TenantCatalog>>>>,
}

impl Catalog {
    /// Reads a catalog file; every meter is validated, errors name the tenant and meter.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading catalog {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| anyhow::anyhow!("catalog {}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let file: CatalogFile = serde_json::from_str(text)?;
        let catalog = Self::default();
        for tenant in file.tenants {
            for meter in &tenant.meters {
                meter.validate().map_err(|e| {
                    anyhow::anyhow!("tenant {}, meter {}: {e}", tenant.id, meter.slug)
                })?;
            }
            catalog.set_tenant(&tenant.id, tenant.meters, tenant.allow_backfill);
        }
        Ok(catalog)
    }

    /// Replaces one tenant's meters and settings.
    pub fn set_tenant(&self, tenant: &str, meters: Vec<Meter>, allow_backfill: bool) {
        let mut meters_by_type: HashMap<String, Vec<Arc<MeterEntry>>> = HashMap::new();
        for meter in meters {
            meters_by_type
                .entry(meter.event_type.clone())
                .or_default()
                .push(Arc::new(MeterEntry::new(meter)));
        }
        let entry = Arc::new(TenantCatalog {
            meters_by_type,
            allow_backfill,
        });
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_owned(), entry);
    }

    /// The tenant's catalog; an empty one for a tenant with no entry.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantCatalog> {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants.get(tenant).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_file_groups_meters_by_event_type() {
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
}
