//! `Meterhouse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with
//! the endpoint's secret. A receiver recomputes it over the raw body and compares, and refuses
//! a `t` too far from its clock (replays).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const HEADER: &str = "Meterhouse-Signature";

/// The header's value for `body` sent at `t` (unix seconds).
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", hex::encode(digest(secret, t, body)))
}

fn digest(secret: &str, t: i64, body: &str) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_the_time_and_the_hmac_of_time_dot_body() {
        let header = sign("whsec_x", 1_700_000_000, r#"{"id":"evt_1"}"#);
        let (t, v1) = header.split_once(',').unwrap();
        assert_eq!(t, "t=1700000000");
        assert_eq!(v1.len(), "v1=".len() + 64);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"whsec_x").unwrap();
        mac.update(br#"1700000000.{"id":"evt_1"}"#);
        assert_eq!(&v1[3..], hex::encode(mac.finalize().into_bytes()));
        assert_ne!(header, sign("whsec_y", 1_700_000_000, r#"{"id":"evt_1"}"#));
    }

    #[test]
    fn the_hmac_crate_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
