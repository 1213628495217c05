//! A meter: which events it reads and how it turns them into a quantity (docs/api.md "Meters").

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Max,
    Min,
    /// Distinct values of `value_property`.
    UniqueCount,
    /// The last value by event timestamp in the window.
    Latest,
}

impl Aggregation {
    /// Whether the sample's value is a number read from `value_property`.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Sum | Self::Max | Self::Min | Self::Latest)
    }

    /// What one sample of `value` contributes: 1 for counts and distinct counts (a first
    /// distinct value), the value itself otherwise.
    pub fn of_one_sample(self, value: Decimal) -> Decimal {
        match self {
            Self::Count | Self::UniqueCount => Decimal::ONE,
            Self::Sum | Self::Max | Self::Min | Self::Latest => value,
        }
    }

    /// The aggregate of two disjoint sets of samples from their aggregates: `None` when it
    /// cannot be had from the finished values (distinct counts and latest values need the
    /// store's states) or overflows.
    pub fn combine(self, a: Decimal, b: Decimal) -> Option<Decimal> {
        match self {
            Self::Count | Self::Sum => a.checked_add(b),
            Self::Min => Some(a.min(b)),
            Self::Max => Some(a.max(b)),
            Self::UniqueCount | Self::Latest => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    pub slug: String,
    pub name: String,
    pub event_type: String,
    pub aggregation: Aggregation,
    /// Property read for the value; dots address nested objects (`usage.input_tokens`).
    #[serde(default)]
    pub value_property: Option<String>,
    /// Property → accepted values; an event matches when every listed property has one of them.
    #[serde(default)]
    pub filters: BTreeMap<String, Vec<String>>,
    /// Properties whose values split usage into groups.
    #[serde(default)]
    pub group_by: Vec<String>,
}

impl Meter {
    /// Checks the meter's own consistency; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let slug_ok = !self.slug.is_empty()
            && self.slug.len() <= 64
            && self
                .slug
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !slug_ok {
            return Err("slug: 1 to 64 characters of letters, digits, '_', '-', '.'".into());
        }
        if self.event_type.is_empty() {
            return Err("event_type: required".into());
        }
        let needs_property = self.aggregation != Aggregation::Count;
        match &self.value_property {
            Some(p) if p.is_empty() => Err("value_property: must not be empty".into()),
            None if needs_property => Err(format!(
                "value_property: required for aggregation {:?}",
                self.aggregation
            )
            .to_lowercase()),
            _ => Ok(()),
        }
    }
}
