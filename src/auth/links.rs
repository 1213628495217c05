//! Dashboard links and sessions: a tenant (and optionally one customer) and an expiry, signed
//! with HMAC-SHA256 under a secret kept in ClickHouse (`dashboard_secrets`), so that any
//! replica accepts what another signed and nothing needs storing per link.
//!
//! A token is `<kind>.<expires unix s>.<hex tenant>.<hex customer>.<hex signature>`: only
//! `[0-9a-z.]`, safe in a URL and a cookie. `kind` is `l` for a link, `s` for the session a
//! link is exchanged for, so neither can stand in for the other.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::store::{Store, StoreError};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// In a URL handed out by `POST /v1/dashboard/links`.
    Link,
    /// In the session cookie a link is exchanged for.
    Session,
}

impl GrantKind {
    fn tag(self) -> &'static str {
        match self {
            Self::Link => "l",
            Self::Session => "s",
        }
    }
}

/// Who may see what, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub kind: GrantKind,
    pub tenant: String,
    /// Set for a customer's link: that customer's pages only.
    pub customer: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this dashboard link is not valid")]
    Invalid,
    #[error("this dashboard link expired")]
    Expired { expires_at: i64 },
}

/// Signing secrets: signs with the first, accepts any.
#[derive(Debug, Clone)]
pub struct LinkSigner {
    secrets: Vec<Vec<u8>>,
}

impl LinkSigner {
    pub fn new(secrets: Vec<Vec<u8>>) -> Self {
        debug_assert!(!secrets.is_empty(), "a signer needs a secret");
        Self { secrets }
    }

    fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(body.as_bytes());
        mac
    }

    /// The token of `grant`.
    pub fn sign(&self, grant: &Grant) -> String {
        let body = format!(
            "{}.{}.{}.{}",
            grant.kind.tag(),
            grant.expires_at,
            hex::encode(grant.tenant.as_bytes()),
            hex::encode(grant.customer.as_deref().unwrap_or("").as_bytes()),
        );
        let secret = self.secrets.first().map_or(&[][..], Vec::as_slice);
        let signature = Self::mac(secret, &body).finalize().into_bytes();
        format!("{body}.{}", hex::encode(signature))
    }

    /// The grant of `token` if one of the secrets signed it, it is of `kind` and it has not
    /// expired at `now` (unix seconds).
    pub fn verify(&self, token: &str, kind: GrantKind, now: i64) -> Result<Grant, LinkError> {
        let (body, signature) = token.rsplit_once('.').ok_or(LinkError::Invalid)?;
        let signature = hex::decode(signature).map_err(|_| LinkError::Invalid)?;
        let signed = self
            .secrets
            .iter()
            .any(|secret| Self::mac(secret, body).verify_slice(&signature).is_ok());
        if !signed {
            return Err(LinkError::Invalid);
        }
        let parts: Vec<&str> = body.split('.').collect();
        let [tag, expires_at, tenant, customer] = parts.as_slice() else {
            return Err(LinkError::Invalid);
        };
        if *tag != kind.tag() {
            return Err(LinkError::Invalid);
        }
        let text = |hex_text: &str| {
            hex::decode(hex_text)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(LinkError::Invalid)
        };
        let expires_at: i64 = expires_at.parse().map_err(|_| LinkError::Invalid)?;
        if expires_at <= now {
            return Err(LinkError::Expired { expires_at });
        }
        let customer = text(customer)?;
        Ok(Grant {
            kind,
            tenant: text(tenant)?,
            customer: (!customer.is_empty()).then_some(customer),
            expires_at,
        })
    }
}

/// The signer of this process, reloaded from ClickHouse when a token signed by a secret it
/// does not know yet arrives (another replica's, after a race at first start). Cheap to clone.
#[derive(Clone)]
pub struct DashboardKeys {
    store: Store,
    signer: Arc<RwLock<LinkSigner>>,
    last_reload: Arc<Mutex<Instant>>,
}

/// A token that no secret signed reloads the secrets at most this often.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(5);

impl DashboardKeys {
    /// Loads the secrets, adding one if there is none.
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let mut secrets = store.dashboard_secrets().await?;
        if secrets.is_empty() {
            store
                .insert_dashboard_secret(&hex::encode(rand::random::<[u8; 32]>()))
                .await?;
            secrets = store.dashboard_secrets().await?;
        }
        let signer = LinkSigner::new(decode(&secrets));
        Ok(Self {
            store,
            signer: Arc::new(RwLock::new(signer)),
            last_reload: Arc::new(Mutex::new(Instant::now())),
        })
    }

    pub fn sign(&self, grant: &Grant) -> String {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .sign(grant)
    }

    /// As [`LinkSigner::verify`], reloading the secrets once if none signed `token`.
    pub async fn verify(&self, token: &str, kind: GrantKind) -> Result<Grant, LinkError> {
        let now = chrono::Utc::now().timestamp();
        let first = self
            .signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .verify(token, kind, now);
        if first != Err(LinkError::Invalid) || !self.due_for_reload() {
            return first;
        }
        match self.store.dashboard_secrets().await {
            Ok(secrets) if !secrets.is_empty() => {
                let signer = LinkSigner::new(decode(&secrets));
                let answer = signer.verify(token, kind, now);
                *self.signer.write().unwrap_or_else(|e| e.into_inner()) = signer;
                answer
            }
            Ok(_) => first,
            Err(e) => {
                tracing::warn!(error = %e, "reloading the dashboard secrets failed");
                first
            }
        }
    }

    fn due_for_reload(&self) -> bool {
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < RELOAD_AT_MOST_EVERY {
            return false;
        }
        *last = Instant::now();
        true
    }
}

fn decode(secrets: &[String]) -> Vec<Vec<u8>> {
    secrets
        .iter()
        .map(|s| hex::decode(s).unwrap_or_else(|_| s.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(customer: Option<&str>, expires_at: i64) -> Grant {
        Grant {
            kind: GrantKind::Link,
            tenant: "acme".into(),
            customer: customer.map(str::to_owned),
            expires_at,
        }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let signer = LinkSigner::new(vec![b"one".to_vec()]);
        let token = signer.sign(&grant(Some("c.1/x"), 1_000));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        );
        let verified = signer.verify(&token, GrantKind::Link, 999).unwrap();
        assert_eq!(verified, grant(Some("c.1/x"), 1_000));
        assert_eq!(
            signer.verify(&token, GrantKind::Link, 1_000),
            Err(LinkError::Expired { expires_at: 1_000 })
        );
    }

    #[test]
    fn a_changed_or_foreign_token_is_refused() {
        let signer = LinkSigner::new(vec![b"one".to_vec()]);
        let token = signer.sign(&grant(None, 1_000));
        let longer = token.replacen(".1000.", ".9999.", 1);
        assert_eq!(
            signer.verify(&longer, GrantKind::Link, 0),
            Err(LinkError::Invalid)
        );
        let other = LinkSigner::new(vec![b"two".to_vec()]).sign(&grant(None, 1_000));
        assert_eq!(
            signer.verify(&other, GrantKind::Link, 0),
            Err(LinkError::Invalid)
        );
        for junk in ["", ".", "l.1.2.3.zz", "x"] {
            assert_eq!(
                signer.verify(junk, GrantKind::Link, 0),
                Err(LinkError::Invalid)
            );
        }
    }

    #[test]
    fn a_link_is_not_a_session_and_every_known_secret_is_accepted() {
        let old = LinkSigner::new(vec![b"two".to_vec()]);
        let both = LinkSigner::new(vec![b"one".to_vec(), b"two".to_vec()]);
        let token = old.sign(&grant(None, 1_000));
        assert!(both.verify(&token, GrantKind::Link, 0).is_ok());
        assert_eq!(
            both.verify(&token, GrantKind::Session, 0),
            Err(LinkError::Invalid)
        );
    }
}
