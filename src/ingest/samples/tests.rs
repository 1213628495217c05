use super::*;

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

fn run(meter: &Meter, properties: &str) -> Result<Option<Sample>, SampleError> {
    extract(meter, &Props::parse(properties).unwrap())
}

#[test]
fn a_key_repeated_anywhere_is_found_with_its_path() {
    assert_eq!(
        first_duplicate_key(r#"{"tokens": 5, "tokens": 500}"#).as_deref(),
        Some("tokens")
    );
    assert_eq!(
        first_duplicate_key(r#"{"usage": {"in": 1, "out": 2, "in": 3}}"#).as_deref(),
        Some("usage.in")
    );
    assert_eq!(
        first_duplicate_key(r#"{"items": [{"id": 1}, {"id": 2, "id": 2}]}"#).as_deref(),
        Some("items[1].id")
    );
    assert_eq!(
        first_duplicate_key(r#"{"a": {"k": 1}, "b": {"k": 1}, "k": [1, 1.5e3, "k", null, true]}"#),
        None
    );
    assert_eq!(
        first_duplicate_key(r#"{"a\u0062": 1, "ab": 2}"#).as_deref(),
        Some("ab"),
        "escapes decoded"
    );
}

/// JSON text whose objects take keys from a small set, so that some repeat one.
fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just("1".to_owned()),
        Just("\"x\"".to_owned()),
        Just("null".to_owned()),
        Just("\"a:b\"".to_owned())
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        let key = prop_oneof![Just("a"), Just("b"), Just("c"), Just("\\u0061")];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key, inner), 0..4).prop_map(|v| {
                let fields: Vec<String> = v.iter().map(|(k, x)| format!("\"{k}\": {x}")).collect();
                format!("{{{}}}", fields.join(", "))
            }),
        ]
    })
}

proptest::proptest! {
    #[test]
    fn the_quick_pass_never_misses_a_repeated_key(text in json_text()) {
        let object = format!("{{\"p\": {text}}}");
        proptest::prop_assert_eq!(first_duplicate_key(&object), exact_duplicate_key(&object));
    }
}

#[test]
fn a_key_repeated_in_a_large_object_is_found_too() {
    let keys: Vec<String> = (0..40).map(|i| format!(r#""k{i}": {i}"#)).collect();
    let unique = format!("{{{}}}", keys.join(", "));
    assert_eq!(first_duplicate_key(&unique), None);
    let repeated = format!(r#"{{{}, "k3": 0}}"#, keys.join(", "));
    assert_eq!(first_duplicate_key(&repeated).as_deref(), Some("k3"));
    let early = format!(r#"{{{}, "k20": 0}}"#, keys[..25].join(", "));
    assert_eq!(first_duplicate_key(&early).as_deref(), Some("k20"));
}

#[test]
fn a_group_or_distinct_value_longer_than_the_bound_is_an_error() {
    let mut grouped = meter(Aggregation::Count, None);
    grouped.group_by = vec!["model".into()];
    let long = "m".repeat(MAX_GROUP_VALUE_BYTES + 1);
    let err = run(&grouped, &format!(r#"{{"model": "{long}"}}"#)).unwrap_err();
    assert_eq!(err.field, "properties.model");
    let fits = "m".repeat(MAX_GROUP_VALUE_BYTES);
    assert!(run(&grouped, &format!(r#"{{"model": "{fits}"}}"#)).is_ok());
    let distinct = meter(Aggregation::UniqueCount, Some("user"));
    let err = run(&distinct, &format!(r#"{{"user": "{long}"}}"#)).unwrap_err();
    assert_eq!(err.field, "properties.user");
}

#[test]
fn count_samples_are_one_whatever_the_properties() {
    assert_eq!(
        run(&meter(Aggregation::Count, None), "{}")
            .unwrap()
            .unwrap()
            .value,
        ONE
    );
}

#[test]
fn sums_read_numbers_and_numeric_strings_exactly() {
    let m = meter(Aggregation::Sum, Some("tokens"));
    assert_eq!(
        run(&m, r#"{"tokens": 0.1}"#).unwrap().unwrap().value,
        100_000_000_000
    );
    assert_eq!(
        run(&m, r#"{"tokens": " 1250 "}"#).unwrap().unwrap().value,
        1250 * ONE
    );
    assert_eq!(
        run(&m, r#"{"tokens": "1e3"}"#).unwrap().unwrap().value,
        1000 * ONE
    );
    assert_eq!(
        run(&m, r#"{"tokens": -2.5E-1}"#).unwrap().unwrap().value,
        -250_000_000_000
    );
}

#[test]
fn a_missing_value_gives_no_sample_and_a_bad_one_an_error() {
    let m = meter(Aggregation::Max, Some("usage.gb"));
    assert_eq!(run(&m, r#"{"other": 1}"#).unwrap(), None);
    assert_eq!(run(&m, r#"{"usage": {"gb": null}}"#).unwrap(), None);
    assert_eq!(run(&m, r#"{"usage": 5}"#).unwrap(), None);
    let err = run(&m, r#"{"usage": {"gb": "lots"}}"#).unwrap_err();
    assert_eq!(err.field, "properties.usage.gb");
    let err = run(&m, r#"{"usage": {"gb": true}}"#).unwrap_err();
    assert!(err.message.contains("number"));
}

#[test]
fn nested_paths_and_literal_dotted_keys_both_resolve() {
    let m = meter(Aggregation::Sum, Some("usage.input_tokens"));
    assert_eq!(
        run(&m, r#"{"usage": {"input_tokens": 7}}"#)
            .unwrap()
            .unwrap()
            .value,
        7 * ONE
    );
    let literal = r#"{"usage.input_tokens": 9, "usage": {"input_tokens": 7}}"#;
    assert_eq!(run(&m, literal).unwrap().unwrap().value, 9 * ONE);
    let deep = meter(Aggregation::Sum, Some("a.b.c"));
    assert_eq!(
        run(&deep, r#"{"a": {"b": {"c": 3}}}"#)
            .unwrap()
            .unwrap()
            .value,
        3 * ONE
    );
}

#[test]
fn filters_must_all_match() {
    let mut m = meter(Aggregation::Count, None);
    m.filters
        .insert("region".into(), vec!["eu".into(), "us".into()]);
    m.filters.insert("tier".into(), vec!["1".into()]);
    assert!(run(&m, r#"{"region": "eu", "tier": 1}"#).unwrap().is_some());
    assert!(run(&m, r#"{"region": "ap", "tier": 1}"#).unwrap().is_none());
    assert!(run(&m, r#"{"region": "eu"}"#).unwrap().is_none());
}

#[test]
fn unique_counts_keep_the_rendered_value_and_groups_default_to_empty() {
    let mut m = meter(Aggregation::UniqueCount, Some("user"));
    m.group_by = vec!["model".into(), "absent".into()];
    let s = run(&m, r#"{"user": 42, "model": "gpt-\u0078"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(s.value_str, "42");
    assert_eq!(s.group_values, vec!["gpt-x".to_string(), String::new()]);
}

#[test]
fn escaped_keys_are_found_by_their_unescaped_name() {
    let m = meter(Aggregation::Sum, Some("tokens"));
    assert_eq!(
        run(&m, r#"{"tok\u0065ns": 4}"#).unwrap().unwrap().value,
        4 * ONE
    );
}

#[test]
fn values_that_cannot_be_stored_exactly_are_errors() {
    let m = meter(Aggregation::Sum, Some("v"));
    let err = run(&m, r#"{"v": "0.0000000000001"}"#).unwrap_err();
    assert!(err.message.contains("decimal places"));
    assert!(run(&m, r#"{"v": "NaN"}"#).is_err());
    assert!(run(&m, r#"{"v": [1]}"#).is_err());
}

#[test]
fn a_sample_is_priced_at_each_dynamic_prices_property_or_refused() {
    let entry = crate::catalog::MeterEntry {
        meter: meter(Aggregation::Sum, Some("tokens")),
        slug: "m".into(),
        group_keys: Vec::new().into(),
        priced: vec![crate::catalog::PricedBy {
            property: "cost.unit".into(),
            slug: "m#cost.unit".into(),
        }],
    };
    let price = |properties: &str| {
        let props = Props::parse(properties).unwrap();
        let sample = extract(&entry.meter, &props).unwrap().unwrap();
        priced(&entry, &sample, &props)
    };
    let got = price(r#"{"tokens": 1500, "cost": {"unit": "0.000002"}}"#).unwrap();
    assert_eq!(
        got,
        vec![PricedSample {
            meter: "m#cost.unit".into(),
            amount: 3_000_000_000,
            unit_amount: "0.000002".into(),
        }],
        "1,500 × 0.000002 = 0.003"
    );
    for (properties, why) in [
        (r#"{"tokens": 1}"#, "required"),
        (r#"{"tokens": 1, "cost": {"unit": null}}"#, "required"),
        (r#"{"tokens": 1, "cost": {"unit": "cheap"}}"#, "a number"),
        (
            r#"{"tokens": 1.5, "cost": {"unit": 0.0000000000015}}"#,
            "decimal places",
        ),
        (
            r#"{"tokens": 0.000001, "cost": {"unit": 0.0000001}}"#,
            "times the meter's value",
        ),
    ] {
        let err = price(properties).unwrap_err();
        assert_eq!(err.field, "properties.cost.unit", "{properties}");
        assert!(err.message.contains(why), "{properties}: {}", err.message);
    }
}
