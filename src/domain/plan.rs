//! Plans and their prices (docs/api.md "Plans"), validated into what the rating engine takes.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::billing::money::is_currency_code;
use crate::billing::period::Interval;
use crate::billing::rating::{DynamicAmounts, Model, Rounding, Tier};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub code: String,
    pub name: String,
    pub currency: String,
    pub interval: Interval,
    #[serde(default = "one")]
    pub interval_count: u32,
    #[serde(default)]
    pub trial_days: u32,
    #[serde(default)]
    pub prices: Vec<Price>,
    /// The least a billing period is billed: below it, the report adds the difference as a
    /// `commitment_true_up`, prorated like flat fees when the plan covers part of a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_commitment: Option<Commitment>,
}

/// A plan's minimum commitment per billing period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Commitment {
    #[serde(deserialize_with = "crate::billing::decimal::required")]
    pub amount: Decimal,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceType {
    Flat,
    Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    Advance,
    Arrears,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageModel {
    PerUnit,
    Package,
    Graduated,
    Volume,
    Percentage,
    Dynamic,
}

/// One price of a plan. Which fields apply depends on `type` and `model`; `Plan::validate`
/// checks them and names the first field at fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub code: String,
    #[serde(rename = "type")]
    pub kind: PriceType,
    // Flat prices.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prorate: Option<bool>,
    // Usage prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<UsageModel>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub included_units: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub unit_amount: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub package_size: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub package_amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounding: Option<Rounding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// `percentage`: percent of the quantity (`"2.9"` is 2.9%).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub rate: Option<Decimal>,
    /// `percentage`: charged for each event past `free_events`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub fixed_amount: Option<Decimal>,
    /// `percentage`: events of each period (and group) without the fixed amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_events: Option<u64>,
    /// `dynamic`: the event property (dots walk into objects) holding each event's unit
    /// amount; an event the meter samples must carry it as a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_amount_property: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub minimum_amount: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::billing::decimal::option"
    )]
    pub maximum_amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
}

impl Price {
    /// The rating model of a valid usage price; `None` for flat prices.
    pub fn rating_model(&self) -> Option<Model<'_>> {
        Some(match self.model? {
            UsageModel::PerUnit => Model::PerUnit {
                unit_amount: self.unit_amount?,
            },
            UsageModel::Package => Model::Package {
                size: self.package_size?,
                amount: self.package_amount?,
                rounding: self.rounding.unwrap_or(Rounding::Up),
            },
            UsageModel::Graduated => Model::Graduated(&self.tiers),
            UsageModel::Volume => Model::Volume(&self.tiers),
            UsageModel::Percentage => Model::Percentage {
                rate: self.rate?,
                fixed_amount: self.fixed_amount.unwrap_or_default(),
                free_events: self.free_events.unwrap_or(0),
            },
            UsageModel::Dynamic => {
                self.unit_amount_property.as_ref()?;
                Model::Dynamic(DynamicAmounts::default())
            }
        })
    }

    /// The meter holding this price's per-event amounts (value × unit amount) beside its
    /// meter's samples: `dynamic` prices only.
    pub fn priced_meter(&self) -> Option<String> {
        if self.model != Some(UsageModel::Dynamic) {
            return None;
        }
        Some(priced_meter(
            self.meter.as_deref()?,
            self.unit_amount_property.as_deref()?,
        ))
    }

    /// The price of one unit past the included ones: the unit amount, a package's amount per
    /// unit, or the first tier's unit amount. `None` for flat prices.
    pub fn overage_unit_amount(&self) -> Option<Decimal> {
        match self.rating_model()? {
            Model::PerUnit { unit_amount } => Some(unit_amount),
            Model::Package { size, amount, .. } => amount.checked_div(size),
            Model::Graduated(tiers) | Model::Volume(tiers) => tiers.first().map(|t| t.unit_amount),
            Model::Percentage { rate, .. } => rate.checked_div(Decimal::ONE_HUNDRED),
            Model::Dynamic(_) => None,
        }
    }

    pub fn included(&self) -> Decimal {
        self.included_units.unwrap_or_default()
    }

    fn validate(&self, at: &str) -> Result<(), String> {
        let field = |name: &str, why: &str| Err(format!("{at}.{name}: {why}"));
        if !is_key(&self.code) {
            return field("code", KEY_RULE);
        }
        let negative = |d: Option<Decimal>| d.is_some_and(|d| d.is_sign_negative() && !d.is_zero());
        for (name, value) in [
            ("amount", self.amount),
            ("included_units", self.included_units),
            ("unit_amount", self.unit_amount),
            ("package_amount", self.package_amount),
            ("minimum_amount", self.minimum_amount),
            ("maximum_amount", self.maximum_amount),
            ("rate", self.rate),
            ("fixed_amount", self.fixed_amount),
        ] {
            if negative(value) {
                return field(name, "must not be negative");
            }
        }
        match self.kind {
            PriceType::Flat => {
                if self.amount.is_none() {
                    return field("amount", "required for a flat price");
                }
                if self.meter.is_some() || self.model.is_some() {
                    return field("meter", "a flat price has no meter or model");
                }
                Ok(())
            }
            PriceType::Usage => self.validate_usage(at),
        }
    }

    fn validate_usage(&self, at: &str) -> Result<(), String> {
        let field = |name: &str, why: &str| Err(format!("{at}.{name}: {why}"));
        if self.meter.as_deref().is_none_or(str::is_empty) {
            return field("meter", "required for a usage price");
        }
        let Some(model) = self.model else {
            return field(
                "model",
                "required: per_unit, package, graduated, volume, percentage or dynamic",
            );
        };
        let percentage = model == UsageModel::Percentage;
        for (name, given) in [
            ("rate", self.rate.is_some()),
            ("fixed_amount", self.fixed_amount.is_some()),
            ("free_events", self.free_events.is_some()),
        ] {
            if given && !percentage {
                return field(name, "only for the percentage model");
            }
        }
        let dynamic = model == UsageModel::Dynamic;
        match &self.unit_amount_property {
            Some(_) if !dynamic => {
                return field("unit_amount_property", "only for the dynamic model");
            }
            Some(property) if !is_property_path(property) => {
                return field("unit_amount_property", PROPERTY_RULE);
            }
            None if dynamic => {
                return field(
                    "unit_amount_property",
                    "required for dynamic: the event property holding each event's unit amount",
                );
            }
            _ => {}
        }
        if let (Some(min), Some(max)) = (self.minimum_amount, self.maximum_amount)
            && min > max
        {
            return field("minimum_amount", "must not exceed maximum_amount");
        }
        match model {
            UsageModel::PerUnit if self.unit_amount.is_none() => {
                field("unit_amount", "required for per_unit")
            }
            UsageModel::Package if self.package_size.is_none_or(|s| s <= Decimal::ZERO) => {
                field("package_size", "required for package, above zero")
            }
            UsageModel::Package if self.package_amount.is_none() => {
                field("package_amount", "required for package")
            }
            UsageModel::Graduated | UsageModel::Volume => {
                validate_tiers(&self.tiers).map_err(|why| format!("{at}.tiers{why}"))
            }
            UsageModel::Percentage if self.rate.is_none() => field(
                "rate",
                "required for percentage: percent of the quantity, as \"2.9\"",
            ),
            _ => Ok(()),
        }
    }
}

/// Tiers ascend strictly, all bounded but the last, which is unbounded.
fn validate_tiers(tiers: &[Tier]) -> Result<(), String> {
    if tiers.is_empty() {
        return Err(": at least one tier is required".into());
    }
    let mut previous = Decimal::ZERO;
    for (i, tier) in tiers.iter().enumerate() {
        let last = i + 1 == tiers.len();
        match tier.up_to {
            None if !last => return Err(format!("[{i}].up_to: only the last tier is unbounded")),
            Some(_) if last => {
                return Err(format!(
                    "[{i}].up_to: the last tier must be unbounded (null)"
                ));
            }
            Some(up_to) if up_to <= previous => {
                return Err(format!("[{i}].up_to: must be above {previous}"));
            }
            Some(up_to) => previous = up_to,
            None => {}
        }
        if tier.unit_amount.is_sign_negative() || tier.flat_amount.is_sign_negative() {
            return Err(format!("[{i}]: amounts must not be negative"));
        }
    }
    Ok(())
}

const PROPERTY_RULE: &str =
    "1 to 128 characters of letters, digits, '_', '-', '.', ':', '$', '@': a property path";

/// A property path as prices name it (`unit_price`, `cost.usd`).
fn is_property_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 128
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:$@".contains(&b))
}

/// The meter under which the samples of `meter` are stored priced at `property` (a dynamic
/// price's per-event amounts). `#` is in no meter slug, so it names no meter of the catalog.
pub fn priced_meter(meter: &str, property: &str) -> String {
    format!("{meter}#{property}")
}

pub const KEY_RULE: &str = "1 to 128 characters of letters, digits, '_', '-', '.', ':'";

/// Keys (codes, slugs, external ids) are short and plain so they are safe in URLs and logs.
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

impl Plan {
    /// Checks the plan on its own; references to meters are checked by the catalog.
    pub fn validate(&self) -> Result<(), String> {
        if !is_key(&self.code) {
            return Err(format!("code: {KEY_RULE}"));
        }
        if !is_currency_code(&self.currency) {
            return Err("currency: an ISO 4217 code such as USD".into());
        }
        if self.interval_count == 0 || self.interval_count > 120 {
            return Err("interval_count: 1 to 120".into());
        }
        if self.trial_days > 3650 {
            return Err("trial_days: at most 3650".into());
        }
        if let Some(commitment) = &self.minimum_commitment
            && commitment.amount.is_sign_negative()
            && !commitment.amount.is_zero()
        {
            return Err("minimum_commitment.amount: must not be negative".into());
        }
        let mut codes = std::collections::HashSet::new();
        for (i, price) in self.prices.iter().enumerate() {
            price.validate(&format!("prices[{i}]"))?;
            if !codes.insert(&price.code) {
                return Err(format!("prices[{i}].code: '{}' is used twice", price.code));
            }
        }
        Ok(())
    }

    pub fn usage_prices(&self) -> impl Iterator<Item = &Price> {
        self.prices.iter().filter(|p| p.kind == PriceType::Usage)
    }

    /// What the flat prices charge for one full period (before proration).
    pub fn flat_amount(&self) -> Decimal {
        self.prices
            .iter()
            .filter(|p| p.kind == PriceType::Flat)
            .filter_map(|p| p.amount)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(prices: serde_json::Value) -> Result<Plan, String> {
        let body = serde_json::json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month", "prices": prices});
        // From text, as requests arrive: exact numbers need the text, not a parsed Value.
        let plan: Plan = serde_json::from_str(&body.to_string()).map_err(|e| e.to_string())?;
        plan.validate().map(|()| plan)
    }

    #[test]
    fn the_api_example_plan_is_valid() {
        let p = plan(serde_json::json!([
            {"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
            {"code": "calls", "type": "usage", "meter": "api_calls", "model": "graduated", "included_units": "1000",
             "tiers": [{"up_to": "10000", "unit_amount": "0.002", "flat_amount": "0"}, {"up_to": null, "unit_amount": "0.001", "flat_amount": "0"}]},
            {"code": "tokens", "type": "usage", "meter": "tokens", "model": "package", "package_size": "1000",
             "package_amount": "0.50", "rounding": "up", "minimum_amount": "1.00", "maximum_amount": null, "group_by": ["model"]}
        ]))
        .unwrap();
        assert_eq!(p.interval_count, 1);
        assert_eq!(p.usage_prices().count(), 2);
        assert!(p.prices[1].rating_model().is_some());
        assert_eq!(p.flat_amount().to_string(), "49.00");
        assert_eq!(p.prices[0].overage_unit_amount(), None);
        assert_eq!(
            p.prices[1].overage_unit_amount().unwrap().to_string(),
            "0.002"
        );
        // Package: 0.50 per 1000 units.
        assert_eq!(
            p.prices[2].overage_unit_amount().unwrap().to_string(),
            "0.0005"
        );
    }

    #[test]
    fn a_dynamic_price_keeps_its_priced_samples_under_a_meter_of_its_own() {
        let p = plan(serde_json::json!([
            {"code": "llm", "type": "usage", "meter": "tokens", "model": "dynamic",
             "unit_amount_property": "cost.per_token", "included_units": "1000", "group_by": ["model"]}
        ]))
        .unwrap();
        let price = &p.prices[0];
        assert_eq!(
            price.priced_meter().as_deref(),
            Some("tokens#cost.per_token")
        );
        assert!(
            !is_key("tokens#cost.per_token"),
            "no meter of the catalog has that name"
        );
        assert!(matches!(price.rating_model(), Some(Model::Dynamic(_))));
        assert_eq!(price.overage_unit_amount(), None);
    }

    #[test]
    fn numbers_are_accepted_exactly_where_strings_are_expected() {
        let p = plan(serde_json::json!([{"code": "base", "type": "flat", "amount": 0.1}])).unwrap();
        assert_eq!(p.prices[0].amount.unwrap().to_string(), "0.1");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                serde_json::json!([{"code": "b", "type": "flat"}]),
                "prices[0].amount",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "model": "per_unit", "unit_amount": "1"}]),
                "prices[0].meter",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "meter": "m", "model": "package", "package_amount": "1"}]),
                "prices[0].package_size",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "meter": "m", "model": "graduated", "tiers": [{"up_to": "10", "unit_amount": "1"}]}]),
                "prices[0].tiers[0].up_to",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "meter": "m", "model": "volume", "tiers": [{"up_to": "10", "unit_amount": "1"}, {"up_to": "5", "unit_amount": "1"}, {"up_to": null, "unit_amount": "1"}]}]),
                "prices[0].tiers[1].up_to",
            ),
            (
                serde_json::json!([{"code": "b", "type": "flat", "amount": "-1"}]),
                "prices[0].amount",
            ),
            (
                serde_json::json!([{"code": "b", "type": "flat", "amount": "1"}, {"code": "b", "type": "flat", "amount": "2"}]),
                "prices[1].code",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "meter": "m", "model": "dynamic"}]),
                "prices[0].unit_amount_property",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "meter": "m", "model": "dynamic", "unit_amount_property": "a b"}]),
                "prices[0].unit_amount_property",
            ),
            (
                serde_json::json!([{"code": "u", "type": "usage", "meter": "m", "model": "per_unit", "unit_amount": "1", "unit_amount_property": "p"}]),
                "prices[0].unit_amount_property",
            ),
        ];
        for (prices, field) in cases {
            let err = plan(prices.clone()).unwrap_err();
            assert!(err.starts_with(field), "{prices}: {err}");
        }
    }
}
