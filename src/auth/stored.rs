//! Keys made through the API: kept in ClickHouse by digest (`store::keys`), loaded into the
//! ring at start and every [`REFRESH_EVERY`], so that a key made or revoked through one process
//! works, or stops working, in every other within a second.

use std::collections::HashSet;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{KeyHash, KeyRing, Role};
use crate::store::keys::StoredKey;
use crate::store::{Store, StoreError};

/// How often every process reloads stored and revoked keys.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// A key's public id: derived from its digest, from which neither the digest nor the key can
/// be recovered.
pub fn key_id(hash: &KeyHash) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"meterhouse api key id\0");
    hasher.update(hash);
    format!("key_{}", hex::encode(&hasher.finalize()[..12]))
}

/// A stored row's digest and role, if both are well-formed.
pub fn parsed(row: &StoredKey) -> Option<(KeyHash, Role)> {
    let bytes = hex::decode(&row.key_hash).ok()?;
    Some((
        <[u8; 32]>::try_from(bytes.as_slice()).ok()?,
        Role::parse(&row.role)?,
    ))
}

/// Every stored key, and the digests of the revoked ones.
pub async fn stored_and_revoked(
    store: &Store,
) -> Result<(Vec<StoredKey>, HashSet<KeyHash>), StoreError> {
    let stored = store.stored_keys().await?;
    let revoked = store.revoked_keys().await?;
    let revoked = revoked
        .iter()
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .collect();
    Ok((stored, revoked))
}

/// Adds every stored key to `ring` and drops the revoked ones.
pub async fn load_stored(store: &Store, ring: &KeyRing) -> Result<usize, StoreError> {
    let (rows, revoked) = stored_and_revoked(store).await?;
    let mut loaded = 0;
    for row in rows {
        let Some((hash, role)) = parsed(&row) else {
            continue;
        };
        if revoked.contains(&hash) {
            continue;
        }
        let customer = (!row.customer.is_empty()).then_some(row.customer);
        ring.insert(hash, &row.tenant, role, customer);
        loaded += 1;
    }
    for hash in &revoked {
        ring.remove(hash);
    }
    Ok(loaded)
}

/// Reloads stored keys every `every`, so keys made through another process work here too.
pub fn spawn_refresh(store: Store, ring: KeyRing, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = load_stored(&store, &ring).await {
                tracing::debug!(error = %e, "api key refresh failed");
            }
        }
    })
}
