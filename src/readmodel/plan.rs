//! Where a customer's read from storage is taken from, by how many samples it is expected to
//! hold. The rollups pay for a customer with many events an hour; a light customer's samples
//! are few, and one pass over them costs ClickHouse less than a statement over a ragged
//! window's edges, hours and days (a window of whole hours is one part of the rollups, which
//! are then read). A customer's density over a set of meters is learnt from its last read of
//! an hour or more that found usage (every read returns each group's event count), over the
//! window's past, so the first such read of a customer after start takes the rollups. A
//! denser customer's ragged window whose samples outside the day grain's whole days are few
//! takes those days from the grain and the rest from its samples (one part for the hours and
//! edges instead of two). Every plan gives the same answer (for a latest value, one of those
//! at the latest instant, as each gives): this only chooses the cheaper.

use std::sync::Arc;

use crate::store::usage_sql::MeterGroupUsage;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// A read expected to hold at most this many samples (over all its meters) is read from the
/// samples alone.
pub const LIGHT_SAMPLES: u64 = 20_000;
/// Densities kept (the least recently read are forgotten first).
const KEPT: u64 = 200_000;

/// Whose reads a density is of: one customer's, over one set of meters (a plan's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reads(Arc<str>);

impl Reads {
    pub fn of<'m>(tenant: &str, customer: &str, meters: impl Iterator<Item = &'m str>) -> Self {
        let mut key = format!("{tenant}\0{customer}");
        for meter in meters {
            key.push('\0');
            key.push_str(meter);
        }
        Self(key.into())
    }
}

/// Samples per day of each customer's reads, as the last one of an hour or more saw them.
#[derive(Clone)]
pub struct Densities {
    per_day: moka::sync::Cache<Reads, u64>,
    /// Reads expected to hold at most this many samples are light (0: none is).
    limit: u64,
}

impl Default for Densities {
    fn default() -> Self {
        Self::new(LIGHT_SAMPLES)
    }
}

impl Densities {
    /// Densities that call light a read expected to hold at most `limit` samples.
    pub fn new(limit: u64) -> Self {
        Self {
            per_day: moka::sync::Cache::new(KEPT),
            limit,
        }
    }

    /// Whether a read of `[from, to)` (its past: `to` at most now) is expected to hold few
    /// enough samples to be read from them alone; reads never learnt are not.
    pub fn light(&self, reads: &Reads, (from, to): (i64, i64)) -> bool {
        self.per_day
            .get(reads)
            .is_some_and(|per_day| self.limit > 0 && expected(per_day, to - from) <= self.limit)
    }

    /// Whether a read of `[from, to)` (its past) is known to hold more samples than a light
    /// one: learnt, and not light.
    pub fn dense(&self, reads: &Reads, (from, to): (i64, i64)) -> bool {
        self.per_day
            .get(reads)
            .is_some_and(|per_day| self.limit == 0 || expected(per_day, to - from) > self.limit)
    }

    /// Records what a read of `[from, to)` (its past) held. A read of under an hour teaches
    /// nothing (too short to say what a longer one would hold), nor does one that found no
    /// usage (a quiet window says nothing of the others).
    pub fn learn(&self, reads: &Reads, (from, to): (i64, i64), rows: &[MeterGroupUsage]) {
        let samples: u64 = rows.iter().map(|r| r.count).sum();
        if to - from < HOUR_MS || samples == 0 {
            return;
        }
        self.per_day
            .insert(reads.clone(), per_day(samples, to - from));
    }

    /// Forgets a density: the next such read takes the rollups.
    pub fn forget(&self, reads: &Reads) {
        self.per_day.invalidate(reads);
    }
}

/// Samples per day (rounded up) of `samples` over `span_ms`.
fn per_day(samples: u64, span_ms: i64) -> u64 {
    let span = u128::try_from(span_ms.max(1)).unwrap_or(1);
    let per_day = (u128::from(samples) * DAY_MS as u128).div_ceil(span);
    u64::try_from(per_day).unwrap_or(u64::MAX)
}

/// Samples expected over `span_ms` at `per_day` (rounded up).
fn expected(per_day: u64, span_ms: i64) -> u64 {
    let span = u128::try_from(span_ms.max(0)).unwrap_or(0);
    let samples = (u128::from(per_day) * span).div_ceil(DAY_MS as u128);
    u64::try_from(samples).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn rows(counts: &[u64]) -> Vec<MeterGroupUsage> {
        counts
            .iter()
            .map(|&count| MeterGroupUsage {
                meter: "m".into(),
                keys: vec![],
                values: vec![],
                value: Decimal::ZERO,
                count,
            })
            .collect()
    }

    fn reads(customer: &str, meters: &[&str]) -> Reads {
        Reads::of("t", customer, meters.iter().copied())
    }

    #[test]
    fn a_read_is_light_by_the_samples_the_last_one_held_over_the_window_asked() {
        let d = Densities::default();
        let c = reads("c", &["a", "b", "c"]);
        let month = (0, 30 * DAY_MS);
        assert!(!d.light(&c, month), "never learnt: the rollups");
        // 60,000 samples over 3 meters in a month: 2,000 a day.
        d.learn(&c, month, &rows(&[20_000, 20_000, 20_000]));
        assert!(!d.light(&c, month));
        assert!(d.light(&c, (0, 7 * DAY_MS)));
        assert!(d.light(&c, (5, 5 + DAY_MS)));
        assert!(
            !d.light(&reads("other", &["a", "b", "c"]), (0, DAY_MS)),
            "per customer"
        );
        assert!(
            !d.light(&reads("c", &["a"]), (0, DAY_MS)),
            "per set of meters"
        );
        assert!(
            !d.light(
                &Reads::of("u", "c", ["a", "b", "c"].into_iter()),
                (0, DAY_MS)
            ),
            "per tenant"
        );
        // What a later read saw replaces it.
        d.learn(&c, (0, DAY_MS), &rows(&[LIGHT_SAMPLES + 1]));
        assert!(!d.light(&c, (0, DAY_MS)));
        // A quiet read, or one of under an hour, teaches nothing.
        d.learn(&c, month, &rows(&[]));
        d.learn(&c, month, &rows(&[0, 0]));
        d.learn(&c, (0, HOUR_MS - 1), &rows(&[1]));
        assert!(!d.light(&c, (0, DAY_MS)));
        d.learn(&c, (0, HOUR_MS), &rows(&[1]));
        assert!(d.light(&c, month));
        d.forget(&c);
        assert!(!d.light(&c, month));
        // A limit of 0: no read is light.
        let none = Densities::new(0);
        none.learn(&c, month, &rows(&[1]));
        assert!(!none.light(&c, (0, DAY_MS)));
    }

    #[test]
    fn densities_round_up_and_do_not_overflow() {
        assert_eq!(per_day(1, 3 * DAY_MS), 1);
        assert_eq!(expected(1, 1), 1);
        assert_eq!(expected(0, DAY_MS), 0);
        assert_eq!(per_day(u64::MAX, 1), u64::MAX);
        assert_eq!(expected(u64::MAX, i64::MAX), u64::MAX);
        assert_eq!(per_day(10, 0), 10 * DAY_MS as u64);
    }
}
