//! Where a customer's read from storage is taken from, by how many samples it is expected to
//! hold. The rollups pay for a customer with many events an hour; a light customer's samples
//! are few, and one pass over them costs ClickHouse less than a statement over a ragged
//! window's edges, hours and days (a window of whole hours is one part of the rollups, which
//! are then read). A customer's density is learnt from its last read
//! (every read returns each group's event count), so the first read of a customer after start
//! takes the rollups. Both plans give the same answer: this only chooses the cheaper.

use std::sync::Arc;

use crate::store::usage_sql::MeterGroupUsage;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// A read expected to hold at most this many samples (over all its meters) is read from the
/// samples alone.
pub const LIGHT_SAMPLES: u64 = 20_000;
/// Customers whose density is kept (the least recently read are forgotten first).
const KEPT: u64 = 200_000;

/// Each customer's samples per day, as its last read saw them.
#[derive(Clone)]
pub struct Densities {
    per_day: moka::sync::Cache<(Arc<str>, Arc<str>), u64>,
}

impl Default for Densities {
    fn default() -> Self {
        Self {
            per_day: moka::sync::Cache::new(KEPT),
        }
    }
}

impl Densities {
    /// Whether `customer`'s read of `[from, to)` is expected to hold few enough samples to be
    /// read from them alone; unknown customers are not.
    pub fn light(&self, tenant: &str, customer: &str, (from, to): (i64, i64)) -> bool {
        let key = (Arc::from(tenant), Arc::from(customer));
        self.per_day
            .get(&key)
            .is_some_and(|per_day| expected(per_day, to - from) <= LIGHT_SAMPLES)
    }

    /// Records what a read of `[from, to)` of `customer` held; a read of under an hour
    /// teaches nothing (too short to say what a longer one would hold).
    pub fn learn(
        &self,
        tenant: &str,
        customer: &str,
        (from, to): (i64, i64),
        rows: &[MeterGroupUsage],
    ) {
        if to - from < HOUR_MS {
            return;
        }
        let samples: u64 = rows.iter().map(|r| r.count).sum();
        let key = (Arc::from(tenant), Arc::from(customer));
        self.per_day.insert(key, per_day(samples, to - from));
    }

    /// Forgets `customer`'s density: its next read takes the rollups.
    pub fn forget(&self, tenant: &str, customer: &str) {
        self.per_day
            .invalidate(&(Arc::from(tenant), Arc::from(customer)));
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

    #[test]
    fn a_customer_is_light_by_the_samples_its_last_read_held_over_the_window_asked() {
        let d = Densities::default();
        let month = (0, 30 * DAY_MS);
        assert!(!d.light("t", "c", month), "unknown: the rollups");
        // 60,000 samples over 3 meters in a month: 2,000 a day.
        d.learn("t", "c", month, &rows(&[20_000, 20_000, 20_000]));
        assert!(!d.light("t", "c", month));
        assert!(d.light("t", "c", (0, 7 * DAY_MS)));
        assert!(d.light("t", "c", (5, 5 + DAY_MS)));
        assert!(!d.light("t", "other", (0, DAY_MS)), "per customer");
        assert!(!d.light("u", "c", (0, DAY_MS)), "per tenant");
        // What a later read saw replaces it.
        d.learn("t", "c", (0, DAY_MS), &rows(&[LIGHT_SAMPLES + 1]));
        assert!(!d.light("t", "c", (0, DAY_MS)));
        d.learn("t", "c", month, &rows(&[]));
        assert!(d.light("t", "c", (0, 365 * DAY_MS)));
        // A read of under an hour teaches nothing; a forgotten customer takes the rollups.
        d.learn("t", "c", (0, HOUR_MS - 1), &rows(&[1_000_000]));
        assert!(d.light("t", "c", month));
        d.forget("t", "c");
        assert!(!d.light("t", "c", month));
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
