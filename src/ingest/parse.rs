//! Request bodies to validated event rows: every body form and alias of docs/api.md, with every
//! problem reported by event index; a request with any problem writes nothing.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::DateTime;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::MAX_EVENTS_PER_REQUEST;
use super::dedup;
use super::samples::{self, Props, parse_decimal};
use crate::catalog::TenantCatalog;
use crate::error::{ApiError, EventError};
use crate::store::rows::EventRow;

/// Longest accepted id, customer or type, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Events older than this are refused unless the tenant allows backfill.
pub const MAX_AGE_MS: i64 = 35 * 24 * 3600 * 1000;
/// Events further ahead than this are refused unless the tenant allows backfill.
pub const MAX_AHEAD_MS: i64 = 24 * 3600 * 1000;
/// The storable range whatever the tenant: 1970-01-01 to 2100-01-01.
const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;
/// Report at most this many problems; the rest are summarised by the count.
const MAX_REPORTED_ERRORS: usize = 1000;
/// Properties nest at most this deep: deeper is refused, so no reader of the stored JSON
/// (here or in ClickHouse) ever recurses without bound.
pub const MAX_PROPERTY_DEPTH: usize = 32;

/// The validated rows of one request and their dedup keys (same order).
#[derive(Debug, Default)]
pub struct Validated {
    pub rows: Vec<EventRow>,
    pub keys: Vec<u128>,
}

/// Who is ingesting and against what catalog, at what time.
pub struct Context<'a> {
    pub tenant: &'a Arc<str>,
    pub catalog: &'a TenantCatalog,
    pub now_ms: i64,
}

/// Decodes a body (one event, an array, `{"events": [...]}`, or NDJSON) and validates it.
pub fn decode(body: &[u8], ndjson: bool, ctx: &Context<'_>) -> Result<Validated, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::InvalidRequest(format!("body is not valid UTF-8: {e}")))?;
    let raws = if ndjson {
        split_ndjson(text)?
    } else {
        split_json(text)?
    };
    if raws.is_empty() {
        return Err(ApiError::InvalidRequest(
            "the request holds no events".into(),
        ));
    }
    if raws.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} events in one request; at most {MAX_EVENTS_PER_REQUEST}",
            raws.len()
        )));
    }
    validate(&raws, ctx)
}

fn split_ndjson(text: &str) -> Result<Vec<&RawValue>, ApiError> {
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty());
    let mut raws = Vec::new();
    for (line_no, line) in lines {
        let raw = serde_json::from_str::<&RawValue>(line).map_err(|e| {
            ApiError::InvalidRequest(format!("line {}: not valid JSON: {e}", line_no + 1))
        })?;
        raws.push(raw);
    }
    Ok(raws)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    events: Option<Vec<&'a RawValue>>,
}

fn split_json(text: &str) -> Result<Vec<&RawValue>, ApiError> {
    let invalid =
        |e: serde_json::Error| ApiError::InvalidRequest(format!("body is not valid JSON: {e}"));
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text).map_err(invalid),
        Some(b'{') => {
            let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
                if e.is_data() {
                    ApiError::InvalidRequest(format!(
                        "events: must be an array of event objects ({e})"
                    ))
                } else {
                    invalid(e)
                }
            })?;
            match envelope.events {
                Some(events) => Ok(events),
                None => Ok(vec![
                    serde_json::from_str::<&RawValue>(text).map_err(invalid)?,
                ]),
            }
        }
        _ => Err(ApiError::InvalidRequest(
            "body must be a JSON event, an array of events, {\"events\": [...]}, or NDJSON".into(),
        )),
    }
}

/// An event as sent; every field is checked by hand so each error names its field. A field it
/// does not know is refused rather than dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(default, alias = "transaction_id", alias = "event_id")]
    id: Option<Value>,
    #[serde(default, alias = "external_customer_id", alias = "subject")]
    customer: Option<Value>,
    #[serde(default, rename = "type", alias = "code", alias = "event_name")]
    event_type: Option<Value>,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(default, borrow)]
    properties: Option<&'a RawValue>,
}

fn validate(raws: &[&RawValue], ctx: &Context<'_>) -> Result<Validated, ApiError> {
    let mut out = Validated {
        rows: Vec::with_capacity(raws.len()),
        keys: Vec::with_capacity(raws.len()),
    };
    let mut errors = Vec::new();
    let mut error_count = 0usize;
    for (index, raw) in raws.iter().enumerate() {
        let mut report = |field: &str, message: String| {
            error_count += 1;
            if errors.len() < MAX_REPORTED_ERRORS {
                errors.push(EventError {
                    index,
                    field: field.to_owned(),
                    message,
                });
            }
        };
        match validate_one(raw, ctx, &mut report) {
            Some(row) if error_count == 0 => {
                out.keys.push(dedup::key(ctx.tenant, &row.id));
                out.rows.push(row);
            }
            _ => {}
        }
    }
    if error_count == 0 {
        return Ok(out);
    }
    if error_count > errors.len() {
        let index = errors.last().map_or(0, |e| e.index);
        let hidden = error_count - errors.len();
        errors.push(EventError {
            index,
            field: String::new(),
            message: format!("and {hidden} more errors"),
        });
    }
    Err(ApiError::InvalidEvents(errors))
}

fn validate_one(
    raw: &RawValue,
    ctx: &Context<'_>,
    report: &mut impl FnMut(&str, String),
) -> Option<EventRow> {
    if !raw.get().starts_with('{') {
        report("", "an event must be a JSON object".into());
        return None;
    }
    let wire: WireEvent<'_> = match serde_json::from_str(raw.get()) {
        Ok(wire) => wire,
        Err(e) => {
            match unknown_field(&e.to_string()) {
                Some(field) => report(field, unknown_field_message(field)),
                None => report("", format!("not a valid event: {e}")),
            }
            return None;
        }
    };
    let id = required_string(wire.id, "id", report);
    let customer = required_string(wire.customer, "customer", report);
    let event_type = required_string(wire.event_type, "type", report);
    let ts_ms = match wire.timestamp {
        None => Some(ctx.now_ms),
        Some(raw) if raw.get() == "null" => Some(ctx.now_ms),
        Some(raw) => check_timestamp(raw, ctx)
            .map_err(|m| report("timestamp", m))
            .ok(),
    };
    let properties_text = wire.properties.map_or("{}", RawValue::get);
    if !properties_text.starts_with('{') && properties_text != "null" {
        report("properties", "must be an object".into());
        return None;
    }
    // Depth never exceeds the count of openers (a cheap, vectorised pass); only bodies with
    // many of them get the exact scan.
    let openers = properties_text
        .bytes()
        .filter(|&b| b == b'{' || b == b'[')
        .count();
    if openers > MAX_PROPERTY_DEPTH && nesting_depth(properties_text) > MAX_PROPERTY_DEPTH {
        report(
            "properties",
            format!("nested deeper than {MAX_PROPERTY_DEPTH} levels"),
        );
        return None;
    }
    if let Some(path) = samples::first_duplicate_key(properties_text) {
        report(&format!("properties.{path}"), samples::DUPLICATE_KEY.into());
        return None;
    }
    let (id, customer, event_type, ts_ms) = (id?, customer?, event_type?, ts_ms?);
    let mut row = EventRow {
        tenant: ctx.tenant.clone(),
        id,
        customer,
        event_type,
        ts_ms,
        ts: (ts_ms / 1000) as u32,
        properties: if properties_text == "null" {
            "{}".into()
        } else {
            properties_text.to_owned()
        },
        ingested_ms: 0,
        ingested_at: 0,
        batch_id: 0,
        sample_meter: vec![],
        sample_value: vec![],
        sample_value_str: vec![],
        sample_group_keys: vec![],
        sample_group_values: vec![],
    };
    add_samples(&mut row, properties_text, ctx.catalog, report)?;
    Some(row)
}

/// Runs the tenant's meters for this event type over its properties.
fn add_samples(
    row: &mut EventRow,
    properties_text: &str,
    catalog: &TenantCatalog,
    report: &mut impl FnMut(&str, String),
) -> Option<()> {
    let meters = catalog.meters_for(&row.event_type);
    if meters.is_empty() {
        return Some(());
    }
    // Properties are parsed only when some meter reads them.
    let properties = match Props::parse(properties_text) {
        Ok(props) => props,
        Err(e) => {
            report("properties", format!("not a valid object: {e}"));
            return None;
        }
    };
    let mut ok = true;
    for entry in meters {
        let extracted = samples::extract(&entry.meter, &properties).and_then(|sample| {
            let Some(sample) = sample else {
                return Ok(None);
            };
            let priced = samples::priced(entry, &sample, &properties)?;
            Ok(Some((sample, priced)))
        });
        match extracted {
            Ok(Some((sample, priced))) => {
                for by in priced {
                    row.sample_meter.push(by.meter);
                    row.sample_value.push(by.amount);
                    row.sample_value_str.push(by.unit_amount);
                    row.sample_group_keys.push(entry.group_keys.clone());
                    row.sample_group_values.push(sample.group_values.clone());
                }
                row.sample_meter.push(entry.slug.clone());
                row.sample_value.push(sample.value);
                row.sample_value_str.push(sample.value_str);
                row.sample_group_keys.push(entry.group_keys.clone());
                row.sample_group_values.push(sample.group_values);
            }
            Ok(None) => {}
            Err(e) => {
                report(&e.field, format!("{} (meter {})", e.message, entry.slug));
                ok = false;
            }
        }
    }
    ok.then_some(())
}

/// How deep objects and arrays nest in valid JSON text (strings skipped, escapes honoured).
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn required_string(
    value: Option<Value>,
    field: &str,
    report: &mut impl FnMut(&str, String),
) -> Option<String> {
    match value {
        Some(Value::String(s)) if s.trim().is_empty() => report(field, "must not be empty".into()),
        Some(Value::String(s)) if s.len() > MAX_KEY_BYTES => {
            report(field, format!("must be at most {MAX_KEY_BYTES} bytes"))
        }
        Some(Value::String(s)) => return Some(s),
        None | Some(Value::Null) => report(field, "is required".into()),
        Some(_) => report(field, "must be a string".into()),
    }
    None
}

/// The field serde names in an "unknown field `x`" error.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

fn unknown_field_message(field: &str) -> String {
    match field {
        "specversion" | "data" | "time" | "source" | "datacontenttype" => format!(
            "is a CloudEvents attribute: send CloudEvents with Content-Type \
             application/cloudevents+json (or -batch+json), or put `{field}` in `properties`"
        ),
        _ => "is not a field of an event (id, customer, type, timestamp, properties); \
              put it in `properties`"
            .into(),
    }
}

fn check_timestamp(raw: &RawValue, ctx: &Context<'_>) -> Result<i64, String> {
    let ms = parse_timestamp(raw)?;
    if !(0..MAX_TIMESTAMP_MS).contains(&ms) {
        return Err("must be between 1970-01-01 and 2100-01-01".into());
    }
    if !ctx.catalog.allow_backfill {
        if ms < ctx.now_ms - MAX_AGE_MS {
            return Err("is more than 35 days old; this tenant does not allow backfill".into());
        }
        if ms > ctx.now_ms + MAX_AHEAD_MS {
            return Err("is more than 1 day in the future".into());
        }
    }
    Ok(ms)
}

/// An instant written as RFC 3339 (any offset) or as Unix seconds or milliseconds; epoch ms.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let text = text.trim();
    match DateTime::parse_from_rfc3339(text) {
        Ok(dt) => Ok(dt.timestamp_millis()),
        Err(e) => match parse_decimal(text) {
            Some(numeric) => unix_millis(numeric),
            None => Err(format!("not RFC 3339 ({e}) nor Unix seconds/milliseconds")),
        },
    }
}

/// Seconds or milliseconds to milliseconds: magnitudes of 10^11 and above are milliseconds
/// (10^11 s is the year 5138).
fn unix_millis(numeric: Decimal) -> Result<i64, String> {
    let millis = if numeric.abs() >= Decimal::from(100_000_000_000i64) {
        numeric
    } else {
        numeric * Decimal::ONE_THOUSAND
    };
    millis
        .floor()
        .to_i64()
        .ok_or_else(|| "is out of range".into())
}

/// RFC 3339 with any offset, or Unix seconds or milliseconds as a number or numeric string.
pub fn parse_timestamp(raw: &RawValue) -> Result<i64, String> {
    let text = raw.get();
    let numeric = match text.as_bytes().first() {
        Some(b'"') => {
            let s: Cow<'_, str> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            return parse_instant(&s);
        }
        Some(b'-' | b'0'..=b'9') => {
            parse_decimal(text).ok_or("not a valid number of seconds or milliseconds")?
        }
        _ => return Err("must be an RFC 3339 string or Unix seconds/milliseconds".into()),
    };
    unix_millis(numeric)
}

#[cfg(test)]
mod tests;
