//! The kinds of catalog documents and what the catalog needs of each: its key, its map in a
//! tenant's snapshot, and the checks of its references.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TenantCatalog;
use crate::domain::alert::AlertMetric;
use crate::domain::plan::UsageModel;
use crate::domain::{Alert, Customer, Meter, Plan, Subscription, WebhookEndpoint, plan};
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Meter,
    Plan,
    Customer,
    Subscription,
    Alert,
    WebhookEndpoint,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Meter,
        Kind::Plan,
        Kind::Customer,
        Kind::Subscription,
        Kind::Alert,
        Kind::WebhookEndpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meter => "meter",
            Self::Plan => "plan",
            Self::Customer => "customer",
            Self::Subscription => "subscription",
            Self::Alert => "alert",
            Self::WebhookEndpoint => "webhook_endpoint",
        }
    }

    /// The docs/api.md error code for a missing item of this kind.
    pub fn not_found_code(self) -> &'static str {
        match self {
            Self::Meter => "meter_not_found",
            Self::Plan => "plan_not_found",
            Self::Customer => "customer_not_found",
            Self::Subscription => "subscription_not_found",
            Self::Alert => "alert_not_found",
            Self::WebhookEndpoint => "webhook_endpoint_not_found",
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

pub(super) fn not_found(kind: Kind, field: &str, key: &str) -> CatalogError {
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
            let Some(slug) = &price.meter else { continue };
            let Some(meter) = catalog.meters.get(slug) else {
                return Err(not_found(Kind::Meter, &format!("prices[{i}].meter"), slug));
            };
            if price.model == Some(UsageModel::Percentage)
                && meter.aggregation != crate::domain::Aggregation::Sum
            {
                return Err(CatalogError::Invalid(format!(
                    "prices[{i}].model: percentage takes a share of a sum, and meter '{slug}' \
                     is not a sum meter"
                )));
            }
            if price.model == Some(UsageModel::Dynamic)
                && !matches!(
                    meter.aggregation,
                    crate::domain::Aggregation::Sum | crate::domain::Aggregation::Count
                )
            {
                return Err(CatalogError::Invalid(format!(
                    "prices[{i}].model: dynamic prices each event's units (a sum or a count), \
                     and meter '{slug}' is neither"
                )));
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

impl Item for Alert {
    const KIND: Kind = Kind::Alert;
    fn key(&self) -> &str {
        &self.code
    }
    fn map(c: &TenantCatalog) -> &BTreeMap<String, Self> {
        &c.alerts
    }
    fn map_mut(c: &mut TenantCatalog) -> &mut BTreeMap<String, Self> {
        &mut c.alerts
    }
    fn check(&self, catalog: &TenantCatalog) -> Result<(), CatalogError> {
        self.validate().map_err(CatalogError::Invalid)?;
        let plans: Vec<&Plan> = match (&self.subscription, &self.plan) {
            (Some(key), _) => {
                let subscription = catalog
                    .subscriptions
                    .get(key)
                    .ok_or_else(|| not_found(Kind::Subscription, "subscription", key))?;
                subscription
                    .phases
                    .iter()
                    .filter_map(|phase| catalog.plans.get(&phase.plan))
                    .collect()
            }
            (None, Some(code)) => vec![
                catalog
                    .plans
                    .get(code)
                    .ok_or_else(|| not_found(Kind::Plan, "plan", code))?,
            ],
            (None, None) => vec![],
        };
        let Some(code) = &self.price else {
            return Ok(());
        };
        let prices: Vec<&plan::Price> = plans
            .iter()
            .flat_map(|p| p.usage_prices())
            .filter(|p| &p.code == code)
            .collect();
        if prices.is_empty() {
            return Err(CatalogError::Invalid(format!(
                "price: no usage price '{code}' in the plan{} watched",
                if plans.len() > 1 { "s" } else { "" }
            )));
        }
        let includes =
            |p: &&plan::Price| p.included_units.unwrap_or_default() > rust_decimal::Decimal::ZERO;
        if self.threshold_percent_of_included.is_some()
            && self.metric() == AlertMetric::Quantity
            && !prices.iter().any(includes)
        {
            return Err(CatalogError::Invalid(format!(
                "threshold_percent_of_included: price '{code}' includes no units; use threshold"
            )));
        }
        Ok(())
    }
}

impl Item for WebhookEndpoint {
    const KIND: Kind = Kind::WebhookEndpoint;
    fn key(&self) -> &str {
        &self.id
    }
    fn map(c: &TenantCatalog) -> &BTreeMap<String, Self> {
        &c.webhook_endpoints
    }
    fn map_mut(c: &mut TenantCatalog) -> &mut BTreeMap<String, Self> {
        &mut c.webhook_endpoints
    }
    fn check(&self, _: &TenantCatalog) -> Result<(), CatalogError> {
        self.validate().map_err(CatalogError::Invalid)
    }
}
