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
    /// The integral over the window of the value in force: each event's value holds from its
    /// timestamp until the next event of the same customer and group (the meter's `group_by`
    /// values), in value × `weight_unit`. The value in force at the window's start is the
    /// last one before it (0 if none).
    WeightedSum,
}

/// The time unit of a `weighted_sum` meter's quantity (value × unit). Units are elapsed time:
/// a day is 24 hours, whatever a timezone's clock does across a DST change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightUnit {
    Minute,
    Hour,
    Day,
}

impl WeightUnit {
    /// The unit's length in milliseconds of elapsed time.
    pub fn millis(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }
}

impl Aggregation {
    /// The name as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Max => "max",
            Self::Min => "min",
            Self::UniqueCount => "unique_count",
            Self::Latest => "latest",
            Self::WeightedSum => "weighted_sum",
        }
    }

    /// Whether the sample's value is a number read from `value_property`.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::Sum | Self::Max | Self::Min | Self::Latest | Self::WeightedSum
        )
    }

    /// What one sample of `value` contributes to a combined read: 1 for counts and distinct
    /// counts (a first distinct value), the value itself otherwise. A weighted sum is not
    /// read from combined reads (it needs the samples' times): they count its events only.
    pub fn of_one_sample(self, value: Decimal) -> Decimal {
        match self {
            Self::Count | Self::UniqueCount | Self::WeightedSum => Decimal::ONE,
            Self::Sum | Self::Max | Self::Min | Self::Latest => value,
        }
    }

    /// The aggregate of two disjoint sets of samples from their aggregates: `None` when it
    /// cannot be had from the finished values (distinct counts and latest values need the
    /// store's states) or overflows.
    pub fn combine(self, a: Decimal, b: Decimal) -> Option<Decimal> {
        match self {
            Self::Count | Self::Sum | Self::WeightedSum => a.checked_add(b),
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
    /// The time unit of a `weighted_sum` meter (required for it, refused for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_unit: Option<WeightUnit>,
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
        let weighted = self.aggregation == Aggregation::WeightedSum;
        match self.weight_unit {
            None if weighted => {
                return Err(
                    "weight_unit: required for aggregation weighted_sum (minute, hour or day)"
                        .into(),
                );
            }
            Some(_) if !weighted => {
                return Err("weight_unit: only for aggregation weighted_sum".into());
            }
            _ => {}
        }
        let needs_property = self.aggregation != Aggregation::Count;
        match &self.value_property {
            Some(p) if p.is_empty() => Err("value_property: must not be empty".into()),
            None if needs_property => Err(format!(
                "value_property: required for aggregation {}",
                self.aggregation.name()
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(json: serde_json::Value) -> Result<(), String> {
        let meter: Meter = serde_json::from_value(json).map_err(|e| e.to_string())?;
        meter.validate()
    }

    #[test]
    fn a_weighted_sum_needs_a_weight_unit_and_a_value_property() {
        let base = |extra: serde_json::Value| {
            let mut m = serde_json::json!({"slug": "storage", "name": "Storage",
                "event_type": "storage", "aggregation": "weighted_sum"});
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            m
        };
        assert_eq!(
            meter(base(
                serde_json::json!({"value_property": "gb", "weight_unit": "hour"})
            )),
            Ok(())
        );
        assert_eq!(
            meter(base(serde_json::json!({"value_property": "gb"}))),
            Err("weight_unit: required for aggregation weighted_sum (minute, hour or day)".into())
        );
        assert_eq!(
            meter(base(serde_json::json!({"weight_unit": "day"}))),
            Err("value_property: required for aggregation weighted_sum".into())
        );
        assert!(
            meter(base(
                serde_json::json!({"value_property": "gb", "weight_unit": "week"})
            ))
            .is_err()
        );
        let sum = serde_json::json!({"slug": "s", "name": "S", "event_type": "e",
            "aggregation": "sum", "value_property": "gb", "weight_unit": "hour"});
        assert_eq!(
            meter(sum),
            Err("weight_unit: only for aggregation weighted_sum".into())
        );
    }

    #[test]
    fn weight_units_are_elapsed_time() {
        assert_eq!(WeightUnit::Day.millis(), 24 * WeightUnit::Hour.millis());
        assert_eq!(WeightUnit::Hour.millis(), 60 * WeightUnit::Minute.millis());
    }
}
