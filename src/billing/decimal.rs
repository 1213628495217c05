//! Serde helpers: decimals arrive as strings (docs/api.md) or exact JSON numbers, and always
//! leave as strings.

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A required decimal from a string or an exact JSON number; anything else, or a number no
/// `Decimal` holds (`1e309`), is an error that says what is accepted.
pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let text = match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            return Err(D::Error::custom(format!(
                "must be a decimal, as a string (\"12.50\") or a number, not {other}"
            )));
        }
    };
    parse_decimal(&text).ok_or_else(|| {
        D::Error::custom(format!(
            "'{text}' is not a decimal meterhouse holds exactly (at most 28 significant digits, \
             magnitude below 7.9e28)"
        ))
    })
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

struct Exact(Decimal);

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        required(deserializer).map(Exact)
    }
}

/// An optional decimal: `null` or absent is `None`.
pub fn option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
    Ok(Option::<Exact>::deserialize(deserializer)?.map(|e| e.0))
}
