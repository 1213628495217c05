//! What a `weighted_sum` meter measures: the integral over a window of a value that
//! holds from each sample until the next one of its series. Pure, exact: the integral is summed
//! in value × milliseconds (exact decimals) and divided once by the unit's length.

use rust_decimal::Decimal;

use crate::billing::rating::RatingError;

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

/// What the samples of one series inside one hour (or any span `[start_ms, end_ms)`) give a
/// read that takes the span whole: each sample's value × ms held inside the span (until the
/// next sample of the series, or the span's end) summed per group, the first sample's time (the
/// value carried in holds until then) and the last sample (the value carried out).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanState<G> {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Per group, in the order of the groups' first samples: value × ms, samples.
    pub parts: Vec<(G, Decimal, u64)>,
    pub first_ms: i64,
    pub last_ms: i64,
    pub last_value: Decimal,
    pub last_group: G,
}

/// The state of the span `[start_ms, end_ms)` from its samples (time, value, group) in time
/// order; `None` without samples.
pub fn span_state<G: Clone + PartialEq>(
    samples: &[(i64, Decimal, G)],
    (start_ms, end_ms): (i64, i64),
) -> Result<Option<SpanState<G>>, RatingError> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Ok(None);
    };
    debug_assert!(samples.iter().all(|s| start_ms <= s.0 && s.0 < end_ms));
    let held: Vec<HeldValue> = samples
        .iter()
        .map(|s| HeldValue {
            since_ms: s.0,
            value: s.1,
        })
        .collect();
    let mut parts: Vec<(G, Decimal, u64)> = Vec::new();
    for (sample, value_ms) in samples
        .iter()
        .zip(contributions(&held, (start_ms, end_ms))?)
    {
        match parts.iter_mut().find(|p| p.0 == sample.2) {
            Some(part) => {
                part.1 = part.1.checked_add(value_ms).ok_or(RatingError::Overflow)?;
                part.2 += 1;
            }
            None => parts.push((sample.2.clone(), value_ms, 1)),
        }
    }
    Ok(Some(SpanState {
        start_ms,
        end_ms,
        parts,
        first_ms: first.0,
        last_ms: last.0,
        last_value: last.1,
        last_group: last.2.clone(),
    }))
}

/// One thing a series' integral is read from, in time order: a sample (`counted` unless it is
/// the value carried in from before the read), or a span's state taken whole.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a, G> {
    Sample {
        ts_ms: i64,
        value: Decimal,
        group: &'a G,
        counted: bool,
    },
    Span(&'a SpanState<G>),
}

/// Integrates one series' `pieces` (in time order, spans disjoint from the samples) over
/// `windows` (sorted, disjoint; no window starts strictly inside a span, nor ends there),
/// calling `add(window index, group, value × ms, samples)` for each window and group that a
/// sample or a span adds to: a group is named in a window where one of its samples falls or
/// its value is in force at the window's start, even for nothing.
pub fn integrate_pieces<'a, G: 'a>(
    pieces: impl IntoIterator<Item = Piece<'a, G>>,
    windows: &[(i64, i64)],
    mut add: impl FnMut(usize, &'a G, Decimal, u64) -> Result<(), RatingError>,
) -> Result<(), RatingError> {
    let Some(&(_, last_end)) = windows.last() else {
        return Ok(());
    };
    // The value in force: (value, group, time of its sample), and since when it counts.
    let mut held: Option<(Decimal, &'a G, i64)> = None;
    let mut since = i64::MIN;
    let window_of = |ts: i64| {
        let i = windows.partition_point(|w| w.1 <= ts);
        (i < windows.len() && windows[i].0 <= ts).then_some(i)
    };
    let hold = |held: Option<(Decimal, &'a G, i64)>,
                since: i64,
                until: i64,
                add: &mut dyn FnMut(usize, &'a G, Decimal, u64) -> Result<(), RatingError>|
     -> Result<(), RatingError> {
        let Some((value, group, ts)) = held else {
            return Ok(());
        };
        let mut i = windows.partition_point(|w| w.1 <= ts);
        while i < windows.len() && windows[i].0 <= until {
            let (start, end) = windows[i];
            let millis = end.min(until) - start.max(since);
            if millis > 0 || start > ts {
                let value_ms = value
                    .checked_mul(Decimal::from(millis.max(0)))
                    .ok_or(RatingError::Overflow)?;
                add(i, group, value_ms, 0)?;
            }
            i += 1;
        }
        Ok(())
    };
    for piece in pieces {
        match piece {
            Piece::Sample {
                ts_ms,
                value,
                group,
                counted,
            } => {
                hold(held, since, ts_ms, &mut add)?;
                if let (true, Some(i)) = (counted, window_of(ts_ms)) {
                    add(i, group, Decimal::ZERO, 1)?;
                }
                held = Some((value, group, ts_ms));
                since = ts_ms;
            }
            Piece::Span(state) => {
                hold(held, since, state.first_ms, &mut add)?;
                if let Some(i) = window_of(state.start_ms) {
                    for (group, value_ms, samples) in &state.parts {
                        add(i, group, *value_ms, *samples)?;
                    }
                }
                held = Some((state.last_value, &state.last_group, state.last_ms));
                since = state.end_ms;
            }
        }
    }
    hold(held, since, last_end, &mut add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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

    /// The series' integral per window and group as the samples alone give it: per window,
    /// the sample in force at its start and those inside it, each adding what it holds there.
    fn by_samples(
        series: &[(i64, Decimal, u8)],
        windows: &[(i64, i64)],
    ) -> BTreeMap<(usize, u8), (Decimal, u64)> {
        let held: Vec<HeldValue> = series
            .iter()
            .map(|s| HeldValue {
                since_ms: s.0,
                value: s.1,
            })
            .collect();
        let mut out = BTreeMap::new();
        for (i, &window) in windows.iter().enumerate() {
            let first = held.partition_point(|h| h.since_ms < window.0);
            let last = held.partition_point(|h| h.since_ms < window.1);
            if last == 0 {
                continue;
            }
            let first = first.saturating_sub(1);
            for (sample, value_ms) in series[first..last]
                .iter()
                .zip(contributions(&held[first..last], window).unwrap())
            {
                let total: &mut (Decimal, u64) = out.entry((i, sample.2)).or_default();
                total.0 += value_ms;
                total.1 += u64::from(sample.0 >= window.0);
            }
        }
        out
    }

    /// The same from pieces: the sample in force before the first window, then the samples,
    /// except those of the spans in `spans` (whole, none cut by a window), read from their
    /// states.
    fn by_pieces(
        series: &[(i64, Decimal, u8)],
        windows: &[(i64, i64)],
        spans: &[(i64, i64)],
    ) -> BTreeMap<(usize, u8), (Decimal, u64)> {
        let from = windows[0].0;
        let states: Vec<SpanState<u8>> = spans
            .iter()
            .filter_map(|&span| {
                let inside: Vec<(i64, Decimal, u8)> = series
                    .iter()
                    .filter(|s| span.0 <= s.0 && s.0 < span.1)
                    .cloned()
                    .collect();
                span_state(&inside, span).unwrap()
            })
            .collect();
        let carried = series.iter().rposition(|s| s.0 < from);
        let mut pieces: Vec<(i64, Piece<'_, u8>)> = series
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                (s.0 >= from || Some(*i) == carried)
                    && !spans.iter().any(|sp| sp.0 <= s.0 && s.0 < sp.1)
            })
            .map(|(_, s)| {
                let piece = Piece::Sample {
                    ts_ms: s.0,
                    value: s.1,
                    group: &s.2,
                    counted: s.0 >= from,
                };
                (s.0, piece)
            })
            .collect();
        pieces.extend(states.iter().map(|st| (st.start_ms, Piece::Span(st))));
        pieces.sort_by_key(|p| p.0);
        let mut out: BTreeMap<(usize, u8), (Decimal, u64)> = BTreeMap::new();
        integrate_pieces(pieces.into_iter().map(|p| p.1), windows, |i, g, v, n| {
            let total = out.entry((i, *g)).or_default();
            total.0 += v;
            total.1 += n;
            Ok(())
        })
        .unwrap();
        out
    }

    proptest! {
        /// Spans read from their states give what their samples give, window by window and
        /// group by group (the groups named for nothing included).
        #[test]
        fn spans_read_whole_give_what_their_samples_give(
            mut points in proptest::collection::vec((-300i64..1_500, -50i64..500, 0u8..3), 0..40),
            span in 1i64..120,
            cuts in proptest::collection::vec(0i64..12, 1..5),
            taken in proptest::collection::vec(any::<bool>(), 12),
        ) {
            points.sort_by_key(|p| p.0);
            let series: Vec<(i64, Decimal, u8)> =
                points.iter().map(|&(t, v, g)| (t, Decimal::from(v), g)).collect();
            // Windows on span boundaries: cuts are span counts from 0.
            let mut edges: Vec<i64> = cuts.iter().map(|c| c * span).collect();
            edges.push(12 * span);
            edges.sort_unstable();
            edges.dedup();
            let windows: Vec<(i64, i64)> = edges.windows(2).map(|w| (w[0], w[1])).collect();
            prop_assume!(!windows.is_empty());
            let spans: Vec<(i64, i64)> = (0..12)
                .filter(|&k| taken[k as usize])
                .map(|k| (k * span, (k + 1) * span))
                .filter(|sp| sp.0 >= windows[0].0 && sp.1 <= windows[windows.len() - 1].1)
                .collect();
            let expected = by_samples(&series, &windows);
            prop_assert_eq!(by_pieces(&series, &windows, &[]), expected.clone());
            prop_assert_eq!(by_pieces(&series, &windows, &spans), expected);
        }
    }
}
