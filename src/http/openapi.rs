//! `GET /openapi.json`: the document generated from the handlers' annotations, completed with
//! what every operation shares, so that it validates as OpenAPI 3.1 and client generators get
//! full types: the error shape on every error response, both ways of sending a key, the `401`
//! any keyed route can answer, schemas for the bodies the handlers build as JSON, typed query
//! parameters, unique operation ids and examples of the main request bodies.

use serde_json::{Map, Value, json};

/// Routes that take no key.
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Vendor-shaped routes: their errors keep the vendor's shape, their ids the vendor's prefix.
const VENDORS: [&str; 6] = ["lago", "flexprice", "flowglad", "lark", "diga", "openmeter"];

/// The complete document.
pub fn document(generated: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(generated).unwrap_or_else(|_| json!({}));
    complete(&mut doc);
    doc
}

fn complete(doc: &mut Value) {
    doc["openapi"] = json!("3.1.0");
    let components = object(&mut doc["components"]);
    object(components.entry("schemas").or_insert(json!({}))).extend(shared_schemas());
    object(components.entry("securitySchemes").or_insert(json!({}))).insert(
        "api_key".into(),
        json!({"type": "apiKey", "in": "header", "name": "x-api-key",
               "description": "API key (the same keys as `Authorization: Bearer`)"}),
    );
    doc["security"] = json!([{"bearer": []}, {"api_key": []}]);
    doc["paths"]["/openapi.json"] = json!({"get": {"operationId": "openapi", "tags": ["operations"],
        "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1",
            "content": {"application/json": {"schema": {"type": "object"}}}}}}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let vendor = VENDORS
            .iter()
            .find(|v| path.starts_with(&format!("/{v}/")))
            .copied();
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            complete_operation(path, method, vendor, operation);
        }
    }
}

fn complete_operation(path: &str, method: &str, vendor: Option<&str>, op: &mut Value) {
    if let (Some(vendor), Some(id)) = (vendor, op["operationId"].as_str()) {
        op["operationId"] = json!(format!("{vendor}_{id}"));
    }
    if PUBLIC.contains(&path) {
        op["security"] = json!([]);
    }
    let responses = object(&mut op["responses"]);
    if !PUBLIC.contains(&path) {
        responses.entry("401").or_insert(json!({}));
        responses.entry("403").or_insert(json!({}));
    }
    if method == "post" || method == "put" {
        responses.entry("415").or_insert(json!({}));
    }
    if path.ends_with("/query") {
        responses.entry("422").or_insert(json!({}));
    }
    for (status, response) in responses.iter_mut() {
        let response = object(response);
        if !response.contains_key("description") {
            response.insert("description".into(), json!(describe(status)));
        }
        if response.contains_key("content") || status == "204" {
            continue;
        }
        let schema = if !status.starts_with('2') {
            match vendor {
                Some(v) => json!({"type": "object", "description": format!("{v}'s error shape")}),
                None => json!({"$ref": "#/components/schemas/Error"}),
            }
        } else {
            body_schema(method, path)
        };
        response.insert(
            "content".into(),
            json!({"application/json": {"schema": schema}}),
        );
    }
    let parameters = op.get_mut("parameters").and_then(Value::as_array_mut);
    for parameter in parameters.into_iter().flatten() {
        type_parameter(parameter);
    }
    if (method, path) == ("post", "/v1/events") {
        let events = json!({"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "maxItems": 10_000});
        op["requestBody"]["content"] = json!({
            "application/json": {"schema": {"oneOf": [
                events,
                {"type": "object", "required": ["events"], "properties": {"events": events}},
                {"$ref": "#/components/schemas/Event"}]}},
            "application/x-ndjson": {"schema": {"type": "string", "description": "one event per line"}}});
    }
    if let Some(example) = request_example(method, path) {
        let content = object(&mut op["requestBody"]["content"]);
        let media = content
            .entry("application/json")
            .or_insert(json!({"schema": {"type": "object"}}));
        media["example"] = example;
    }
}

/// A JSON object in place, made one if it is anything else.
fn object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = json!({});
    }
    value.as_object_mut().expect("made an object above")
}

fn describe(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted: stored in ClickHouse",
        "400" => "invalid_request or invalid_events: `message` (and `errors`) say what to fix",
        "401" => "unauthorized: no key, or an unknown one",
        "403" => "forbidden: the key's role or customer may not do this",
        "404" => "not found: `code` names what (customer_not_found, plan_not_found, …)",
        "405" => "method_not_allowed (on a vendor route: Lago's no active subscription)",
        "408" => "request_timeout: the body stopped arriving",
        "415" => "unsupported_media_type: another Content-Type or Content-Encoding",
        "409" => "conflict: the key exists, or the subscription has ended",
        "413" => "payload_too_large",
        "422" => "no_active_subscription, or query_too_large: the read would exceed its budget",
        "429" => "rate_limited: retry after `Retry-After` seconds",
        "503" => "unavailable: ClickHouse is unreachable; retry after `Retry-After` seconds",
        _ => "See the error shape",
    }
}

/// The success body of the routes whose handlers build their JSON by hand.
fn body_schema(method: &str, path: &str) -> Value {
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let list = |name: &str| {
        json!({"type": "object", "required": ["data"],
               "properties": {"data": {"type": "array", "items": schema(name)}}})
    };
    match (method, path) {
        ("get", "/v1/customers") => list("Customer"),
        ("get", "/v1/meters") => list("Meter"),
        ("get", "/v1/plans") => list("Plan"),
        ("get", "/v1/subscriptions") => list("SubscriptionView"),
        (_, p) if p.starts_with("/v1/subscriptions") && !p.ends_with("/usage") => {
            schema("SubscriptionView")
        }
        ("get", "/v1/customers/{key}/billing_state") => schema("BillingState"),
        ("get", "/v1/meters/{key}/query") => schema("MeterSeries"),
        ("get", "/healthz" | "/readyz") => {
            json!({"type": "object", "properties": {"status": {"type": "string"}}})
        }
        _ => json!({"type": "object", "description": "see the operation's description"}),
    }
}

fn type_parameter(parameter: &mut Value) {
    match parameter["name"].as_str() {
        Some("window_size") => {
            parameter["schema"] =
                json!({"type": "string", "enum": ["minute", "hour", "day"], "default": "hour"});
        }
        Some("filter[prop]") => {
            parameter["name"] = json!("filter");
            parameter["style"] = json!("deepObject");
            parameter["explode"] = json!(true);
            parameter["description"] =
                json!("filter[prop]=v1,v2: keep the values listed of a group property");
            parameter["schema"] =
                json!({"type": "object", "additionalProperties": {"type": "string"}});
        }
        Some("from" | "to") => {
            parameter["description"] = json!("RFC 3339, or Unix seconds or milliseconds");
        }
        Some("as_of") => {
            parameter["description"] = json!(
                "RFC 3339, or Unix seconds or milliseconds, not in the future: the figures \
                 with the events ingested up to that moment; the answer adds late_events"
            );
        }
        _ => {}
    }
}

fn request_example(method: &str, path: &str) -> Option<Value> {
    Some(match (method, path) {
        ("post", "/v1/events") => json!([{"id": "evt_1", "customer": "cust_42", "type": "llm_call",
            "timestamp": "2026-11-21T10:00:00Z",
            "properties": {"tokens": 1250, "model": "gpt-x", "region": "eu"}}]),
        ("post", "/v1/meters") => {
            json!({"slug": "tokens", "name": "Tokens", "event_type": "llm_call",
            "aggregation": "sum", "value_property": "tokens", "group_by": ["model"]})
        }
        ("post", "/v1/plans") => {
            json!({"code": "pro", "name": "Pro", "currency": "USD", "interval": "month",
            "prices": [{"code": "base", "type": "flat", "amount": "49.00", "timing": "advance", "prorate": true},
                       {"code": "calls", "type": "usage", "meter": "api_calls", "model": "per_unit", "unit_amount": "0.002"}]})
        }
        ("post", "/v1/customers") => json!({"external_id": "cust_42", "name": "Acme",
            "email": "billing@acme.test", "timezone": "Europe/Paris"}),
        ("post", "/v1/subscriptions") => {
            json!({"external_id": "sub_1", "customer": "cust_42", "plan": "pro",
            "start_date": "2026-11-05T13:00:00Z", "billing_anchor": "anniversary"})
        }
        ("post", "/v1/subscriptions/{key}/change_plan") => json!({"plan": "scale", "at": "now"}),
        ("post", "/v1/subscriptions/{key}/cancel") => json!({"at": "period_end"}),
        ("post", "/v1/api-keys") => {
            json!({"role": "customer", "customer": "cust_42", "name": "portal"})
        }
        _ => return None,
    })
}

fn shared_schemas() -> Map<String, Value> {
    let instant = json!({"type": "string", "format": "date-time"});
    let maybe_instant = json!({"type": ["string", "null"], "format": "date-time"});
    let decimal = json!({"type": "string", "description": "exact decimal"});
    let late_events = json!({"type": "integer", "minimum": 0,
        "description": "with as_of: events of the window ingested after that moment"});
    let window = json!({"type": "object", "required": ["from", "to"],
        "properties": {"from": instant, "to": instant, "trial": {"type": "boolean"}}});
    let schemas = json!({
        "Error": {"type": "object", "required": ["status", "error", "code", "message"],
            "properties": {
                "status": {"type": "integer"}, "error": {"type": "string"},
                "code": {"type": "string"}, "message": {"type": "string"},
                "errors": {"type": "array", "description": "invalid_events: what to fix, per event",
                    "items": {"type": "object", "required": ["index", "field", "message"],
                        "properties": {"index": {"type": "integer"}, "field": {"type": "string"},
                                       "message": {"type": "string"}}}}}},
        "Event": {"type": "object", "required": ["id", "customer", "type"],
            "description": "Lago's (transaction_id, external_customer_id, code), Flexprice's (event_id, event_name) and OpenMeter's (subject) names are accepted too",
            "properties": {
                "id": {"type": "string", "description": "unique per tenant: a repeated id is a duplicate, counted once"},
                "customer": {"type": "string"}, "type": {"type": "string"},
                "timestamp": {"type": ["string", "integer"], "description": "RFC 3339, or Unix seconds or milliseconds; default: arrival"},
                "properties": {"type": "object", "additionalProperties": true}}},
        "UsageLine": {"type": "object",
            "required": ["subscription", "plan", "price", "meter", "included_units", "used_units", "remaining_units", "overage"],
            "properties": {"subscription": {"type": "string"}, "plan": {"type": "string"},
                "price": {"type": "string"}, "meter": {"type": "string"},
                "included_units": decimal, "used_units": decimal, "remaining_units": decimal,
                "overage": {"type": "boolean"}}},
        "SubscriptionView": {"type": "object",
            "required": ["external_id", "customer", "plan", "start_date", "billing_anchor", "phases", "status"],
            "properties": {
                "external_id": {"type": "string"}, "customer": {"type": "string"},
                "plan": {"type": "string", "description": "the plan in force now"},
                "start_date": instant, "billing_anchor": {"$ref": "#/components/schemas/Anchor"},
                "phases": {"type": "array", "items": {"type": "object", "required": ["plan", "from"],
                    "properties": {"plan": {"type": "string"}, "from": instant}}},
                "ends_at": maybe_instant,
                "status": {"type": "string", "enum": ["scheduled", "trialing", "active", "canceled"]},
                "trial_end": maybe_instant,
                "current_period": {"oneOf": [window, {"type": "null"}]},
                "next_invoice_date": maybe_instant,
                "estimated_next_invoice_amount": {"type": ["string", "null"], "description": "exact decimal"},
                "usage": {"type": "array", "items": {"$ref": "#/components/schemas/UsageLine"}},
                "as_of": instant, "late_events": late_events}},
        "BillingState": {"type": "object",
            "required": ["customer", "has_active_subscription", "active_subscriptions", "has_overage", "usage"],
            "properties": {
                "customer": {"type": "string"}, "has_active_subscription": {"type": "boolean"},
                "active_subscriptions": {"type": "array", "items": {"type": "object",
                    "properties": {"subscription": {"type": "string"}, "plan": {"type": "string"},
                        "status": {"type": "string"}, "current_period": window}}},
                "has_overage": {"type": "boolean"},
                "usage": {"type": "array", "items": {"$ref": "#/components/schemas/UsageLine"}},
                "as_of": instant, "late_events": late_events}},
        "MeterSeries": {"type": "object", "required": ["meter", "window_size", "data"],
            "properties": {
                "meter": {"type": "string"}, "window_size": {"type": "string"},
                "timezone": {"type": "string"},
                "as_of": instant, "late_events": late_events,
                "data": {"type": "array", "items": {"type": "object",
                    "properties": {"window_start": instant, "window_end": instant,
                        "customer": {"type": ["string", "null"]},
                        "group": {"type": "object", "additionalProperties": true},
                        "value": decimal}}}}}
    });
    match schemas {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
