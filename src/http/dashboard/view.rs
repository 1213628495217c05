//! What people read: the page layout, and numbers, money and times formatted for them
//! (thousands separators, currency symbols, local time of a zone).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use rust_decimal::Decimal;

use super::Viewer;

/// A whole page: `title`, a navigation for `viewer`, and `body`.
pub(crate) fn page(viewer: Option<&Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · meterhouse" }
                link rel="stylesheet" href="/dashboard/assets/style.css";
                script src="/dashboard/assets/live.js" defer {}
            }
            body {
                header {
                    span.brand { "meterhouse" }
                    @if let Some(viewer) = viewer {
                        nav {
                            @match &viewer.customer {
                                None => {
                                    a href=(href(viewer, "/dashboard", &[])) { "Overview" }
                                    " · " span.tenant { "tenant " (viewer.tenant) }
                                }
                                Some(customer) => {
                                    a href=(href(viewer, &customer_path(customer), &[])) { "Usage" }
                                }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page that only says something: an error, an expired link.
pub(crate) fn message_page(title: &str, message: &str) -> Markup {
    page(None, title, html! { p.message { (message) } })
}

/// `path` with `query`, and the viewer's token when the page is framed.
pub(crate) fn href(viewer: &Viewer, path: &str, query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = query
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", query_component(k), query_component(v)))
        .collect();
    if let Some(token) = &viewer.embedded_token {
        pairs.push(format!("token={token}"));
    }
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

pub(crate) fn customer_path(customer: &str) -> String {
    format!("/dashboard/customers/{}", path_segment(customer))
}

pub(crate) fn meter_path(slug: &str) -> String {
    format!("/dashboard/meters/{}", path_segment(slug))
}

/// `text` percent-encoded for a path segment (RFC 3986 unreserved characters kept).
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn query_component(text: &str) -> String {
    path_segment(text)
}

/// `42`, `1,234,567.5`, `-0.25`: the decimal's own digits, grouped by thousands.
pub(crate) fn number(value: Decimal) -> String {
    group_thousands(&value.normalize().to_string())
}

/// An amount rounded to its currency, with its symbol and grouped digits: `$1,234.50`.
pub(crate) fn money(amount: Decimal, currency: &str) -> String {
    group_thousands(&crate::billing::money::display(amount, currency))
}

/// Groups the first run of digits of `text` (the integer part) by thousands.
fn group_thousands(text: &str) -> String {
    let Some(start) = text.find(|c: char| c.is_ascii_digit()) else {
        return text.to_owned();
    };
    let end = text[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |i| start + i);
    let digits = &text[start..end];
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{}{grouped}{}", &text[..start], &text[end..])
}

/// `2026-12-02 14:00 CET`: local time in `tz`.
pub(crate) fn local_time(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// A progress bar of `percent` (0 to 100) with its caption.
pub(crate) fn progress(percent: u32, caption: &str) -> Markup {
    let percent = percent.min(100);
    html! {
        div.progress title=(caption) {
            div.bar style=(format!("width:{percent}%")) {}
        }
        small { (caption) }
    }
}

/// An SVG chart, already rendered.
pub(crate) fn svg(chart: String) -> Markup {
    html! { figure.chart { (PreEscaped(chart)) } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn numbers_are_grouped_by_thousands_and_keep_their_decimals() {
        assert_eq!(number(d("0")), "0");
        assert_eq!(number(d("999")), "999");
        assert_eq!(number(d("1000")), "1,000");
        assert_eq!(number(d("1234567.500")), "1,234,567.5");
        assert_eq!(number(d("-1234")), "-1,234");
    }

    #[test]
    fn money_has_its_symbol_and_minor_units() {
        assert_eq!(money(d("1234.5"), "USD"), "$1,234.50");
        assert_eq!(money(d("-7"), "EUR"), "-€7.00");
        assert_eq!(money(d("1234567"), "CHF"), "1,234,567.00 CHF");
        assert_eq!(money(d("1234.4"), "JPY"), "¥1,234");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("cust_42"), "cust_42");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
