//! Row structs as ClickHouse stores them, and the one fixed scale of stored decimals.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Serialize;

/// Scale of every `Decimal(38, 12)` column: quantities keep 12 fractional digits.
pub const DECIMAL_SCALE: u32 = 12;

/// Why a quantity cannot be stored exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("has more than {DECIMAL_SCALE} decimal places")]
    TooPrecise,
    #[error("is too large")]
    TooLarge,
}

/// A decimal as the scaled integer ClickHouse's `Decimal(38, 12)` holds; exact or an error.
pub fn to_scaled(value: Decimal) -> Result<i128, DecimalError> {
    let value = value.normalize();
    let scale = value.scale();
    if scale > DECIMAL_SCALE {
        return Err(DecimalError::TooPrecise);
    }
    let factor = 10i128.pow(DECIMAL_SCALE - scale);
    let scaled = value
        .mantissa()
        .checked_mul(factor)
        .ok_or(DecimalError::TooLarge)?;
    // Decimal(38, _) holds at most 38 digits.
    if scaled.unsigned_abs() >= 10u128.pow(38) {
        return Err(DecimalError::TooLarge);
    }
    Ok(scaled)
}

/// One row of `events`, samples included (see `sql/0001_events.sql`).
#[derive(Debug, Clone, Default, clickhouse::Row, Serialize)]
pub struct EventRow {
    pub tenant: Arc<str>,
    pub id: String,
    pub customer: String,
    pub event_type: String,
    pub ts_ms: i64,
    /// Seconds since the epoch; drives partitioning only.
    pub ts: u32,
    /// The `properties` object as JSON text, verbatim.
    pub properties: String,
    pub ingested_ms: i64,
    pub ingested_at: u32,
    pub batch_id: u64,
    pub sample_meter: Vec<Arc<str>>,
    pub sample_value: Vec<i128>,
    pub sample_value_str: Vec<String>,
    pub sample_group_keys: Vec<Arc<[String]>>,
    pub sample_group_values: Vec<Vec<String>>,
}

impl EventRow {
    /// Stamps the commit time and batch on the row, just before it is written.
    pub fn stamp(&mut self, ingested_ms: i64, batch_id: u64) {
        self.ingested_ms = ingested_ms;
        self.ingested_at = (ingested_ms / 1000) as u32;
        self.batch_id = batch_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn decimals_scale_exactly_to_twelve_places() {
        assert_eq!(
            to_scaled(Decimal::from_str("1.5").unwrap()),
            Ok(1_500_000_000_000)
        );
        assert_eq!(
            to_scaled(Decimal::from_str("-0.000000000001").unwrap()),
            Ok(-1)
        );
        assert_eq!(
            to_scaled(Decimal::from_str("0.0000000000001").unwrap()),
            Err(DecimalError::TooPrecise)
        );
        assert_eq!(
            to_scaled(Decimal::from_str("1.50000000000000000").unwrap()),
            Ok(1_500_000_000_000)
        );
    }

    #[test]
    fn decimals_beyond_38_digits_are_refused() {
        let big = Decimal::from_str("79228162514264337593543950335").unwrap(); // 29 digits
        assert_eq!(to_scaled(big), Err(DecimalError::TooLarge));
        let fits = Decimal::from_str("99999999999999999999999999").unwrap(); // 26 digits
        assert!(to_scaled(fits).is_ok());
    }

    proptest! {
        #[test]
        fn scaling_round_trips(mantissa in any::<i32>(), scale in 0u32..=12) {
            let value = Decimal::new(i64::from(mantissa), scale);
            let scaled = to_scaled(value).unwrap();
            prop_assert_eq!(Decimal::from_i128_with_scale(scaled, DECIMAL_SCALE).normalize(), value.normalize());
        }
    }
}
