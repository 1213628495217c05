//! Where each piece of a window is read from: whole sealed UTC days from the day grain (but
//! days re-opened by late events or repairs, sql/0015), other whole UTC hours from the hour
//! rollup, the ragged edges (under an hour each) from samples, and hours the rollup may lack
//! (marked in `rollup_dirty`, sql/0007) from samples too.

use crate::store::as_of_sql::late_hours_statement;
use crate::store::combined_sql::{Meters, Windows};
use crate::store::usage_sql::Part;
use crate::store::{DayParts, Store, StoreError};

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

fn ceil_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit + if ms.rem_euclid(unit) == 0 { 0 } else { unit }
}

fn floor_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit
}

/// Splits `[from, to)`: whole hours from the hour rollup, the (under an hour) edges from
/// samples; with `hours` false (a series whose windows do not align to UTC hours), all from
/// samples. The parts tile the window exactly.
pub fn split(from: i64, to: i64, hours: bool) -> Vec<Part> {
    if from >= to {
        return vec![];
    }
    let (h0, h1) = (ceil_to(from, HOUR_MS), floor_to(to, HOUR_MS));
    if !hours || h0 >= h1 {
        return vec![Part::Samples(from, to)];
    }
    let mut parts = Vec::with_capacity(3);
    if from < h0 {
        parts.push(Part::Samples(from, h0));
    }
    parts.push(Part::Hours(h0, h1));
    if h1 < to {
        parts.push(Part::Samples(h1, to));
    }
    parts
}

/// The whole hours inside `[from, to)`, if any.
pub fn whole_hours(from: i64, to: i64) -> Option<(i64, i64)> {
    split(from, to, true)
        .into_iter()
        .find_map(|part| match part {
            Part::Hours(a, b) => Some((a, b)),
            Part::Days(..) | Part::Samples(..) => None,
        })
}

/// Reads the whole UTC days of the hour parts that the day grain holds from it: days before its
/// horizon but the re-opened ones. The parts still tile the same window.
pub fn with_days(parts: Vec<Part>, days: &DayParts) -> Vec<Part> {
    let mut out = Vec::with_capacity(parts.len() + 2);
    for part in parts {
        let Part::Hours(from, to) = part else {
            out.push(part);
            continue;
        };
        let (d0, d1) = (
            ceil_to(from, DAY_MS),
            floor_to(to, DAY_MS).min(days.sealed_until_ms),
        );
        if d0 >= d1 {
            out.push(part);
            continue;
        }
        out.push(Part::Hours(from, d0));
        let mut start = d0;
        for &day in days.reopened.iter().filter(|&&d| d >= d0 && d < d1) {
            out.push(Part::Days(start, day));
            out.push(Part::Hours(day, day + DAY_MS));
            start = day + DAY_MS;
        }
        out.push(Part::Days(start, d1));
        out.push(Part::Hours(d1, to));
    }
    coalesce(out)
}

/// `parts` with everything but the day grain's days read from samples: for a customer whose
/// samples outside those days are few, one pass over them costs less than the hour rollup and
/// the edges apart. The parts still tile the same window.
pub fn days_and_samples(parts: Vec<Part>) -> Vec<Part> {
    let parts = parts
        .into_iter()
        .map(|part| match part {
            Part::Hours(a, b) => Part::Samples(a, b),
            other => other,
        })
        .collect();
    coalesce(parts)
}

/// How long the parts of `parts` not read from the day grain last before `now` (ms).
pub fn beyond_days(parts: &[Part], now: i64) -> i64 {
    parts
        .iter()
        .filter(|p| !matches!(p, Part::Days(..)))
        .map(|&p| {
            let (a, b) = bounds(p);
            (b.min(now) - a).max(0)
        })
        .sum()
}

/// Drops empty parts and joins neighbours read from the same table.
fn coalesce(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    for part in parts {
        let (from, to) = bounds(part);
        if from >= to {
            continue;
        }
        match (out.last_mut(), part) {
            (Some(Part::Days(_, end)), Part::Days(a, b))
            | (Some(Part::Hours(_, end)), Part::Hours(a, b))
            | (Some(Part::Samples(_, end)), Part::Samples(a, b))
                if *end == a =>
            {
                *end = b;
            }
            _ => out.push(part),
        }
    }
    out
}

fn bounds(part: Part) -> (i64, i64) {
    match part {
        Part::Days(a, b) | Part::Hours(a, b) | Part::Samples(a, b) => (a, b),
    }
}

/// Takes `dirty` hours (epoch ms, sorted) out of the rollup parts and reads them from samples
/// instead (a day of the day grain holding one is read by the hour); the parts still tile the
/// same window.
pub fn carve(parts: Vec<Part>, dirty: &[i64]) -> Vec<Part> {
    if dirty.is_empty() {
        return parts;
    }
    let reopened: Vec<i64> = {
        let mut days: Vec<i64> = dirty.iter().map(|&h| floor_to(h, DAY_MS)).collect();
        days.dedup();
        days
    };
    let parts = parts
        .into_iter()
        .flat_map(|part| match part {
            Part::Days(from, to) => {
                let grain = DayParts {
                    sealed_until_ms: to,
                    reopened: reopened.clone(),
                };
                with_days(vec![Part::Hours(from, to)], &grain)
            }
            other => vec![other],
        })
        .collect::<Vec<Part>>();
    let mut out = Vec::with_capacity(parts.len() + 2 * dirty.len());
    for part in parts {
        let Part::Hours(start, to) = part else {
            out.push(part);
            continue;
        };
        let mut from = start;
        for &hour in dirty.iter().filter(|&&h| h >= start && h < to) {
            if from < hour {
                out.push(Part::Hours(from, hour));
            }
            out.push(Part::Samples(hour, hour + HOUR_MS));
            from = hour + HOUR_MS;
        }
        if from < to {
            out.push(Part::Hours(from, to));
        }
    }
    out
}

/// The parts of `[from_ms, to_ms)` of one meter (one customer's, or all customers'), with
/// hours the rollup may lack read from samples; with `days`, whole days from the day grain.
pub async fn parts_of(
    store: &Store,
    (tenant, meter, customer): (&str, &str, Option<&str>),
    (from_ms, to_ms): (i64, i64),
    (hours, days): (bool, bool),
) -> Result<Vec<Part>, StoreError> {
    let mut parts = split(from_ms, to_ms, hours);
    if !parts.iter().any(|p| matches!(p, Part::Hours(..))) {
        return Ok(parts);
    }
    if days {
        let grain = store.day_parts(tenant, customer, (from_ms, to_ms)).await?;
        parts = with_days(parts, &grain);
    }
    let dirty = store
        .dirty_hours(tenant, meter, customer, from_ms, to_ms)
        .await?;
    Ok(carve(parts, &dirty))
}

/// The parts of a read of `meters` of one customer over `[from_ms, to_ms)` as of `as_of_ms`:
/// whole sealed days from the day grain and whole hours from the rollup where they hold no
/// sample ingested after that moment; hours that do (and hours marked for repair) and the edges
/// from samples, which the read filters by when they were ingested.
pub async fn parts_as_of(
    store: &Store,
    (tenant, customer): (&str, &str),
    (from_ms, to_ms): (i64, i64),
    as_of_ms: i64,
    meters: &Meters<'_>,
) -> Result<Vec<Part>, StoreError> {
    let parts = split(from_ms, to_ms, true);
    if !parts.iter().any(|p| matches!(p, Part::Hours(..))) {
        return Ok(parts);
    }
    let grain = store
        .day_parts(tenant, Some(customer), (from_ms, to_ms))
        .await?;
    let parts = with_days(parts, &grain);
    let statement = late_hours_statement(tenant, customer, (from_ms, to_ms), as_of_ms, meters);
    let mut hours = store.late_hours(&statement).await?;
    for &(meter, _) in meters {
        let dirty = store
            .dirty_hours(tenant, meter, Some(customer), from_ms, to_ms)
            .await?;
        hours.extend(dirty);
    }
    hours.sort_unstable();
    hours.dedup();
    Ok(carve(parts, &hours))
}

/// The windows of a read of several customers, each with its whole hours.
pub fn windows_of<'a>(asked: &[(&'a str, (i64, i64))]) -> Windows<'a> {
    let mut windows = Windows::default();
    for &(customer, (from, to)) in asked {
        windows.push(customer, (from, to), whole_hours(from, to));
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dirty_hours_are_read_from_samples_and_the_parts_still_tile() {
        let parts = split(HOUR_MS - 5, 5 * HOUR_MS + 7, true);
        let carved = carve(parts, &[0, HOUR_MS, 3 * HOUR_MS, 5 * HOUR_MS]);
        assert_eq!(
            carved,
            vec![
                Part::Samples(HOUR_MS - 5, HOUR_MS),
                Part::Samples(HOUR_MS, 2 * HOUR_MS),
                Part::Hours(2 * HOUR_MS, 3 * HOUR_MS),
                Part::Samples(3 * HOUR_MS, 4 * HOUR_MS),
                Part::Hours(4 * HOUR_MS, 5 * HOUR_MS),
                Part::Samples(5 * HOUR_MS, 5 * HOUR_MS + 7),
            ]
        );
        assert_eq!(
            carve(split(0, 2 * HOUR_MS, true), &[]),
            vec![Part::Hours(0, 2 * HOUR_MS)]
        );
    }

    #[test]
    fn aligned_windows_read_only_the_rollup() {
        assert_eq!(
            split(0, 3 * HOUR_MS, true),
            vec![Part::Hours(0, 3 * HOUR_MS)]
        );
    }

    #[test]
    fn ragged_windows_read_their_edges_from_samples() {
        let (from, to) = (HOUR_MS - 90_500, 3 * HOUR_MS + 61_000);
        assert_eq!(
            split(from, to, true),
            vec![
                Part::Samples(from, HOUR_MS),
                Part::Hours(HOUR_MS, 3 * HOUR_MS),
                Part::Samples(3 * HOUR_MS, to)
            ]
        );
        assert_eq!(split(10, 20, true), vec![Part::Samples(10, 20)]);
        assert_eq!(
            split(0, 3 * HOUR_MS, false),
            vec![Part::Samples(0, 3 * HOUR_MS)]
        );
        assert!(split(700, 700, true).is_empty());
    }

    #[test]
    fn several_customers_windows_keep_each_ones_whole_hours() {
        let windows = windows_of(&[("a", (HOUR_MS - 5, 3 * HOUR_MS + 5)), ("b", (10, 20))]);
        assert_eq!(
            (windows.h0.clone(), windows.h1.clone()),
            (vec![HOUR_MS, 0], vec![3 * HOUR_MS, 0])
        );
        assert_eq!(windows.hours(), Some((HOUR_MS, 3 * HOUR_MS)));
    }

    proptest! {
        #[test]
        fn parts_tile_the_window(from in -10_000_000_000i64..10_000_000_000, len in 0i64..500_000_000, hours in any::<bool>()) {
            let to = from + len;
            let parts = split(from, to, hours);
            let mut at = from;
            for part in &parts {
                let (a, b) = match *part {
                    Part::Hours(a, b) => {
                        prop_assert!(a % HOUR_MS == 0 && b % HOUR_MS == 0);
                        (a, b)
                    }
                    Part::Samples(a, b) => (a, b),
                    Part::Days(..) => unreachable!("split reads no day"),
                };
                prop_assert_eq!(a, at);
                prop_assert!(a < b);
                at = b;
            }
            prop_assert_eq!(at, if parts.is_empty() { from } else { to });
        }
    }

    #[test]
    fn sealed_days_are_read_from_the_day_grain_but_reopened_ones() {
        let from = DAY_MS + 5 * HOUR_MS + 77;
        let to = 6 * DAY_MS + 2 * HOUR_MS;
        let grain = DayParts {
            sealed_until_ms: 5 * DAY_MS,
            reopened: vec![3 * DAY_MS, 9 * DAY_MS],
        };
        assert_eq!(
            with_days(split(from, to, true), &grain),
            vec![
                Part::Samples(from, DAY_MS + 6 * HOUR_MS),
                Part::Hours(DAY_MS + 6 * HOUR_MS, 2 * DAY_MS),
                Part::Days(2 * DAY_MS, 3 * DAY_MS),
                Part::Hours(3 * DAY_MS, 4 * DAY_MS),
                Part::Days(4 * DAY_MS, 5 * DAY_MS),
                Part::Hours(5 * DAY_MS, to),
            ]
        );
        let nothing_sealed = DayParts::default();
        assert_eq!(
            with_days(split(from, to, true), &nothing_sealed),
            split(from, to, true)
        );
    }

    #[test]
    fn days_and_samples_keep_the_grains_days_and_read_the_rest_from_samples() {
        let from = DAY_MS + 5 * HOUR_MS + 77;
        let to = 6 * DAY_MS + 2 * HOUR_MS + 5;
        let grain = DayParts {
            sealed_until_ms: 5 * DAY_MS,
            reopened: vec![3 * DAY_MS],
        };
        let parts = days_and_samples(with_days(split(from, to, true), &grain));
        assert_eq!(
            parts,
            vec![
                Part::Samples(from, 2 * DAY_MS),
                Part::Days(2 * DAY_MS, 3 * DAY_MS),
                Part::Samples(3 * DAY_MS, 4 * DAY_MS),
                Part::Days(4 * DAY_MS, 5 * DAY_MS),
                Part::Samples(5 * DAY_MS, to),
            ]
        );
        // The past of what samples hold: the two partial days and the re-opened one.
        assert_eq!(beyond_days(&parts, to), to - from - 2 * DAY_MS);
        assert_eq!(
            beyond_days(&parts, 5 * DAY_MS + 7),
            (2 * DAY_MS - from) + DAY_MS + 7
        );
        assert_eq!(beyond_days(&[Part::Samples(10, 20)], 5), 0);
    }

    #[test]
    fn a_dirty_hour_sends_its_day_back_to_hours() {
        let grain = DayParts {
            sealed_until_ms: 3 * DAY_MS,
            reopened: vec![],
        };
        let parts = with_days(split(0, 3 * DAY_MS, true), &grain);
        assert_eq!(parts, vec![Part::Days(0, 3 * DAY_MS)]);
        let dirty = DAY_MS + 4 * HOUR_MS;
        assert_eq!(
            carve(parts, &[dirty]),
            vec![
                Part::Days(0, DAY_MS),
                Part::Hours(DAY_MS, dirty),
                Part::Samples(dirty, dirty + HOUR_MS),
                Part::Hours(dirty + HOUR_MS, 2 * DAY_MS),
                Part::Days(2 * DAY_MS, 3 * DAY_MS),
            ]
        );
    }

    proptest! {
        #[test]
        fn parts_with_days_and_dirty_hours_tile_the_window(
            from in 0i64..40 * DAY_MS,
            len in 0i64..40 * DAY_MS,
            sealed_days in 0i64..60,
            reopened in proptest::collection::btree_set(0i64..60, 0..6),
            dirty in proptest::collection::btree_set(0i64..60 * 24, 0..6),
        ) {
            let to = from + len;
            let grain = DayParts {
                sealed_until_ms: sealed_days * DAY_MS,
                reopened: reopened.iter().map(|d| d * DAY_MS).collect(),
            };
            let dirty: Vec<i64> = dirty.iter().map(|h| h * HOUR_MS).collect();
            let parts = carve(with_days(split(from, to, true), &grain), &dirty);
            let mut at = from;
            for part in &parts {
                let (a, b) = bounds(*part);
                prop_assert_eq!(a, at);
                prop_assert!(a < b);
                match *part {
                    Part::Days(a, b) => {
                        prop_assert!(a % DAY_MS == 0 && b % DAY_MS == 0 && b <= grain.sealed_until_ms);
                        prop_assert!(grain.reopened.iter().all(|&d| d < a || d >= b));
                        prop_assert!(dirty.iter().all(|&h| h < a || h >= b));
                    }
                    Part::Hours(a, b) => {
                        prop_assert!(a % HOUR_MS == 0 && b % HOUR_MS == 0);
                        prop_assert!(dirty.iter().all(|&h| h < a || h >= b));
                    }
                    Part::Samples(..) => {}
                }
                at = b;
            }
            prop_assert_eq!(at, if parts.is_empty() { from } else { to });
        }
    }
}
