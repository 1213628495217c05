//! Serde helpers: decimals arrive as strings (docs/api.md) or exact JSON numbers, and always
//! leave as strings.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

/// A required decimal from a string or an exact JSON number.
pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    rust_decimal::serde::arbitrary_precision::deserialize(deserializer)
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
