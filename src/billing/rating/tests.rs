use super::*;
use proptest::prelude::*;
use std::str::FromStr;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn tier(up_to: Option<&str>, unit: &str, flat: &str) -> Tier {
    Tier {
        up_to: up_to.map(d),
        unit_amount: d(unit),
        flat_amount: d(flat),
    }
}

/// Tiers with flat fees: (0, 100] at 1 + 10, (100, 200] at 0.5 + 5, above at 0.1.
fn stepped() -> Vec<Tier> {
    vec![
        tier(Some("100"), "1", "10"),
        tier(Some("200"), "0.5", "5"),
        tier(None, "0.1", "0"),
    ]
}

#[test]
fn the_api_example_graduated_charge_is_exact() {
    let tiers = vec![tier(Some("10000"), "0.002", "0"), tier(None, "0.001", "0")];
    let charge = rate(&Model::Graduated(&tiers), d("12345"), 0, d("1000")).unwrap();
    assert_eq!(charge.billable_quantity, d("11345"));
    assert_eq!(charge.amount, d("21.345"));
    let lines: Vec<_> = charge
        .tiers
        .iter()
        .map(|l| (l.from, l.up_to, l.quantity, l.amount))
        .collect();
    assert_eq!(
        lines,
        vec![
            (d("0"), Some(d("10000")), d("10000"), d("20.000")),
            (d("10000"), None, d("1345"), d("1.345"))
        ]
    );
}

#[test]
fn graduated_and_volume_worked_examples() {
    // (quantity, graduated, volume): Lago/Flexprice semantics, flat amount once per touched tier.
    let cases = [
        ("0", "0", "0"),
        ("1", "11", "11"),
        ("100", "110", "110"),
        ("150", "140", "80"),
        ("200", "165", "105"),
        ("250", "170", "25"),
    ];
    let tiers = stepped();
    for (quantity, graduated, volume) in cases {
        assert_eq!(
            rate(&Model::Graduated(&tiers), d(quantity), 0, Decimal::ZERO)
                .unwrap()
                .amount,
            d(graduated),
            "graduated {quantity}"
        );
        assert_eq!(
            rate(&Model::Volume(&tiers), d(quantity), 0, Decimal::ZERO)
                .unwrap()
                .amount,
            d(volume),
            "volume {quantity}"
        );
    }
}

#[test]
fn package_and_transform_quantity_examples() {
    // Lago package / Flexprice transform_quantity {divide_by: 1000, round: up|down}.
    let up = Model::Package {
        size: d("1000"),
        amount: d("0.50"),
        rounding: Rounding::Up,
    };
    let down = Model::Package {
        size: d("1000"),
        amount: d("0.50"),
        rounding: Rounding::Down,
    };
    for (quantity, included, up_amount, down_amount) in [
        ("2500", "0", "1.50", "1.00"),
        ("1", "0", "0.50", "0"),
        ("0", "0", "0", "0"),
        ("3000", "1000", "1.00", "1.00"),
    ] {
        assert_eq!(
            rate(&up, d(quantity), 0, d(included)).unwrap().amount,
            d(up_amount),
            "up {quantity}"
        );
        assert_eq!(
            rate(&down, d(quantity), 0, d(included)).unwrap().amount,
            d(down_amount),
            "down {quantity}"
        );
    }
    let zero = Model::Package {
        size: Decimal::ZERO,
        amount: d("1"),
        rounding: Rounding::Up,
    };
    assert_eq!(
        rate(&zero, d("5"), 0, Decimal::ZERO),
        Err(RatingError::ZeroPackage)
    );
}

#[test]
fn included_units_come_off_before_the_model() {
    let per_unit = Model::PerUnit {
        unit_amount: d("0.25"),
    };
    assert_eq!(
        rate(&per_unit, d("50"), 0, d("100")).unwrap().amount,
        Decimal::ZERO
    );
    assert_eq!(
        rate(&per_unit, d("150"), 0, d("100")).unwrap().amount,
        d("12.50")
    );
    assert_eq!(
        rate(&per_unit, d("-5"), 0, Decimal::ZERO)
            .unwrap()
            .billable_quantity,
        Decimal::ZERO
    );
}

#[test]
fn groups_are_rated_separately_and_their_sum_clamped() {
    let per_unit = Model::PerUnit {
        unit_amount: d("1"),
    };
    let groups = vec![("gpt-x", d("15"), 15), ("small", d("3"), 3)];
    let charge = rate_groups(&per_unit, d("5"), groups.clone(), None, None).unwrap();
    assert_eq!(charge.amount, d("10"), "5 included per group: 10 + 0");
    assert_eq!(charge.groups[1].1.amount, Decimal::ZERO);
    assert_eq!(
        rate_groups(&per_unit, d("5"), groups.clone(), Some(d("12")), None)
            .unwrap()
            .amount,
        d("12")
    );
    assert_eq!(
        rate_groups(&per_unit, d("5"), groups, None, Some(d("8")))
            .unwrap()
            .amount,
        d("8")
    );
    let nothing = rate_groups(
        &per_unit,
        Decimal::ZERO,
        Vec::<(&str, Decimal, u64)>::new(),
        Some(d("1.00")),
        None,
    )
    .unwrap();
    assert_eq!(
        nothing.amount,
        d("1.00"),
        "a minimum applies to an empty window too"
    );
}

#[test]
fn flat_fees_prorate_by_the_active_share() {
    assert_eq!(
        flat_fee(d("49.00"), true, 15 * 86400, 30 * 86400).unwrap(),
        d("24.50")
    );
    assert_eq!(
        flat_fee(d("49.00"), false, 15 * 86400, 30 * 86400).unwrap(),
        d("49.00")
    );
    assert_eq!(flat_fee(d("30"), true, 10, 30).unwrap(), d("10"));
    assert_eq!(flat_fee(d("30"), true, 40, 30).unwrap(), d("30"));
    let third = flat_fee(d("49"), true, 10, 30).unwrap();
    assert_eq!(
        crate::billing::money::round_to_currency(third, "USD"),
        d("16.33")
    );
}

#[test]
fn overflow_is_an_error_not_a_panic() {
    let per_unit = Model::PerUnit {
        unit_amount: Decimal::MAX,
    };
    assert_eq!(
        rate(&per_unit, d("10"), 0, Decimal::ZERO),
        Err(RatingError::Overflow)
    );
}

fn quantity() -> impl Strategy<Value = Decimal> {
    (0i64..10_000_000, 0u32..4).prop_map(|(m, s)| Decimal::new(m, s))
}

fn price() -> impl Strategy<Value = Decimal> {
    (0i64..100_000, 0u32..6).prop_map(|(m, s)| Decimal::new(m, s))
}

fn tiers() -> impl Strategy<Value = Vec<Tier>> {
    proptest::collection::vec((1i64..100_000, price(), price()), 1..6).prop_map(|specs| {
        let mut bound = Decimal::ZERO;
        let count = specs.len();
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (width, unit, flat))| {
                bound += Decimal::from(width);
                Tier {
                    up_to: (i + 1 < count).then_some(bound),
                    unit_amount: unit,
                    flat_amount: flat,
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn graduated_is_monotonic_in_quantity(tiers in tiers(), a in quantity(), b in quantity()) {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let model = Model::Graduated(&tiers);
        prop_assert!(rate(&model, low, 0, Decimal::ZERO).unwrap().amount <= rate(&model, high, 0, Decimal::ZERO).unwrap().amount);
    }

    #[test]
    fn one_unbounded_tier_is_per_unit(unit in price(), q in quantity(), included in quantity()) {
        let tiers = vec![Tier { up_to: None, unit_amount: unit, flat_amount: Decimal::ZERO }];
        prop_assert_eq!(
            rate(&Model::Graduated(&tiers), q, 0, included).unwrap().amount,
            rate(&Model::PerUnit { unit_amount: unit }, q, 0, included).unwrap().amount
        );
    }

    #[test]
    fn volume_and_graduated_agree_within_the_first_tier(tiers in tiers(), q in quantity()) {
        let first = tiers[0].up_to.unwrap_or(Decimal::MAX);
        let q = q.min(first);
        prop_assert_eq!(
            rate(&Model::Volume(&tiers), q, 0, Decimal::ZERO).unwrap().amount,
            rate(&Model::Graduated(&tiers), q, 0, Decimal::ZERO).unwrap().amount
        );
    }

    #[test]
    fn packages_of_one_are_per_unit_for_whole_quantities(amount in price(), q in 0i64..10_000_000, rounding in prop_oneof![Just(Rounding::Up), Just(Rounding::Down)]) {
        let q = Decimal::from(q);
        prop_assert_eq!(
            rate(&Model::Package { size: Decimal::ONE, amount, rounding }, q, 0, Decimal::ZERO).unwrap().amount,
            rate(&Model::PerUnit { unit_amount: amount }, q, 0, Decimal::ZERO).unwrap().amount
        );
    }

    #[test]
    fn included_units_never_make_a_charge_negative(tiers in tiers(), q in quantity(), included in quantity()) {
        for model in [Model::Graduated(&tiers), Model::Volume(&tiers), Model::PerUnit { unit_amount: tiers[0].unit_amount }] {
            let charge = rate(&model, q, 0, included).unwrap();
            prop_assert!(charge.amount >= Decimal::ZERO);
            prop_assert!(charge.billable_quantity <= q.max(Decimal::ZERO));
        }
    }

    #[test]
    fn graduated_tier_lines_add_up(tiers in tiers(), q in quantity()) {
        let charge = rate(&Model::Graduated(&tiers), q, 0, Decimal::ZERO).unwrap();
        let quantity: Decimal = charge.tiers.iter().map(|l| l.quantity).sum();
        let amount: Decimal = charge.tiers.iter().map(|l| l.amount).sum();
        prop_assert_eq!(quantity, charge.billable_quantity);
        prop_assert_eq!(amount, charge.amount);
    }

    #[test]
    fn minimum_and_maximum_clamp(amount in price(), low in price(), span in price()) {
        let high = low + span;
        let clamped = clamp(amount, Some(low), Some(high));
        prop_assert!(clamped >= low && clamped <= high);
        if amount >= low && amount <= high {
            prop_assert_eq!(clamped, amount);
        }
    }
}

#[test]
fn percentage_takes_its_rate_of_the_billable_quantity_and_a_fee_per_event_past_the_free_ones() {
    let model = Model::Percentage {
        rate: d("2.9"),
        fixed_amount: d("0.30"),
        free_events: 10,
    };
    // 2.9% of 1,000.00 = 29.00; 25 events, 10 free: 15 × 0.30 = 4.50.
    let charge = rate(&model, d("1000.00"), 25, Decimal::ZERO).unwrap();
    assert_eq!(charge.amount, d("33.50"));
    assert!(charge.tiers.is_empty());
    // Included units come off the quantity first; fewer events than free: no fee.
    let charge = rate(&model, d("1000.00"), 4, d("400")).unwrap();
    assert_eq!(
        (charge.billable_quantity, charge.amount),
        (d("600"), d("17.4"))
    );
}

proptest::proptest! {
    /// Against the formula, computed here the plainest way: rate% × quantity (past the
    /// included units) + fixed amount × max(0, events − free events).
    #[test]
    fn percentage_matches_its_formula(
        cents in 0i64..10_000_000_000,
        rate_bp in 0i64..10_000,
        fixed_cents in 0i64..1_000,
        events in 0u64..1_000_000,
        free in 0u64..1_000_000,
        included in 0i64..1_000_000,
    ) {
        let quantity = Decimal::new(cents, 2);
        let rate_pct = Decimal::new(rate_bp, 2);
        let fixed = Decimal::new(fixed_cents, 2);
        let included = Decimal::from(included);
        let model = Model::Percentage { rate: rate_pct, fixed_amount: fixed, free_events: free };
        let billable = if quantity > included { quantity - included } else { Decimal::ZERO };
        let charged_events = events.max(free) - free;
        let expected = billable * rate_pct / Decimal::from(100) + fixed * Decimal::from(charged_events);
        let got = rate(&model, quantity, events, included).unwrap().amount;
        proptest::prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_dynamic_charge_frees_the_first_included_units_at_their_own_prices() {
    // 3 units at 0.5, 4 at 2, 10 at 0.1; 5 included: the 3 first and 2 of the next are free.
    let samples = [("3", "0.5"), ("4", "2"), ("10", "0.1")].map(|(v, p)| PricedSample {
        value: d(v),
        unit_amount: d(p),
    });
    let share = included_share(samples, d("5")).unwrap();
    assert_eq!(share, d("5.5"), "3 × 0.5 + 2 × 2");
    let priced = d("1.5") + d("8") + d("1");
    let charge = rate(
        &Model::Dynamic(DynamicAmounts {
            priced,
            included: share,
        }),
        d("17"),
        3,
        d("5"),
    )
    .unwrap();
    assert_eq!(
        (charge.billable_quantity, charge.amount),
        (d("12"), d("5.0"))
    );
    assert_eq!(
        included_share(samples, Decimal::ZERO).unwrap(),
        Decimal::ZERO
    );
    assert_eq!(included_share(samples, d("100")).unwrap(), priced);
}

proptest::proptest! {
    /// Against each event's own billable units, computed the other way round: what is left of
    /// an event once the units before it have used up the included ones, at its unit amount.
    #[test]
    fn dynamic_matches_the_sum_of_each_events_billable_units(
        events in proptest::collection::vec((0i64..100_000, 0i64..1_000_000), 0..40),
        included in 0i64..2_000_000,
    ) {
        let samples: Vec<PricedSample> = events
            .iter()
            .map(|&(hundredths, micros)| PricedSample {
                value: Decimal::new(hundredths, 2),
                unit_amount: Decimal::new(micros, 6),
            })
            .collect();
        let included = Decimal::new(included, 2);
        let mut before = Decimal::ZERO;
        let mut expected = Decimal::ZERO;
        for s in &samples {
            let after = before + s.value;
            let billable = if after <= included {
                Decimal::ZERO
            } else if before >= included {
                s.value
            } else {
                after - included
            };
            expected += billable * s.unit_amount;
            before = after;
        }
        let quantity: Decimal = samples.iter().map(|s| s.value).sum();
        let priced: Decimal = samples.iter().map(|s| s.value * s.unit_amount).sum();
        let share = included_share(samples.iter().copied(), included).unwrap();
        let model = Model::Dynamic(DynamicAmounts { priced, included: share });
        let charge = rate(&model, quantity, samples.len() as u64, included).unwrap();
        proptest::prop_assert_eq!(charge.amount, expected);
        proptest::prop_assert_eq!(
            charge.billable_quantity,
            (quantity - included).max(Decimal::ZERO)
        );
    }
}
