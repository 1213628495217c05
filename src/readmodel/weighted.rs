//! The quantities of `weighted_sum` meters: each series' samples (the value carried in and
//! those inside the window, `store::weighted_sql`) integrated exactly (`billing::weighted`);
//! each sample's time is counted in the group of the read's `group_by` that sample carries.
//! Always from the samples, never from memory or the rollups (see `store::weighted_sql`).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::UsageReader;
use super::report::UsageError;
use chrono::{DateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::billing::period::{Anchor, Cadence, Interval};
use crate::billing::rating::RatingError;
use crate::billing::weighted::{HeldValue, contributions, in_units};
use crate::domain::meter::WeightUnit;
use crate::store::series_sql::{SeriesPoint, SeriesQuery, WindowSize};
use crate::store::usage_sql::GroupUsage;
use crate::store::weighted_sql::{WeightedSample, WeightedScope, weighted_statement};

/// One customer's and group's integral and the events inside the window.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedUsage {
    pub customer: String,
    pub usage: GroupUsage,
}

/// The integral of `w` in value × `unit`, per customer and group; a group with no sample in
/// the window but a value carried in has its events count at 0.
pub async fn weighted_usage(
    reader: &UsageReader,
    w: &WeightedScope<'_>,
    unit: WeightUnit,
) -> Result<Vec<WeightedUsage>, UsageError> {
    let statement = weighted_statement(w);
    let samples = samples_of(reader, w, &statement).await?;
    integrate(&samples, (w.from_ms, w.to_ms), unit)
}

/// The samples `statement` reads for `w`: from the customer's shard, or every shard (each
/// customer's whole on its own, in order).
async fn samples_of(
    reader: &UsageReader,
    w: &WeightedScope<'_>,
    statement: &crate::store::sql::Sql,
) -> Result<Vec<crate::store::weighted_sql::WeightedSample>, UsageError> {
    let mut samples = Vec::new();
    for store in reader.stores_for(w.scope.tenant, w.scope.customer) {
        samples.extend(store.weighted_samples(statement).await?);
    }
    Ok(samples)
}

/// Integrates `samples` (ordered by customer, series and time) over `window`.
pub fn integrate(
    samples: &[WeightedSample],
    window: (i64, i64),
    unit: WeightUnit,
) -> Result<Vec<WeightedUsage>, UsageError> {
    let mut totals: BTreeMap<(&str, &[String]), (Decimal, u64)> = BTreeMap::new();
    for series in samples.chunk_by(|a, b| a.customer == b.customer && a.series == b.series) {
        let held: Vec<HeldValue> = series
            .iter()
            .map(|s| HeldValue {
                since_ms: s.ts_ms,
                value: s.value,
            })
            .collect();
        for (sample, value_ms) in series.iter().zip(contributions(&held, window)?) {
            let total = totals.entry((&sample.customer, &sample.group)).or_default();
            total.0 = total.0.checked_add(value_ms).ok_or(RatingError::Overflow)?;
            total.1 += u64::from(!sample.carried);
        }
    }
    totals
        .into_iter()
        .map(|((customer, group), (value_ms, count))| {
            Ok(WeightedUsage {
                customer: customer.to_owned(),
                usage: GroupUsage {
                    group: group.to_vec(),
                    value: in_units(value_ms, unit.millis())?,
                    count,
                },
            })
        })
        .collect()
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
    let samples = samples_of(reader, &w, &weighted_statement(&w)).await?;
    let mut totals: BTreeMap<(i64, &str, &[String]), (Decimal, u64)> = BTreeMap::new();
    for series in samples.chunk_by(|a, b| a.customer == b.customer && a.series == b.series) {
        let held: Vec<HeldValue> = series
            .iter()
            .map(|s| HeldValue {
                since_ms: s.ts_ms,
                value: s.value,
            })
            .collect();
        for &(start, end) in windows {
            let window = (start.max(q.from_ms), end.min(q.to_ms));
            let first = held.partition_point(|h| h.since_ms < window.0);
            let last = held.partition_point(|h| h.since_ms < window.1);
            if last == 0 {
                continue;
            }
            let first = first.saturating_sub(1);
            let parts = contributions(&held[first..last], window)?;
            for (sample, value_ms) in series[first..last].iter().zip(parts) {
                let total = totals
                    .entry((start, &sample.customer, &sample.group))
                    .or_default();
                total.0 = total.0.checked_add(value_ms).ok_or(RatingError::Overflow)?;
                total.1 += u64::from(sample.ts_ms >= window.0);
            }
        }
    }
    totals
        .into_iter()
        .map(|((start, customer, group), (value_ms, count))| {
            Ok(SeriesPoint {
                window: start.div_euclid(1000),
                customer: customer.to_owned(),
                usage: GroupUsage {
                    group: group.to_vec(),
                    value: in_units(value_ms, unit.millis())?,
                    count,
                },
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
