//! Currencies and rounding: ISO 4217 minor units, half-even rounding, done once per total.

use rust_decimal::{Decimal, RoundingStrategy};

/// Digits after the decimal point of a currency's minor unit (ISO 4217); 2 when not listed.
pub fn minor_units(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// A currency code is three upper-case ASCII letters.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// `amount` rounded half-even to the currency's minor unit, with that many decimals shown.
pub fn round_to_currency(amount: Decimal, currency: &str) -> Decimal {
    let digits = minor_units(currency);
    let mut rounded = amount.round_dp_with_strategy(digits, RoundingStrategy::MidpointNearestEven);
    rounded.rescale(digits);
    rounded
}

/// `amount` counted in the currency's minor unit (cents for USD), exactly: 0.002 USD is 0.2.
pub fn in_minor_units(amount: Decimal, currency: &str) -> Decimal {
    (amount * Decimal::from(10u64.pow(minor_units(currency)))).normalize()
}

/// `amount` rounded to the currency, as a whole number of minor units: 12.345 USD is 1234.
pub fn minor_units_rounded(amount: Decimal, currency: &str) -> i64 {
    use rust_decimal::prelude::ToPrimitive;
    in_minor_units(round_to_currency(amount, currency), currency)
        .to_i64()
        .unwrap_or(i64::MAX)
}

/// `amount` rounded to the currency for people to read: `$12.50`, `€7.00`, `12 CHF`.
pub fn display(amount: Decimal, currency: &str) -> String {
    let rounded = round_to_currency(amount, currency);
    let (sign, magnitude) = if rounded.is_sign_negative() && !rounded.is_zero() {
        ("-", rounded.abs())
    } else {
        ("", rounded.abs())
    };
    match currency {
        "USD" => format!("{sign}${magnitude}"),
        "EUR" => format!("{sign}€{magnitude}"),
        "GBP" => format!("{sign}£{magnitude}"),
        "JPY" => format!("{sign}¥{magnitude}"),
        "INR" => format!("{sign}₹{magnitude}"),
        _ => format!("{sign}{magnitude} {currency}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn totals_round_half_even_to_the_minor_unit() {
        let cases = [
            ("70.345", "USD", "70.34"),
            ("70.355", "USD", "70.36"),
            ("70.3451", "USD", "70.35"),
            ("12.5", "JPY", "12"),
            ("13.5", "JPY", "14"),
            ("1.23456", "KWD", "1.235"),
            ("1.2345", "KWD", "1.234"),
            ("7", "EUR", "7.00"),
        ];
        for (amount, currency, expected) in cases {
            assert_eq!(
                round_to_currency(d(amount), currency).to_string(),
                expected,
                "{amount} {currency}"
            );
        }
    }

    #[test]
    fn minor_units_and_display_follow_the_currency() {
        assert_eq!(in_minor_units(d("0.002"), "USD").to_string(), "0.2");
        assert_eq!(in_minor_units(d("49.00"), "USD").to_string(), "4900");
        assert_eq!(minor_units_rounded(d("12.345"), "USD"), 1234);
        assert_eq!(minor_units_rounded(d("12.355"), "USD"), 1236);
        assert_eq!(minor_units_rounded(d("1.2345"), "KWD"), 1234);
        assert_eq!(minor_units_rounded(d("13.5"), "JPY"), 14);
        assert_eq!(display(d("12.5"), "USD"), "$12.50");
        assert_eq!(display(d("-3.456"), "EUR"), "-€3.46");
        assert_eq!(display(d("12"), "CHF"), "12.00 CHF");
        assert_eq!(display(d("12.4"), "JPY"), "¥12");
    }

    #[test]
    fn currency_codes_are_three_capitals() {
        assert!(is_currency_code("USD"));
        assert!(!is_currency_code("usd"));
        assert!(!is_currency_code("US"));
    }
}
