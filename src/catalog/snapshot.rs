//! One tenant's catalog at one moment, and the index ingest reads it by.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::item::{Item, Kind};
use crate::domain::{Alert, Customer, Meter, Plan, Subscription, WebhookEndpoint};

/// A meter with the strings every sample repeats, shared rather than copied per event.
#[derive(Debug)]
pub struct MeterEntry {
    /// The meter, its `group_by` widened to `group_keys`: the values every sample carries.
    pub meter: Meter,
    pub slug: Arc<str>,
    /// The meter's `group_by`, then any other property a price on it groups by.
    pub group_keys: Arc<[String]>,
    /// The unit amount properties of the `dynamic` prices on it, each once: every sample also
    /// goes, priced at each, under [`crate::domain::plan::priced_meter`].
    pub priced: Vec<PricedBy>,
}

/// A property that prices a meter's samples, and the meter its priced samples go under.
#[derive(Debug)]
pub struct PricedBy {
    pub property: String,
    pub slug: Arc<str>,
}

/// One tenant's catalog at one moment. Immutable once built.
#[derive(Debug, Default, Clone)]
pub struct TenantCatalog {
    pub meters: BTreeMap<String, Meter>,
    pub plans: BTreeMap<String, Plan>,
    pub customers: BTreeMap<String, Customer>,
    pub subscriptions: BTreeMap<String, Subscription>,
    pub alerts: BTreeMap<String, Alert>,
    /// Webhook receivers, by id; their secrets too, never shown after creation.
    pub webhook_endpoints: BTreeMap<String, WebhookEndpoint>,
    /// Accept events older than 35 days or more than 1 day ahead.
    pub allow_backfill: bool,
    pub(super) versions: HashMap<(Kind, String), u64>,
    pub(super) meters_by_type: HashMap<String, Vec<Arc<MeterEntry>>>,
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
    pub(super) fn reindex(&mut self) {
        let mut by_type: HashMap<String, Vec<Arc<MeterEntry>>> = HashMap::new();
        for meter in self.meters.values() {
            let mut keys = meter.group_by.clone();
            let price_keys = self
                .plans
                .values()
                .flat_map(|p| p.usage_prices())
                .filter(|p| p.meter.as_deref() == Some(&meter.slug));
            let mut priced: Vec<PricedBy> = Vec::new();
            for price in price_keys {
                for key in &price.group_by {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
                let property = price.unit_amount_property.as_ref();
                if let (Some(property), Some(slug)) = (property, price.priced_meter())
                    && !priced.iter().any(|p| &p.property == property)
                {
                    priced.push(PricedBy {
                        property: property.clone(),
                        slug: slug.into(),
                    });
                }
            }
            let entry = MeterEntry {
                meter: Meter {
                    group_by: keys.clone(),
                    ..meter.clone()
                },
                slug: meter.slug.as_str().into(),
                group_keys: keys.into(),
                priced,
            };
            by_type
                .entry(meter.event_type.clone())
                .or_default()
                .push(Arc::new(entry));
        }
        self.meters_by_type = by_type;
    }

    /// Takes `body` as the document at `version` unless a newer one is already here; an empty
    /// body removes the key (see `Catalog::delete`).
    pub(super) fn apply_raw(
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
            Kind::Meter => insert::<Meter>(self, key, body)?,
            Kind::Plan => insert::<Plan>(self, key, body)?,
            Kind::Customer => insert::<Customer>(self, key, body)?,
            Kind::Subscription => insert::<Subscription>(self, key, body)?,
            Kind::Alert => insert::<Alert>(self, key, body)?,
            Kind::WebhookEndpoint => insert::<WebhookEndpoint>(self, key, body)?,
        }
        self.versions.insert((kind, key.to_owned()), version);
        Ok(true)
    }
}

fn insert<T: Item>(
    catalog: &mut TenantCatalog,
    key: &str,
    body: &str,
) -> Result<(), serde_json::Error> {
    if body.is_empty() {
        T::map_mut(catalog).remove(key);
        return Ok(());
    }
    let item: T = serde_json::from_str(body)?;
    T::map_mut(catalog).insert(item.key().to_owned(), item);
    Ok(())
}
