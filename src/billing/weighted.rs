//! Time-weighted quantities (`weighted_sum` meters): the integral over a window of a value that
//! holds from each sample until the next one of its series. Pure, exact: the integral is summed
//! in value × milliseconds (exact decimals) and divided once by the unit's length.

use rust_decimal::Decimal;

use super::rating::RatingError;

/// A value that holds from `since_ms` (epoch ms) until the next one of its series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldValue {
    pub since_ms: i64,
    pub value: Decimal,
}

/// What each value of `series` contributes over `[from_ms, to_ms)`, in value × ms, in the
/// series' order. `series` is in time order (equal times in their counting order: an earlier
/// one holds for no time); a value before `from_ms` holds from `from_ms` (the value carried
/// in), one at or after `to_ms` contributes nothing. Before the first value the series is 0.
pub fn contributions(
    series: &[HeldValue],
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<Decimal>, RatingError> {
    debug_assert!(series.windows(2).all(|w| w[0].since_ms <= w[1].since_ms));
    let mut out = Vec::with_capacity(series.len());
    for (i, held) in series.iter().enumerate() {
        let until = series.get(i + 1).map_or(to_ms, |next| next.since_ms);
        let (start, end) = (held.since_ms.max(from_ms), until.min(to_ms));
        let millis = Decimal::from(end.saturating_sub(start).max(0));
        out.push(
            held.value
                .checked_mul(millis)
                .ok_or(RatingError::Overflow)?,
        );
    }
    Ok(out)
}

/// An integral in value × ms in value × units of `unit_ms` milliseconds.
pub fn in_units(value_ms: Decimal, unit_ms: i64) -> Result<Decimal, RatingError> {
    debug_assert!(unit_ms > 0);
    value_ms
        .checked_div(Decimal::from(unit_ms))
        .map(|q| q.normalize())
        .ok_or(RatingError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;

    fn held(since_ms: i64, value: i64) -> HeldValue {
        HeldValue {
            since_ms,
            value: Decimal::from(value),
        }
    }

    fn integral(series: &[HeldValue], window: (i64, i64), unit_ms: i64) -> Decimal {
        let total = contributions(series, window).unwrap().into_iter().sum();
        in_units(total, unit_ms).unwrap()
    }

    #[test]
    fn a_value_holds_until_the_next_and_is_cut_at_the_window_edges() {
        // 10 GB from 00:30, 4 GB from 01:15; window 01:00 to 02:00.
        let series = [held(HOUR / 2, 10), held(HOUR + HOUR / 4, 4)];
        let q = integral(&series, (HOUR, 2 * HOUR), HOUR);
        assert_eq!(q, Decimal::new(55, 1)); // 10 × 0.25 + 4 × 0.75
    }

    #[test]
    fn a_window_without_samples_bills_the_value_carried_in() {
        let series = [held(-5 * HOUR, 3)];
        assert_eq!(integral(&series, (0, 24 * HOUR), HOUR), Decimal::from(72));
        assert_eq!(
            integral(&series, (0, 24 * HOUR), 24 * HOUR),
            Decimal::from(3)
        );
        assert_eq!(integral(&[], (0, 24 * HOUR), HOUR), Decimal::ZERO);
    }

    #[test]
    fn samples_at_or_after_the_window_end_contribute_nothing() {
        let series = [held(0, 2), held(HOUR, 100), held(2 * HOUR, 7)];
        assert_eq!(
            contributions(&series, (0, HOUR)).unwrap(),
            vec![Decimal::from(2 * HOUR), Decimal::ZERO, Decimal::ZERO]
        );
    }

    #[test]
    fn one_millisecond_is_divided_once() {
        let series = [held(0, 1)];
        let q = integral(&series, (0, 1), HOUR);
        assert_eq!(q, Decimal::ONE / Decimal::from(HOUR));
    }

    fn value_at(series: &[HeldValue], ms: i64) -> Decimal {
        series
            .iter()
            .rev()
            .find(|h| h.since_ms <= ms)
            .map_or(Decimal::ZERO, |h| h.value)
    }

    proptest! {
        /// Against the value in force summed millisecond by millisecond.
        #[test]
        fn the_integral_is_the_value_in_force_summed_per_millisecond(
            mut points in proptest::collection::vec((-2_000i64..6_000, -500i64..5_000, 0u32..4), 0..12),
            from in -1_000i64..3_000,
            len in 0i64..3_000,
        ) {
            points.sort_by_key(|p| p.0);
            let series: Vec<HeldValue> = points
                .iter()
                .map(|&(since_ms, mantissa, scale)| HeldValue { since_ms, value: Decimal::new(mantissa, scale) })
                .collect();
            let to = from + len;
            let reference: Decimal = (from..to).map(|ms| value_at(&series, ms)).sum();
            let total: Decimal = contributions(&series, (from, to)).unwrap().into_iter().sum();
            prop_assert_eq!(total, reference);
            let unit = 60_000;
            prop_assert_eq!(in_units(total, unit).unwrap(), (reference / Decimal::from(unit)).normalize());
        }

        /// Splitting a window anywhere leaves its integral in value × ms unchanged.
        #[test]
        fn the_integral_is_additive_over_adjacent_windows(
            mut points in proptest::collection::vec((-10 * HOUR..10 * HOUR, -500i64..5_000), 0..12),
            from in -5 * HOUR..5 * HOUR,
            a in 0i64..5 * HOUR,
            b in 0i64..5 * HOUR,
        ) {
            points.sort_by_key(|p| p.0);
            let series: Vec<HeldValue> = points.iter().map(|&(t, v)| held(t, v)).collect();
            let sum = |w: (i64, i64)| -> Decimal { contributions(&series, w).unwrap().into_iter().sum() };
            prop_assert_eq!(sum((from, from + a + b)), sum((from, from + a)) + sum((from + a, from + a + b)));
        }
    }
}
