//! Which event ids a tenant has already had accepted: an in-memory window of 128-bit keys,
//! rebuilt from ClickHouse at start-up so that dedup survives a restart.
//!
//! Memory: about 40 bytes per remembered id (a 16-byte key in a hash set at its load factor).
//! The window is both a time (ingestion time) and a count; the oldest generation goes first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use hashbrown::HashSet;
use xxhash_rust::xxh3::Xxh3Default;

use crate::store::{Store, StoreError};

/// The dedup key of an event: a 128-bit hash of (tenant, id). Tenants never contain NUL.
pub fn key(tenant: &str, id: &str) -> u128 {
    let mut hasher = Xxh3Default::new();
    hasher.update(tenant.as_bytes());
    hasher.update(&[0]);
    hasher.update(id.as_bytes());
    hasher.digest128()
}

/// Keys are already uniform hashes: use their bits directly.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}

pub type KeySet = HashSet<u128, BuildHasherDefault<KeyHasher>>;

/// Generations per window: eviction drops one generation, i.e. 1/16 of the window, at a time.
const GENERATIONS: i64 = 16;

/// Accepted keys by generation: ingestion-time slice, then a sequence number, so that no
/// generation holds more than `max_ids / GENERATIONS` keys and the cap holds however fast ids
/// arrive.
pub struct DedupSet {
    generations: BTreeMap<(i64, u32), KeySet>,
    span_ms: i64,
    window_ms: i64,
    max_ids: usize,
    len: usize,
}

impl DedupSet {
    pub fn new(window: Duration, max_ids: usize) -> Self {
        let window_ms = (window.as_millis() as i64).max(GENERATIONS);
        Self {
            generations: BTreeMap::new(),
            span_ms: window_ms / GENERATIONS,
            window_ms,
            max_ids,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, key: u128) -> bool {
        self.generations
            .values()
            .rev()
            .any(|set| set.contains(&key))
    }

    /// Keys a generation holds at most.
    fn generation_cap(&self) -> usize {
        (self.max_ids / GENERATIONS as usize).max(1)
    }

    /// Records keys accepted at `ingested_ms`, then evicts what fell out of the window or
    /// over the cap.
    pub fn insert_all(&mut self, keys: impl IntoIterator<Item = u128>, ingested_ms: i64) {
        let slice = ingested_ms.div_euclid(self.span_ms);
        let cap = self.generation_cap();
        let mut sequence = self
            .generations
            .range((slice, 0)..=(slice, u32::MAX))
            .next_back()
            .map_or(0, |((_, seq), _)| *seq);
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            let generation = self.generations.entry((slice, sequence)).or_default();
            let room = cap.saturating_sub(generation.len());
            if room == 0 {
                sequence += 1;
                continue;
            }
            for key in keys.by_ref().take(room) {
                if generation.insert(key) {
                    self.len += 1;
                }
            }
        }
        self.evict(ingested_ms);
    }

    fn evict(&mut self, now_ms: i64) {
        let oldest_kept = (now_ms - self.window_ms).div_euclid(self.span_ms);
        while let Some(&oldest) = self.generations.keys().next() {
            let too_old = oldest.0 < oldest_kept;
            let too_many = self.len > self.max_ids && self.generations.len() > 1;
            if !(too_old || too_many) {
                break;
            }
            self.len -= self.generations.remove(&oldest).map_or(0, |set| set.len());
        }
    }

    /// Rebuilds the set from the events ClickHouse holds for the window.
    pub async fn load(
        store: &Store,
        window: Duration,
        max_ids: usize,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let mut set = Self::new(window, max_ids);
        let mut by_generation: HashMap<i64, Vec<u128>> = HashMap::new();
        for (key, ingested_ms) in accepted_since(store, now_ms - set.window_ms).await? {
            by_generation
                .entry(ingested_ms.div_euclid(set.span_ms))
                .or_default()
                .push(key);
        }
        let mut generations: Vec<_> = by_generation.into_iter().collect();
        generations.sort_unstable_by_key(|(generation, _)| *generation);
        for (generation, keys) in generations {
            set.insert_all(keys, generation * set.span_ms);
        }
        set.evict(now_ms);
        Ok(set)
    }
}

/// The keys of the events ClickHouse accepted since `since_ms`, with when each was accepted.
pub async fn accepted_since(store: &Store, since_ms: i64) -> Result<Vec<(u128, i64)>, StoreError> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Accepted {
        tenant: String,
        id: String,
        ingested_ms: i64,
    }
    let mut accepted = Vec::new();
    for shard in store.shards() {
        let mut cursor = crate::store::queries::accepted_since(since_ms)
            .query(shard.client())
            .fetch::<Accepted>()?;
        while let Some(row) = cursor.next().await? {
            accepted.push((key(&row.tenant, &row.id), row.ingested_ms));
        }
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn keys_separate_tenants_and_ids() {
        assert_ne!(key("a", "bc"), key("ab", "c"));
        assert_ne!(key("t1", "e1"), key("t2", "e1"));
        assert_eq!(key("t1", "e1"), key("t1", "e1"));
    }

    #[test]
    fn a_key_is_remembered_within_the_window_and_forgotten_after() {
        let mut set = DedupSet::new(16 * HOUR, 1_000);
        set.insert_all([1], 0);
        set.insert_all([2], 15 * 3_600_000);
        assert!(set.contains(1));
        set.insert_all([3], 17 * 3_600_000 + 1);
        assert!(
            !set.contains(1),
            "an hour past the window the first generation is gone"
        );
        assert!(set.contains(2) && set.contains(3));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn the_oldest_generation_goes_first_when_over_capacity() {
        let mut set = DedupSet::new(16 * HOUR, 3);
        set.insert_all([1, 2], 0);
        set.insert_all([3, 4], 3_600_000);
        // Generations of one id (3 / 16, at least 1): only the oldest goes.
        assert!(!set.contains(1));
        assert!(set.contains(2) && set.contains(3) && set.contains(4));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn the_cap_holds_when_ids_arrive_faster_than_a_generation_passes() {
        // 1,600 ids at most: generations of 100. Ten batches of 1,000 within one time slice
        // (a 72-hour window has 4.5-hour slices) must not grow one generation past its share.
        let mut set = DedupSet::new(72 * HOUR, 1_600);
        for batch in 0..10u128 {
            set.insert_all((0..1_000).map(|i| batch * 1_000 + i), 1_000 + batch as i64);
        }
        assert!(set.len() <= 1_600, "{} ids held", set.len());
        assert!(set.len() >= 1_500, "{} ids held", set.len());
        // The newest are remembered, the oldest forgotten.
        assert!((8_500..10_000).all(|k| set.contains(k)));
        assert!(!set.contains(0));
    }

    #[test]
    fn the_newest_generation_is_kept_when_the_cap_is_tiny() {
        let mut set = DedupSet::new(HOUR, 1);
        set.insert_all([1, 2, 3], 0);
        assert_eq!(set.len(), 1);
        assert!(set.contains(3));
    }
}
