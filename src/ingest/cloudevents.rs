//! CloudEvents (structured JSON mode, 1.0): `application/cloudevents+json` holds one event,
//! `application/cloudevents-batch+json` an array. Each becomes a meterhouse event: `subject` is
//! the customer, `type` the event type, `time` the timestamp, `data` the properties, and
//! `source` with `id` the event id (`<source>/<id>`: CloudEvents ids are unique per source), so
//! the same event sent twice counts once. An attribute meterhouse would not keep (`data_base64`,
//! `dataschema`, extension attributes) is refused with its name rather than dropped.

use serde_json::{Map, Value};

use crate::error::{ApiError, EventError};
use crate::ingest::samples::{DUPLICATE_KEY, first_duplicate_key};

/// The attributes an event may carry.
const KNOWN: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
];

/// Rewrites a CloudEvents body (one event, or a batch) as a JSON array of meterhouse events,
/// in the same order, so that validation's per-index errors point at the sender's events.
pub fn to_events(body: &[u8], batch: bool) -> Result<Vec<u8>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::InvalidRequest(format!("body is not valid UTF-8: {e}")))?;
    // A key given twice would lose one of its values in the parse below: refused first.
    if let Some(path) = first_duplicate_key(text) {
        let (index, field) = match path.strip_prefix('[') {
            Some(rest) if batch => {
                let (index, field) = rest.split_once(']').unwrap_or((rest, ""));
                (
                    index.parse().unwrap_or(0),
                    field.trim_start_matches('.').to_owned(),
                )
            }
            _ => (0, path),
        };
        return Err(ApiError::InvalidEvents(vec![EventError {
            index,
            field,
            message: DUPLICATE_KEY.into(),
        }]));
    }
    let parsed: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::InvalidRequest(format!("body is not valid JSON: {e}")))?;
    let events = match (batch, parsed) {
        (true, Value::Array(events)) => events,
        (false, event @ Value::Object(_)) => vec![event],
        (true, _) => {
            return Err(ApiError::InvalidRequest(
                "a CloudEvents batch is a JSON array of events".into(),
            ));
        }
        (false, _) => {
            return Err(ApiError::InvalidRequest(
                "a CloudEvent is a JSON object; send several as application/cloudevents-batch+json"
                    .into(),
            ));
        }
    };
    let mut errors = Vec::new();
    let mut converted = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let mut report = |field: &str, message: &str| {
            errors.push(EventError {
                index,
                field: field.to_owned(),
                message: message.to_owned(),
            });
        };
        match event {
            Value::Object(attributes) => converted.push(convert(attributes, &mut report)),
            _ => report("", "a CloudEvent must be a JSON object"),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidEvents(errors));
    }
    serde_json::to_vec(&converted).map_err(|e| ApiError::Internal(e.to_string()))
}

fn convert(mut attributes: Map<String, Value>, report: &mut impl FnMut(&str, &str)) -> Value {
    for name in attributes.keys() {
        if !KNOWN.contains(&name.as_str()) {
            let why = match name.as_str() {
                "data_base64" => "binary data is not read: send JSON in `data`",
                "dataschema" => "not kept: leave it out",
                _ => "an extension attribute is not kept: move it into `data`",
            };
            report(name, why);
        }
    }
    match attributes.get("specversion").and_then(Value::as_str) {
        Some("1.0") => {}
        Some(_) => report("specversion", "must be \"1.0\""),
        None => report("specversion", "is required (\"1.0\")"),
    }
    if let Some(content_type) = attributes.get("datacontenttype") {
        let json = content_type.as_str().is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
        if !json {
            report("datacontenttype", "must be application/json");
        }
    }
    let properties = match attributes.remove("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(data @ Value::Object(_)) => data,
        Some(_) => {
            report(
                "data",
                "must be a JSON object: its fields are the event's properties",
            );
            Value::Null
        }
    };
    let id = match (attributes.get("source"), attributes.get("id")) {
        (Some(Value::String(source)), Some(Value::String(id))) if !source.is_empty() => {
            Value::String(format!("{source}/{id}"))
        }
        (Some(Value::String(_)) | None, Some(id)) => id.clone(),
        (Some(_), _) => {
            report("source", "must be a string");
            Value::Null
        }
        (_, None) => Value::Null,
    };
    let mut event = Map::new();
    event.insert("id".into(), id);
    if let Some(subject) = attributes.remove("subject") {
        event.insert("customer".into(), subject);
    }
    if let Some(kind) = attributes.remove("type") {
        event.insert("type".into(), kind);
    }
    if let Some(time) = attributes.remove("time") {
        event.insert("timestamp".into(), time);
    }
    event.insert("properties".into(), properties);
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(body: &str, batch: bool) -> Value {
        serde_json::from_slice(&to_events(body.as_bytes(), batch).unwrap()).unwrap()
    }

    #[test]
    fn attributes_map_onto_an_event() {
        let events = converted(
            r#"{"specversion": "1.0", "id": "ce-1", "source": "svc", "type": "llm_call",
                "subject": "cust_42", "time": "2026-12-01T19:59:38Z",
                "datacontenttype": "application/json", "data": {"tokens": 700, "model": "gpt-x"}}"#,
            false,
        );
        assert_eq!(
            events,
            serde_json::json!([{"id": "svc/ce-1", "customer": "cust_42", "type": "llm_call",
                "timestamp": "2026-12-01T19:59:38Z", "properties": {"tokens": 700, "model": "gpt-x"}}])
        );
    }

    #[test]
    fn what_would_be_dropped_is_refused_by_name() {
        let body = r#"[{"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "c",
                        "traceparent": "00-x"},
                       {"specversion": "0.3", "id": "b", "source": "s", "type": "t", "subject": "c",
                        "data_base64": "AAE="},
                       {"specversion": "1.0", "id": "c", "source": "s", "type": "t", "subject": "c",
                        "data": [1, 2]}]"#;
        let Err(ApiError::InvalidEvents(errors)) = to_events(body.as_bytes(), true) else {
            panic!("refused");
        };
        let fields: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(
            fields,
            [
                (0, "traceparent"),
                (1, "data_base64"),
                (1, "specversion"),
                (2, "data")
            ]
        );
    }

    #[test]
    fn a_key_given_twice_is_refused_where_it_is() {
        let body = r#"[{"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "c"},
                       {"specversion": "1.0", "id": "b", "source": "s", "type": "t", "subject": "c",
                        "data": {"tokens": 5, "tokens": 500}}]"#;
        let Err(ApiError::InvalidEvents(errors)) = to_events(body.as_bytes(), true) else {
            panic!("refused");
        };
        assert_eq!(
            (errors[0].index, errors[0].field.as_str()),
            (1, "data.tokens")
        );
        let single = r#"{"specversion": "1.0", "id": "a", "subject": "c", "subject": "d"}"#;
        let Err(ApiError::InvalidEvents(errors)) = to_events(single.as_bytes(), false) else {
            panic!("refused");
        };
        assert_eq!((errors[0].index, errors[0].field.as_str()), (0, "subject"));
    }

    #[test]
    fn a_batch_must_be_an_array_and_a_single_event_an_object() {
        assert!(to_events(b"{}", true).is_err());
        assert!(to_events(b"[]", false).is_err());
    }
}
