//! Meter samples: what one event contributes to one meter (value, distinct key, groups).
//!
//! Properties are read in place from the request body ([`Props`]): only the top level is
//! split, nested objects only when a meter's dotted path walks into them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use std::sync::Arc;

use rust_decimal::Decimal;

use super::MAX_GROUP_VALUE_BYTES;
use crate::catalog::MeterEntry;
use crate::domain::{Aggregation, Meter};
use crate::store::rows::{DECIMAL_SCALE, DecimalError, to_scaled};

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

/// The top level of a JSON object, borrowed from the text it was parsed from.
#[derive(Debug, Default)]
pub struct Props<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Props<'a> {
    /// Splits a JSON object's top level; values stay unparsed.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    fn get_key(&self, key: &str) -> Option<&'a RawValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A property by name; dots walk into nested objects (`usage.input_tokens`). A key that
    /// itself contains the dots wins over the nested path.
    pub fn get(&self, path: &str) -> Option<&'a RawValue> {
        if let Some(value) = self.get_key(path) {
            return Some(value);
        }
        let (head, rest) = path.split_once('.')?;
        let nested = self.get_key(head)?;
        if !nested.get().starts_with('{') {
            return None;
        }
        Props::parse(nested.get()).ok()?.get(rest)
    }
}

impl<'de> Deserialize<'de> for Props<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Props<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((key.0, value));
                }
                Ok(Props { entries })
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// What the refusal of a key given twice says (after the key's path).
pub const DUPLICATE_KEY: &str = "appears twice in its object; send each key once";

/// The path of the first key that appears twice in one object of `text` (a JSON object,
/// nested objects and arrays included), e.g. `usage.tokens` or `items[2].id`. JSON readers
/// disagree on which of the two values counts, so an event carrying one is refused. Values are
/// skipped as raw JSON text, never parsed, unless they are objects or arrays to look into.
pub fn first_duplicate_key(text: &str) -> Option<String> {
    if !may_repeat_a_key(text.as_bytes()) {
        return None;
    }
    exact_duplicate_key(text)
}

/// One pass over valid JSON text, no parsing: false when no object repeats a key. Keys with
/// escapes, or objects of many keys, answer true so that the exact walk decides.
fn may_repeat_a_key(json: &[u8]) -> bool {
    // The keys of the objects open at this point, and where each open container's keys start
    // (`usize::MAX` for an array).
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut frames: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                let mut end = start;
                let mut escaped = false;
                while end < json.len() && json[end] != b'"' {
                    if json[end] == b'\\' {
                        escaped = true;
                        end += 1;
                    }
                    end += 1;
                }
                i = end + 1;
                while i < json.len() && json[i].is_ascii_whitespace() {
                    i += 1;
                }
                let Some(&frame) = frames.last() else {
                    continue;
                };
                if frame == usize::MAX || json.get(i) != Some(&b':') {
                    continue;
                }
                let key = &json[start..end.min(json.len())];
                if escaped || keys.len() - frame >= 32 || keys[frame..].contains(&key) {
                    return true;
                }
                keys.push(key);
            }
            b'{' => {
                frames.push(keys.len());
                i += 1;
            }
            b'[' => {
                frames.push(usize::MAX);
                i += 1;
            }
            b'}' | b']' => {
                if let Some(frame) = frames.pop()
                    && frame != usize::MAX
                {
                    keys.truncate(frame);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    false
}

fn exact_duplicate_key(text: &str) -> Option<String> {
    let text = text.trim_start();
    match text.as_bytes().first() {
        Some(b'{') => {
            let object = Props::parse(text).ok()?;
            let entries = &object.entries;
            // Objects are small: compare with the keys before, or use a set once they are not.
            let mut set = (entries.len() > 16).then(std::collections::HashSet::new);
            for (i, (key, value)) in entries.iter().enumerate() {
                let repeated = match &mut set {
                    Some(set) => !set.insert(key),
                    None => entries[..i].iter().any(|(seen, _)| seen == key),
                };
                if repeated {
                    return Some(key.to_string());
                }
                if let Some(inner) = exact_duplicate_key(value.get()) {
                    return Some(joined(key, &inner));
                }
            }
            None
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            items.iter().enumerate().find_map(|(i, item)| {
                let inner = exact_duplicate_key(item.get())?;
                Some(joined(&format!("[{i}]"), &inner))
            })
        }
        _ => None,
    }
}

/// `outer` then `inner` as one path: `a.b`, `a[2]`.
fn joined(outer: &str, inner: &str) -> String {
    let dot = if inner.starts_with('[') { "" } else { "." };
    format!("{outer}{dot}{inner}")
}

/// An object key: borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The sample `meter` takes from an event with `properties`, if the event matches its filters
/// and carries its value. A missing value property yields no sample (the event is still
/// stored, and a backfill can recount it); a present but non-numeric one is an error.
pub fn extract(meter: &Meter, properties: &Props<'_>) -> Result<Option<Sample>, SampleError> {
    for (key, allowed) in &meter.filters {
        let matches = properties
            .get(key)
            .and_then(render)
            .is_some_and(|v| allowed.contains(&v));
        if !matches {
            return Ok(None);
        }
    }
    let raw = match &meter.value_property {
        Some(path) if meter.aggregation != Aggregation::Count => match properties.get(path) {
            None => return Ok(None),
            Some(value) if value.get() == "null" => return Ok(None),
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
    let too_long = |path: &str, what: &str| SampleError {
        field: format!("properties.{path}"),
        message: format!("must be at most {MAX_GROUP_VALUE_BYTES} bytes: the meter {what} it"),
    };
    if value_str.len() > MAX_GROUP_VALUE_BYTES {
        let path = meter.value_property.as_deref().unwrap_or_default();
        return Err(too_long(path, "counts distinct values of"));
    }
    let mut group_values = Vec::with_capacity(meter.group_by.len());
    for key in &meter.group_by {
        let value = properties.get(key).and_then(render).unwrap_or_default();
        if value.len() > MAX_GROUP_VALUE_BYTES {
            return Err(too_long(key, "groups by"));
        }
        group_values.push(value);
    }
    Ok(Some(Sample {
        value,
        value_str,
        group_values,
    }))
}

fn numeric(path: &str, value: &RawValue) -> Result<i128, SampleError> {
    let decimal = decimal_of(path, value)?;
    to_scaled(decimal).map_err(|e| property_error(path, format!("{e}")))
}

fn property_error(path: &str, message: String) -> SampleError {
    SampleError {
        field: format!("properties.{path}"),
        message,
    }
}

/// A property's value as a decimal: a JSON number or a numeric string.
fn decimal_of(path: &str, value: &RawValue) -> Result<Decimal, SampleError> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'_, str>>(text)
            .ok()
            .and_then(|s| parse_decimal(s.trim())),
        Some(b'-' | b'0'..=b'9') => parse_decimal(text),
        _ => None,
    }
    .ok_or_else(|| property_error(path, "must be a number or a numeric string".into()))
}

/// One sample priced at a `dynamic` price's unit amount: stored under the priced meter with
/// value × unit amount as its value and the unit amount as its text.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedSample {
    pub meter: Arc<str>,
    /// value × unit amount, scaled by 10^12.
    pub amount: i128,
    /// The unit amount, as a plain decimal.
    pub unit_amount: String,
}

/// The priced samples of `sample` of the meter of `entry`, one per unit amount property of
/// the dynamic prices on it; an event without such a property, or with one that is not a
/// number, is refused.
pub fn priced(
    entry: &MeterEntry,
    sample: &Sample,
    properties: &Props<'_>,
) -> Result<Vec<PricedSample>, SampleError> {
    if entry.priced.is_empty() {
        return Ok(Vec::new());
    }
    let value = Decimal::from_i128_with_scale(sample.value, DECIMAL_SCALE);
    let mut priced = Vec::with_capacity(entry.priced.len());
    for by in &entry.priced {
        let path = by.property.as_str();
        let unit_amount = match properties.get(path) {
            Some(raw) if raw.get() != "null" => decimal_of(path, raw)?,
            _ => {
                return Err(property_error(
                    path,
                    "required: a dynamic price takes each event's unit amount from it".into(),
                ));
            }
        };
        to_scaled(unit_amount).map_err(|e| property_error(path, format!("{e}")))?;
        let amount = value
            .checked_mul(unit_amount)
            .ok_or(DecimalError::TooLarge)
            .and_then(to_scaled)
            .map_err(|e| {
                property_error(
                    path,
                    format!("times the meter's value, {e} ({value} × {unit_amount})"),
                )
            })?;
        priced.push(PricedSample {
            meter: by.slug.clone(),
            amount,
            unit_amount: unit_amount.normalize().to_string(),
        });
    }
    Ok(priced)
}

pub use crate::billing::decimal::parse_decimal;

/// A property value as the string filters, groups and distinct counts compare: strings
/// unescaped, anything else as its JSON text; `null` is no value.
pub fn render(value: &RawValue) -> Option<String> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).ok(),
        Some(b'n') => None,
        _ => Some(text.to_owned()),
    }
}

#[cfg(test)]
mod tests;
