//! Meter samples: what one event contributes to one meter (value, distinct key, groups).

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::catalog::{Aggregation, Meter};
use crate::store::rows::to_scaled;

/// One event's contribution to one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Scaled by 10^12 (see `store::rows::DECIMAL_SCALE`).
    pub value: i128,
    /// The distinct key for `unique_count`; empty otherwise.
    pub value_str: String,
    pub group_values: Vec<String>,
}

/// A property that a meter needs is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleError {
    /// e.g. `properties.tokens`
    pub field: String,
    pub message: String,
}

const ONE: i128 = 1_000_000_000_000;

/// The sample `meter` takes from an event with `properties`, if the event matches its filters
/// and carries its value. A missing value property yields no sample (the event is still
/// stored, and a backfill can recount it); a present but non-numeric one is an error.
pub fn extract(
    meter: &Meter,
    properties: &Map<String, Value>,
) -> Result<Option<Sample>, SampleError> {
    for (key, allowed) in &meter.filters {
        let matches = lookup(properties, key)
            .and_then(render)
            .is_some_and(|v| allowed.contains(&v));
        if !matches {
            return Ok(None);
        }
    }
    let raw = match &meter.value_property {
        Some(path) if meter.aggregation != Aggregation::Count => match lookup(properties, path) {
            None | Some(Value::Null) => return Ok(None),
            Some(value) => Some((path, value)),
        },
        _ => None,
    };
    let (value, value_str) = match (meter.aggregation, raw) {
        (Aggregation::UniqueCount, Some((_, v))) => (ONE, render(v).unwrap_or_default()),
        (aggregation, Some((path, v))) if aggregation.is_numeric() => {
            (numeric(path, v)?, String::new())
        }
        _ => (ONE, String::new()),
    };
    let group_values = meter
        .group_by
        .iter()
        .map(|key| lookup(properties, key).and_then(render).unwrap_or_default())
        .collect();
    Ok(Some(Sample {
        value,
        value_str,
        group_values,
    }))
}

fn numeric(path: &str, value: &Value) -> Result<i128, SampleError> {
    let error = |message: String| SampleError {
        field: format!("properties.{path}"),
        message,
    };
    let decimal = match value {
        Value::Number(n) => parse_decimal(&n.to_string()),
        Value::String(s) => parse_decimal(s.trim()),
        _ => None,
    }
    .ok_or_else(|| error("must be a number or a numeric string".into()))?;
    to_scaled(decimal).map_err(|e| error(format!("{e}")))
}

/// Exact decimal from JSON number text or a numeric string (`12`, `-0.5`, `1e3`).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return None;
    }
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        text.parse().ok()
    }
}

/// A property by name; dots walk into nested objects (`usage.input_tokens`). A key that itself
/// contains the dots wins over the nested path.
pub fn lookup<'v>(properties: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(value) = properties.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut current = properties.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A property value as the string filters, groups and distinct counts compare.
pub fn render(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meter(aggregation: Aggregation, property: Option<&str>) -> Meter {
        Meter {
            slug: "m".into(),
            name: "M".into(),
            event_type: "e".into(),
            aggregation,
            value_property: property.map(str::to_owned),
            filters: Default::default(),
            group_by: vec![],
        }
    }

    fn props(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn count_samples_are_one_whatever_the_properties() {
        let s = extract(&meter(Aggregation::Count, None), &props(json!({})))
            .unwrap()
            .unwrap();
        assert_eq!(s.value, ONE);
    }

    #[test]
    fn sums_read_numbers_and_numeric_strings_exactly() {
        let m = meter(Aggregation::Sum, Some("tokens"));
        let number: Map<String, Value> = serde_json::from_str(r#"{"tokens": 0.1}"#).unwrap();
        assert_eq!(
            extract(&m, &number).unwrap().unwrap().value,
            100_000_000_000
        );
        assert_eq!(
            extract(&m, &props(json!({"tokens": " 1250 "})))
                .unwrap()
                .unwrap()
                .value,
            1250 * ONE
        );
        assert_eq!(
            extract(&m, &props(json!({"tokens": "1e3"})))
                .unwrap()
                .unwrap()
                .value,
            1000 * ONE
        );
    }

    #[test]
    fn a_missing_value_gives_no_sample_and_a_bad_one_an_error() {
        let m = meter(Aggregation::Max, Some("usage.gb"));
        assert_eq!(extract(&m, &props(json!({"other": 1}))).unwrap(), None);
        let err = extract(&m, &props(json!({"usage": {"gb": "lots"}}))).unwrap_err();
        assert_eq!(err.field, "properties.usage.gb");
        let err = extract(&m, &props(json!({"usage": {"gb": true}}))).unwrap_err();
        assert!(err.message.contains("number"));
    }

    #[test]
    fn nested_paths_and_literal_dotted_keys_both_resolve() {
        let m = meter(Aggregation::Sum, Some("usage.input_tokens"));
        let nested = props(json!({"usage": {"input_tokens": 7}}));
        assert_eq!(extract(&m, &nested).unwrap().unwrap().value, 7 * ONE);
        let literal = props(json!({"usage.input_tokens": 9, "usage": {"input_tokens": 7}}));
        assert_eq!(extract(&m, &literal).unwrap().unwrap().value, 9 * ONE);
    }

    #[test]
    fn filters_must_all_match() {
        let mut m = meter(Aggregation::Count, None);
        m.filters
            .insert("region".into(), vec!["eu".into(), "us".into()]);
        m.filters.insert("tier".into(), vec!["1".into()]);
        assert!(
            extract(&m, &props(json!({"region": "eu", "tier": 1})))
                .unwrap()
                .is_some()
        );
        assert!(
            extract(&m, &props(json!({"region": "ap", "tier": 1})))
                .unwrap()
                .is_none()
        );
        assert!(
            extract(&m, &props(json!({"region": "eu"})))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unique_counts_keep_the_rendered_value_and_groups_default_to_empty() {
        let mut m = meter(Aggregation::UniqueCount, Some("user"));
        m.group_by = vec!["model".into(), "absent".into()];
        let s = extract(&m, &props(json!({"user": 42, "model": "gpt-x"})))
            .unwrap()
            .unwrap();
        assert_eq!(s.value_str, "42");
        assert_eq!(s.group_values, vec!["gpt-x".to_string(), String::new()]);
    }

    #[test]
    fn values_that_cannot_be_stored_exactly_are_errors() {
        let m = meter(Aggregation::Sum, Some("v"));
        let err = extract(&m, &props(json!({"v": "0.0000000000001"}))).unwrap_err();
        assert!(err.message.contains("decimal places"));
        assert!(extract(&m, &props(json!({"v": "NaN"}))).is_err());
    }
}
