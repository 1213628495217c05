//! API keys, tenants and roles. Keys are held only as SHA-256 digests; a request's key is
//! hashed and looked up, so no plain key stays in memory or reaches a log.

pub mod links;
pub mod stored;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::limits::RateLimits;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Ingest,
    Read,
    Customer,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "ingest" => Some(Self::Ingest),
            "read" => Some(Self::Read),
            "customer" => Some(Self::Customer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Customer => "customer",
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub role: Role,
    /// Set for `customer` keys: the one customer they may see.
    pub customer: Option<String>,
    /// A stable, non-secret id of the key (for rate limits and logs).
    pub key_id: u64,
}

impl Principal {
    /// Allows the request if the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::Forbidden(format!(
            "a {} key may not {action}; this needs a key with role {}",
            self.role.as_str(),
            allowed.join(" or ")
        )))
    }
}

pub type KeyHash = [u8; 32];

/// The roles that may send events.
pub const INGESTERS: &[Role] = &[Role::Admin, Role::Ingest];

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// All known keys of all tenants, by digest. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Arc<RwLock<HashMap<KeyHash, Principal>>>,
    /// The keys given in configuration: listed as such, never revoked through the API.
    configured: Arc<RwLock<std::collections::HashSet<KeyHash>>>,
    /// Keys revoked since this process started: never inserted again, so a refresh that read
    /// the stored keys before a revocation cannot bring one back.
    revoked: Arc<RwLock<std::collections::HashSet<KeyHash>>>,
}

impl KeyRing {
    /// Parses `key:tenant:role[:customer]`, comma-separated; an error names the bad entry's
    /// position, never the key.
    pub fn from_config(spec: &str) -> anyhow::Result<Self> {
        let ring = Self::default();
        for (position, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let parts: Vec<&str> = entry.split(':').collect();
            let bad = |why: &str| {
                anyhow::anyhow!(
                    "API key entry #{}: {why} (expected key:tenant:role[:customer])",
                    position + 1
                )
            };
            let (key, tenant, role, customer) = match parts.as_slice() {
                [k, t, r] => (*k, *t, *r, None),
                [k, t, r, c] => (*k, *t, *r, Some(c.to_string())),
                _ => return Err(bad("wrong number of fields")),
            };
            let role = Role::parse(role)
                .ok_or_else(|| bad("role must be admin, ingest, read or customer"))?;
            if key.len() < 8 || tenant.is_empty() || tenant.contains('\0') {
                return Err(bad(
                    "key must be at least 8 characters and tenant non-empty",
                ));
            }
            if (role == Role::Customer) != customer.is_some() {
                return Err(bad(
                    "a customer key needs a customer, and only a customer key has one",
                ));
            }
            let hash = hash_key(key);
            ring.insert(hash, tenant, role, customer);
            ring.configured
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hash);
        }
        Ok(ring)
    }

    /// Stops accepting a stored key; a configured one stays.
    pub fn remove(&self, hash: &KeyHash) {
        if self.is_configured(hash) {
            return;
        }
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*hash);
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }

    pub fn is_configured(&self, hash: &KeyHash) -> bool {
        self.configured
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(hash)
    }

    /// The configured keys of `tenant`: digest and principal (a configured key is never
    /// removed from the ring, so the ring holds each one's principal).
    pub fn configured_of(&self, tenant: &str) -> Vec<(KeyHash, Principal)> {
        let configured = self.configured.read().unwrap_or_else(|e| e.into_inner());
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<_> = configured
            .iter()
            .filter_map(|h| Some((*h, keys.get(h)?.clone())))
            .filter(|(_, p)| &*p.tenant == tenant)
            .collect();
        keys.sort_by_key(|(h, _)| *h);
        keys
    }

    pub fn insert(&self, hash: KeyHash, tenant: &str, role: Role, customer: Option<String>) {
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&hash)
        {
            return;
        }
        let key_id = u64::from_le_bytes(hash[..8].try_into().unwrap_or_default());
        let principal = Principal {
            tenant: tenant.into(),
            role,
            customer,
            key_id,
        };
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, principal);
    }

    pub fn lookup(&self, key: &str) -> Option<Principal> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash_key(key))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Principal {
    /// Allows reading `customer`'s data: admin and read keys of the tenant, or that customer's
    /// own key. Another customer's is "not found", so a customer key learns nothing of others.
    pub fn may_read_customer(&self, customer: &str) -> Result<(), ApiError> {
        match (&self.role, &self.customer) {
            (Role::Customer, Some(own)) if own == customer => Ok(()),
            (Role::Customer, _) => Err(ApiError::not_found(
                "customer_not_found",
                format!("no customer '{customer}' in this tenant"),
            )),
            _ => self.require(&[Role::Admin, Role::Read], "read customer data"),
        }
    }

    /// `may_read_customer` for a subscription of `owner`: another customer's subscription does
    /// not exist for this key (`missing()`), and a role that reads nothing is 403.
    pub fn may_read_subscription(
        &self,
        owner: &str,
        missing: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        match self.may_read_customer(owner) {
            Err(ApiError::NotFound { .. }) => Err(missing()),
            other => other,
        }
    }
}

/// The key of a request: `Authorization: Bearer <key>`, `x-api-key: <key>`, or a bare
/// `Authorization: <key>` (how some vendors' clients send it).
fn presented_key(parts: &Parts) -> Option<&str> {
    let authorization = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
        });
    authorization
        .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Extracting a `Principal` authenticates the request and spends one request of its key's
/// rate limit.
impl<S> FromRequestParts<S> for Principal
where
    KeyRing: FromRef<S>,
    RateLimits: FromRef<S>,
    Arc<Metrics>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = presented_key(parts).ok_or(ApiError::Unauthorized)?;
        let principal = KeyRing::from_ref(state)
            .lookup(key)
            .ok_or(ApiError::Unauthorized)?;
        RateLimits::from_ref(state)
            .check_request(principal.key_id)
            .inspect_err(|_| {
                Arc::<Metrics>::from_ref(state)
                    .requests_rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })?;
        tracing::Span::current().record("tenant", &*principal.tenant);
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_carry_tenant_role_and_customer() {
        let ring =
            KeyRing::from_config("k_admin_1:acme:admin, k_cust_01:acme:customer:cust_42").unwrap();
        let admin = ring.lookup("k_admin_1").unwrap();
        assert_eq!((&*admin.tenant, admin.role), ("acme", Role::Admin));
        let customer = ring.lookup("k_cust_01").unwrap();
        assert_eq!(customer.customer.as_deref(), Some("cust_42"));
        assert!(ring.lookup("k_unknown").is_none());
    }

    #[test]
    fn the_key_is_read_from_each_header_form() {
        let key_of = |name: &str, value: &str| {
            let request = axum::http::Request::builder()
                .header(name, value)
                .body(())
                .unwrap();
            let (parts, ()) = request.into_parts();
            presented_key(&parts).map(str::to_owned)
        };
        assert_eq!(key_of("authorization", "Bearer k1").as_deref(), Some("k1"));
        assert_eq!(key_of("Authorization", "bearer k1").as_deref(), Some("k1"));
        assert_eq!(key_of("authorization", "k1").as_deref(), Some("k1"));
        assert_eq!(key_of("x-api-key", " k1 ").as_deref(), Some("k1"));
        assert_eq!(key_of("X-API-Key", "k1").as_deref(), Some("k1"));
        assert_eq!(key_of("accept", "k1"), None);
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_the_key() {
        for spec in [
            "secretkey1:acme",
            "secretkey1:acme:owner",
            "secretkey1:acme:customer",
            "short:acme:admin",
            "secretkey1:acme:read:c1",
        ] {
            let err = KeyRing::from_config(spec).unwrap_err().to_string();
            assert!(!err.contains("secretkey1"), "{err}");
            assert!(err.contains("entry #1"), "{err}");
        }
    }

    #[test]
    fn forbidden_messages_say_which_role_is_needed() {
        let ring = KeyRing::from_config("readkey01:acme:read").unwrap();
        let err = ring
            .lookup("readkey01")
            .unwrap()
            .require(&[Role::Admin, Role::Ingest], "send events")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a read key may not send events; this needs a key with role admin or ingest"
        );
    }
}
