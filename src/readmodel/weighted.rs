//! The quantities of `weighted_sum` meters, integrated exactly (`domain::weighted`) from each
//! series' whole days and hours in the weighted grain (`store::weighted_grain`, closed days)
//! and its samples around them (the value carried in and those outside those spans,
//! `store::weighted_sql`); each sample's time is counted in the group of the read's `group_by`
//! that sample carries. Never from memory nor the hour rollup, whose states do not say when in
//! the hour each value started to hold.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::UsageReader;
use super::report::UsageError;
use chrono::{DateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::billing::period::{Anchor, Cadence, Interval};
use crate::billing::rating::RatingError;
use crate::domain::meter::WeightUnit;
use crate::domain::weighted::{Piece, SpanState, in_units, integrate_pieces};
use crate::store::series_sql::{SeriesPoint, SeriesQuery, WindowSize};
use crate::store::usage_sql::GroupUsage;
use crate::store::weighted_grain::{FullGroup, GrainHours, WeightedSpan, spans_statement};
use crate::store::weighted_sql::{WeightedSample, WeightedScope, weighted_statement};

/// One customer's and group's integral and the events inside the window.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedUsage {
    pub customer: String,
    pub usage: GroupUsage,
}

/// Per window (its index), customer and group: value × ms and the samples inside the window.
type Totals = BTreeMap<(usize, String, Vec<String>), (Decimal, u64)>;

/// The integral of `w` in value × `unit`, per customer and group; a group with no sample in
/// the window but a value carried in has its events count at 0.
pub async fn weighted_usage(
    reader: &UsageReader,
    w: &WeightedScope<'_>,
    unit: WeightUnit,
) -> Result<Vec<WeightedUsage>, UsageError> {
    let totals = integrals(reader, w, &[(w.from_ms, w.to_ms)]).await?;
    usages(totals, unit)
}

/// The totals of one window, per customer and group, in value × `unit`.
fn usages(totals: Totals, unit: WeightUnit) -> Result<Vec<WeightedUsage>, UsageError> {
    totals
        .into_iter()
        .map(|((_, customer, group), total)| {
            let usage = group_usage(group, total, unit)?;
            Ok(WeightedUsage { customer, usage })
        })
        .collect()
}

/// A group's total (value × ms, samples) in value × `unit`.
fn group_usage(
    group: Vec<String>,
    (value_ms, count): (Decimal, u64),
    unit: WeightUnit,
) -> Result<GroupUsage, UsageError> {
    Ok(GroupUsage {
        group,
        value: in_units(value_ms, unit.millis())?,
        count,
    })
}

/// The integrals of `w` over `windows` (sorted, disjoint, inside `w`'s bounds), from each
/// store that holds its customers: whole days and hours from the weighted grain where it
/// covers them and no window starts or ends inside them (reads as of a moment, or narrowed by a filter,
/// take none), the rest from the samples.
async fn integrals(
    reader: &UsageReader,
    w: &WeightedScope<'_>,
    windows: &[(i64, i64)],
) -> Result<Totals, UsageError> {
    let mut totals = Totals::new();
    let (tenant, customer, meter) = (w.scope.tenant, w.scope.customer, w.scope.meter);
    let usable = w.scope.as_of_ms.is_none() && w.scope.filters.is_empty();
    for store in reader.stores_for(tenant, customer) {
        // A plan is confirmed beside its statements (the meter's record it was made from is
        // still the newest). Twice at most from the grain: a record that moved is replaced by
        // the one the confirmation read; should it move again meanwhile, the third read takes
        // only samples.
        let mut attempt = 0;
        let (samples, spans) = loop {
            let plan = match usable && attempt < 2 {
                true => {
                    let window = (w.from_ms, w.to_ms);
                    store
                        .weighted_grain_hours((tenant, customer, meter), w.series_by, window)
                        .await?
                }
                false => GrainHours::default(),
            };
            attempt += 1;
            let grain = uncut(&plan.ranges, windows, HOUR_MS);
            let (days, hours) = days_and_hours(&grain, windows);
            let inside = complement(&grain, (w.from_ms, w.to_ms));
            let samples = weighted_statement(w, &inside);
            let spans = spans_statement((tenant, customer, meter), w.series_by, (&days, &hours));
            // All at once: the samples around the spans, the spans, and the confirmation; a
            // plan that no longer holds is dropped whatever its statements gave.
            let (samples, spans, holds) = tokio::join!(
                store.weighted_samples(&samples),
                async {
                    match days.is_empty() && hours.is_empty() {
                        true => Ok(Vec::new()),
                        false => store.weighted_spans(&spans).await,
                    }
                },
                store.weighted_grain_holds((tenant, meter), &plan),
            );
            if holds? {
                break (samples?, spans?);
            }
        };
        add_series(&samples, &spans, w.group_by, windows, &mut totals)?;
    }
    Ok(totals)
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A time range, epoch ms, `[from, to)`.
type Range = (i64, i64);

/// The whole units (`unit_ms` long, from the epoch: UTC hours or days) inside `ranges` that no
/// window starts or ends inside, as ranges.
fn uncut(ranges: &[(i64, i64)], windows: &[(i64, i64)], unit_ms: i64) -> Vec<(i64, i64)> {
    let mut edges: Vec<i64> = windows.iter().flat_map(|&(a, b)| [a, b]).collect();
    edges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &(from, to) in ranges {
        let mut unit = from.div_euclid(unit_ms) * unit_ms;
        if unit < from {
            unit += unit_ms;
        }
        while unit + unit_ms <= to {
            let next = unit + unit_ms;
            let first_after = edges.partition_point(|&e| e <= unit);
            let cut = edges.get(first_after).is_some_and(|&e| e < next);
            if !cut {
                match out.last_mut() {
                    Some(last) if last.1 == unit => last.1 = next,
                    _ => out.push((unit, next)),
                }
            }
            unit = next;
        }
    }
    out
}

/// `grain` (whole hours no window cuts) as the spans a read takes: whole UTC days no window
/// starts or ends inside, and the other hours, each as ranges.
fn days_and_hours(grain: &[Range], windows: &[Range]) -> (Vec<Range>, Vec<Range>) {
    let (mut days, mut hours) = (Vec::new(), Vec::new());
    for &range in grain {
        let whole = uncut(&[range], windows, DAY_MS);
        hours.extend(complement(&whole, range));
        days.extend(whole);
    }
    (days, hours)
}

/// The parts of `(from_ms, to_ms)` outside `ranges` (sorted, disjoint, inside it).
fn complement(ranges: &[(i64, i64)], (from_ms, to_ms): (i64, i64)) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = from_ms;
    for &(from, to) in ranges {
        if from > at {
            out.push((at, from));
        }
        at = at.max(to);
    }
    if at < to_ms {
        out.push((at, to_ms));
    }
    out
}

/// The values of `keys` in a sample's whole group ("" where it lacks one), as the samples'
/// statement projects them.
fn project((keys, values): &FullGroup, on: &[String]) -> Vec<String> {
    on.iter()
        .map(|key| {
            keys.iter()
                .position(|k| k == key)
                .and_then(|i| values.get(i))
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Adds each customer's series, from `samples` (ordered by customer, series and time) and
/// `spans` (whole days and hours, none of them holding a sample of `samples`), to `totals`.
fn add_series(
    samples: &[WeightedSample],
    spans: &[WeightedSpan],
    group_by: &[String],
    windows: &[(i64, i64)],
    totals: &mut Totals,
) -> Result<(), UsageError> {
    let projected: Vec<SpanState<Vec<String>>> = spans
        .iter()
        .map(|h| SpanState {
            start_ms: h.state.start_ms,
            end_ms: h.state.end_ms,
            parts: h
                .state
                .parts
                .iter()
                .map(|(g, value_ms, n)| (project(g, group_by), *value_ms, *n))
                .collect(),
            first_ms: h.state.first_ms,
            last_ms: h.state.last_ms,
            last_value: h.state.last_value,
            last_group: project(&h.state.last_group, group_by),
        })
        .collect();
    // Per customer and series: its pieces, each with the time it starts at.
    type Pieces<'a> = Vec<(i64, Piece<'a, Vec<String>>)>;
    let mut series: BTreeMap<(&str, &[String]), Pieces<'_>> = BTreeMap::new();
    for s in samples {
        let piece = Piece::Sample {
            ts_ms: s.ts_ms,
            value: s.value,
            group: &s.group,
            counted: !s.carried,
        };
        series
            .entry((&s.customer, &s.series))
            .or_default()
            .push((s.ts_ms, piece));
    }
    for (span, state) in spans.iter().zip(&projected) {
        series
            .entry((&span.customer, &span.series))
            .or_default()
            .push((state.start_ms, Piece::Span(state)));
    }
    for ((customer, _), mut pieces) in series {
        // Stable: the samples' own order (time, then event id) stays.
        pieces.sort_by_key(|p| p.0);
        integrate_pieces(
            pieces.into_iter().map(|p| p.1),
            windows,
            |i, group, value_ms, n| {
                let total = totals
                    .entry((i, customer.to_owned(), group.clone()))
                    .or_default();
                total.0 = total.0.checked_add(value_ms).ok_or(RatingError::Overflow)?;
                total.1 += n;
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// Integrates `samples` (ordered by customer, series and time) over `window`.
pub fn integrate(
    samples: &[WeightedSample],
    window: (i64, i64),
    unit: WeightUnit,
) -> Result<Vec<WeightedUsage>, UsageError> {
    let mut totals = Totals::new();
    add_series(samples, &[], &[], &[window], &mut totals)?;
    usages(totals, unit)
}

/// The windows of a time series over `[from, to)`: each window's local start (minute, hour or
/// midnight in `tz`) and end, in epoch ms, unclipped; the first starts at or before `from`.
pub fn series_windows(
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    size: WindowSize,
    tz: Tz,
) -> Result<Vec<(i64, i64)>, UsageError> {
    let offset_ms = |t: DateTime<Utc>| {
        i64::from(
            tz.offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc(),
        ) * 1000
    };
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let mut windows = Vec::new();
    let fixed = |unit: i64| {
        let local = from_ms + offset_ms(from);
        local.div_euclid(unit) * unit - offset_ms(from)
    };
    match size {
        WindowSize::Minute | WindowSize::Hour => {
            let unit = if size == WindowSize::Minute {
                60_000
            } else {
                3_600_000
            };
            let mut start = fixed(unit);
            while start < to_ms {
                windows.push((start, start + unit));
                start += unit;
            }
        }
        WindowSize::Day => {
            let midnight = from
                .with_timezone(&tz)
                .date_naive()
                .and_time(NaiveTime::MIN);
            let mut start = tz
                .from_local_datetime(&midnight)
                .earliest()
                .map_or(from, |t| t.with_timezone(&Utc));
            while start < to {
                let day = Cadence {
                    interval: Interval::Day,
                    count: 1,
                    anchor: Anchor::Calendar,
                    tz,
                    origin: start,
                };
                let end = day.boundary(1)?;
                windows.push((start.timestamp_millis(), end.timestamp_millis()));
                start = end;
            }
        }
    }
    Ok(windows)
}

/// The series of a `weighted_sum` meter: each window's integral (clipped to the query's
/// bounds), per customer and group, for every window in which a value is in force or a sample
/// falls; `windows` from [`series_windows`].
pub async fn weighted_series(
    reader: &UsageReader,
    q: &SeriesQuery<'_>,
    series_by: &[String],
    unit: WeightUnit,
    windows: &[(i64, i64)],
) -> Result<Vec<SeriesPoint>, UsageError> {
    let w = WeightedScope {
        scope: q.scope,
        series_by,
        group_by: q.group_by,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
    };
    let clipped: Vec<(i64, i64)> = windows
        .iter()
        .map(|&(start, end)| (start.max(q.from_ms), end.min(q.to_ms)))
        .collect();
    let totals = integrals(reader, &w, &clipped).await?;
    totals
        .into_iter()
        .map(|((i, customer, group), total)| {
            Ok(SeriesPoint {
                window: windows[i].0.div_euclid(1000),
                customer,
                usage: group_usage(group, total, unit)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn sample(series: &str, group: &str, ts_ms: i64, value: i64, carried: bool) -> WeightedSample {
        WeightedSample {
            customer: "c".into(),
            series: vec![series.into()],
            group: vec![group.into()],
            ts_ms,
            value: Decimal::from(value),
            carried,
        }
    }

    #[test]
    fn each_series_holds_its_own_value_and_time_counts_in_the_samples_group() {
        // Series "a": 10 carried in (group x), 20 from 01:30 (group y). Series "b": 5 from 01:00.
        let samples = [
            sample("a", "x", -HOUR, 10, true),
            sample("a", "y", HOUR + HOUR / 2, 20, false),
            sample("b", "x", HOUR, 5, false),
        ];
        let usage = integrate(&samples, (0, 2 * HOUR), WeightUnit::Hour).unwrap();
        let values: Vec<(String, Decimal, u64)> = usage
            .iter()
            .map(|u| (u.usage.group[0].clone(), u.usage.value, u.usage.count))
            .collect();
        assert_eq!(
            values,
            vec![
                ("x".into(), Decimal::from(15 + 5), 1), // 10 × 1.5 + 5 × 1
                ("y".into(), Decimal::from(10), 1),     // 20 × 0.5
            ]
        );
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn day_windows_follow_local_midnights_across_a_dst_change() {
        // Paris leaves summer time on the last Sunday of October 2030 (27th): that day is 25 h.
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let from = DateTime::parse_from_rfc3339("2030-10-26T10:00:00+02:00")
            .unwrap()
            .to_utc();
        let to = DateTime::parse_from_rfc3339("2030-10-28T00:00:00+01:00")
            .unwrap()
            .to_utc();
        let windows = series_windows((from, to), WindowSize::Day, tz).unwrap();
        let lengths: Vec<i64> = windows.iter().map(|(a, b)| (b - a) / 3_600_000).collect();
        assert_eq!(lengths, vec![24, 25]);
        assert_eq!(
            windows[0].0,
            DateTime::parse_from_rfc3339("2030-10-26T00:00:00+02:00")
                .unwrap()
                .timestamp_millis()
        );
        let hours = series_windows((from, to), WindowSize::Hour, tz).unwrap();
        assert_eq!(hours.len(), 14 + 25);
        assert!(hours.windows(2).all(|w| w[0].1 == w[1].0));
    }
}
