use super::*;
use crate::catalog::Catalog;

const NOW: i64 = 1_795_000_000_000; // 2026-11-18T11:06:40Z

fn catalog() -> Catalog {
    Catalog::from_json(
        r#"{"tenants": [
            {"id": "t", "meters": [{"slug": "tokens", "name": "Tokens", "event_type": "llm", "aggregation": "sum",
                                    "value_property": "tokens", "group_by": ["model"]}]},
            {"id": "old", "allow_backfill": true}]}"#,
    )
    .unwrap()
}

fn decode_as(tenant: &str, body: &str, ndjson: bool) -> Result<Validated, ApiError> {
    let catalog = catalog().tenant(tenant);
    decode(
        body.as_bytes(),
        ndjson,
        &Context {
            tenant: &tenant.into(),
            catalog: &catalog,
            now_ms: NOW,
        },
    )
}

fn ok(body: &str) -> Validated {
    decode_as("t", body, false).unwrap()
}

fn errors(body: &str) -> Vec<EventError> {
    match decode_as("t", body, false) {
        Err(ApiError::InvalidEvents(errors)) => errors,
        other => panic!("expected invalid_events, got {other:?}"),
    }
}

#[test]
fn every_body_form_decodes_to_the_same_events() {
    let one = r#"{"id": "e1", "customer": "c", "type": "api"}"#;
    let forms = [
        (one.to_string(), false),
        (format!("[{one}]"), false),
        (format!(r#"{{"events": [{one}]}}"#), false),
        (format!("{one}\n\n"), true),
    ];
    for (body, ndjson) in forms {
        let validated = decode_as("t", &body, ndjson).unwrap();
        assert_eq!(validated.rows.len(), 1, "{body}");
        assert_eq!(validated.rows[0].id, "e1");
        assert_eq!(validated.keys[0], dedup::key("t", "e1"));
    }
}

#[test]
fn aliases_of_lago_flexprice_and_openmeter_are_accepted() {
    let bodies = [
        r#"{"transaction_id": "e1", "external_customer_id": "c", "code": "api"}"#,
        r#"{"event_id": "e1", "external_customer_id": "c", "event_name": "api"}"#,
        r#"{"id": "e1", "subject": "c", "type": "api"}"#,
    ];
    for body in bodies {
        let row = &ok(body).rows[0];
        assert_eq!(
            (
                row.id.as_str(),
                row.customer.as_str(),
                row.event_type.as_str()
            ),
            ("e1", "c", "api"),
            "{body}"
        );
    }
}

#[test]
fn missing_and_mistyped_fields_are_reported_by_index_and_field() {
    let errs =
        errors(r#"[{"id": "ok", "customer": "c", "type": "t"}, {"customer": 5, "type": ""}]"#);
    let got: Vec<_> = errs.iter().map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(got, vec![(1, "id"), (1, "customer"), (1, "type")]);
    assert!(errs[1].message.contains("string"));
}

#[test]
fn timestamps_accept_rfc3339_seconds_and_milliseconds() {
    let utc = chrono::DateTime::from_timestamp_millis(NOW).unwrap();
    let paris = utc.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
    let (utc, paris) = (
        format!("{:?}", utc.to_rfc3339()),
        format!("{:?}", paris.to_rfc3339()),
    );
    let cases = [
        (utc.as_str(), NOW),
        (paris.as_str(), NOW),
        ("1795000000", NOW),
        ("1795000000000", NOW),
        ("1795000000.5", NOW + 500),
        (r#""1795000000""#, NOW),
    ];
    for (ts, expected) in cases {
        let body = format!(r#"{{"id": "e", "customer": "c", "type": "t", "timestamp": {ts}}}"#);
        assert_eq!(ok(&body).rows[0].ts_ms, expected, "{ts}");
    }
    let absent = ok(r#"{"id": "e", "customer": "c", "type": "t"}"#);
    assert_eq!(
        absent.rows[0].ts_ms, NOW,
        "no timestamp means the time of receipt"
    );
}

#[test]
fn timestamps_outside_the_window_are_refused_unless_backfill_is_allowed() {
    let old = format!(
        r#"{{"id": "e", "customer": "c", "type": "t", "timestamp": {}}}"#,
        NOW - MAX_AGE_MS - 1
    );
    let future = format!(
        r#"{{"id": "e", "customer": "c", "type": "t", "timestamp": {}}}"#,
        NOW + MAX_AHEAD_MS + 1_000
    );
    assert!(errors(&old)[0].message.contains("35 days"));
    assert!(errors(&future)[0].message.contains("future"));
    assert!(decode_as("old", &old, false).is_ok());
    let absurd =
        r#"{"id": "e", "customer": "c", "type": "t", "timestamp": "3000-01-01T00:00:00Z"}"#;
    assert!(
        decode_as("old", absurd, false).is_err(),
        "beyond 2100 is never storable"
    );
    let garbage = r#"{"id": "e", "customer": "c", "type": "t", "timestamp": "yesterday"}"#;
    assert_eq!(errors(garbage)[0].field, "timestamp");
}

#[test]
fn properties_must_be_an_object_and_are_kept_verbatim() {
    let row = &ok(
        r#"{"id": "e", "customer": "c", "type": "t", "properties": {"a": [1, 2.50], "b": "x"}}"#,
    )
    .rows[0];
    assert_eq!(row.properties, r#"{"a": [1, 2.50], "b": "x"}"#);
    let errs = errors(r#"{"id": "e", "customer": "c", "type": "t", "properties": [1]}"#);
    assert_eq!(errs[0].field, "properties");
}

#[test]
fn matching_meters_add_samples_with_groups() {
    let row = &ok(r#"{"id": "e", "customer": "c", "type": "llm", "properties": {"tokens": "1250", "model": "gpt-x"}}"#).rows[0];
    assert_eq!(
        row.sample_meter,
        vec![std::sync::Arc::<str>::from("tokens")]
    );
    assert_eq!(row.sample_value, vec![1250 * 1_000_000_000_000]);
    assert_eq!(row.sample_group_keys[0].as_ref(), ["model".to_string()]);
    assert_eq!(row.sample_group_values, vec![vec!["gpt-x".to_string()]]);
    let other =
        &ok(r#"{"id": "e", "customer": "c", "type": "other", "properties": {"tokens": 5}}"#).rows
            [0];
    assert!(other.sample_meter.is_empty());
}

#[test]
fn a_bad_meter_value_names_the_property_and_the_meter() {
    let errs =
        errors(r#"{"id": "e", "customer": "c", "type": "llm", "properties": {"tokens": "many"}}"#);
    assert_eq!(errs[0].field, "properties.tokens");
    assert!(errs[0].message.contains("meter tokens"));
}

#[test]
fn malformed_bodies_are_invalid_requests() {
    for body in ["", "   ", "nope", "[1, 2", r#"{"events": 5}"#, "[]"] {
        assert!(
            matches!(
                decode_as("t", body, false),
                Err(ApiError::InvalidRequest(_))
            ),
            "{body:?}"
        );
    }
    assert!(
        matches!(decode(&[0xff, 0xfe], false, &Context { tenant: &"t".into(), catalog: &Default::default(), now_ms: NOW }),
        Err(ApiError::InvalidRequest(m)) if m.contains("UTF-8"))
    );
    assert!(
        matches!(decode_as("t", "{\"id\": \"e\"}\n{bad", true), Err(ApiError::InvalidRequest(m)) if m.contains("line 2"))
    );
}

#[test]
fn a_non_object_in_an_array_is_an_event_error() {
    let errs = errors(r#"[{"id": "e", "customer": "c", "type": "t"}, 5]"#);
    assert_eq!((errs[0].index, errs[0].field.as_str()), (1, ""));
}

#[test]
fn more_than_ten_thousand_events_is_payload_too_large() {
    let one = r#"{"id":"e","customer":"c","type":"t"}"#;
    let body = format!("[{}]", vec![one; MAX_EVENTS_PER_REQUEST + 1].join(","));
    assert!(matches!(
        decode_as("t", &body, false),
        Err(ApiError::PayloadTooLarge(_))
    ));
}

#[test]
fn error_lists_are_capped_with_a_summary() {
    let body = format!("[{}]", vec!["{}"; 2000].join(","));
    let errs = errors(&body);
    assert_eq!(errs.len(), MAX_REPORTED_ERRORS + 1);
    assert!(errs.last().unwrap().message.contains("more errors"));
}

#[test]
fn sql_looking_strings_pass_through_untouched() {
    let nasty = "'); DROP TABLE events; --";
    let body = serde_json::json!({"id": nasty, "customer": nasty, "type": nasty, "properties": {"q": nasty}}).to_string();
    let row = &ok(&body).rows[0];
    assert_eq!(
        (
            row.id.as_str(),
            row.customer.as_str(),
            row.event_type.as_str()
        ),
        (nasty, nasty, nasty)
    );
}

#[test]
fn hostile_inputs_are_refused_or_kept_without_harm() {
    // Nesting far past any parser's stack: refused, not a crash.
    let deep = format!(
        r#"{{"id": "e", "customer": "c", "type": "t", "properties": {{"d": {}1{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(decode_as("t", &deep, false).is_err());
    assert!(decode_as("t", &deep.replace("\"t\"", "\"llm\""), true).is_err());
    // Up to the limit is fine, one more names the field; brackets inside strings do not count.
    let nested = |n: usize| {
        format!(
            r#"{{"id": "e", "customer": "c", "type": "t", "properties": {{"s": "[[[[{{{{", "d": {}1{}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    assert!(decode_as("t", &nested(MAX_PROPERTY_DEPTH - 1), false).is_ok());
    assert_eq!(errors(&nested(MAX_PROPERTY_DEPTH))[0].field, "properties");
    // A huge property map is kept verbatim.
    let keys: Vec<String> = (0..50_000).map(|i| format!(r#""k{i}": {i}"#)).collect();
    let big = format!(
        r#"{{"id": "e", "customer": "c", "type": "t", "properties": {{{}}}}}"#,
        keys.join(",")
    );
    let rows = ok(&big).rows;
    assert!(rows[0].properties.contains(r#""k49999": 49999"#));
    // Numbers out of any meter's range name the property; out-of-range timestamps are refused.
    for tokens in ["1e400", "1e30", "-1e30", "123456789012345678901234567890"] {
        let body = format!(
            r#"{{"id": "e", "customer": "c", "type": "llm", "properties": {{"tokens": {tokens}}}}}"#
        );
        let errs = errors(&body);
        assert_eq!(errs[0].field, "properties.tokens", "{tokens}");
    }
    for ts in [
        "1e30",
        "-1",
        "99999999999999999999",
        "\"9999-99-99\"",
        "1.5e300",
    ] {
        let errs = errors(&format!(
            r#"{{"id": "e", "customer": "c", "type": "t", "timestamp": {ts}}}"#
        ));
        assert_eq!(errs[0].field, "timestamp", "{ts}");
    }
    // Invalid UTF-8 inside a string, and a lone surrogate escape.
    let mut bytes = br#"{"id": "e"#.to_vec();
    bytes.extend([0xc3, 0x28]);
    bytes.extend(br#"", "customer": "c", "type": "t"}"#);
    let catalog = catalog().tenant("t");
    let ctx = Context {
        tenant: &"t".into(),
        catalog: &catalog,
        now_ms: NOW,
    };
    assert!(matches!(
        decode(&bytes, false, &ctx),
        Err(ApiError::InvalidRequest(_))
    ));
    assert!(
        decode_as(
            "t",
            r#"{"id": "\ud800", "customer": "c", "type": "t"}"#,
            false
        )
        .is_err()
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), ndjson in any::<bool>()) {
            let catalog = catalog().tenant("t");
            let _ = decode(&body, ndjson, &Context { tenant: &"t".into(), catalog: &catalog, now_ms: NOW });
        }

        #[test]
        fn arbitrary_json_events_never_panic(id in ".{0,300}", ts in any::<i64>(), tokens in any::<f64>(), nest in 0usize..200) {
            let deep = format!("{}1{}", "[".repeat(nest), "]".repeat(nest));
            let body = format!(r#"{{"id": {}, "customer": "c", "type": "llm", "timestamp": {ts}, "properties": {{"tokens": {}, "d": {deep}}}}}"#,
                serde_json::to_string(&id).unwrap(), if tokens.is_finite() { tokens.to_string() } else { "1".into() });
            let _ = decode_as("t", &body, false);
        }
    }
}
