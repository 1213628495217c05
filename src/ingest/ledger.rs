//! Which event ids are accepted, and which a batch may take: in this process's memory
//! (embedded, one process per database) or in Redis, shared by every replica.

use std::collections::HashMap;

use super::dedup::{DedupSet, KeySet};
use super::settle::InDoubt;
use super::shared::SharedLedger;
use super::writers::WriterStatus;
use crate::store::{Store, StoreError};

/// What a batch may do with one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not accepted before: the batch inserts it.
    New,
    /// Accepted before: reported as a duplicate.
    Duplicate,
    /// Held by a batch whose outcome is not known yet: its request is refused (`503`), and its
    /// retry answered once that batch is settled.
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(String),
    /// Redis lost the accepted ids (or never had them): they are being loaded from ClickHouse.
    #[error("the accepted ids are being loaded into redis")]
    Reloading,
    /// Another process writes into the database while one of them keeps ids in its memory.
    #[error("{0}")]
    Conflict(String),
}

/// The accepted ids, embedded or shared.
pub enum Ledger {
    Embedded {
        accepted: DedupSet,
        in_doubt: InDoubt,
    },
    Shared(Box<SharedLedger>),
}

/// The verdicts on the ids of one batch.
pub enum Claims {
    /// Read from memory, id by id.
    Embedded,
    /// Claimed in Redis: every id claimed, and the verdicts that are not `New`.
    Shared {
        claimed: KeySet,
        not_new: HashMap<u128, Verdict>,
    },
}

impl Claims {
    /// Ids claimed for the batch that it does not insert (`taken` are those it does): their
    /// requests were refused. None in memory, where nothing is claimed ahead.
    pub fn unused(&self, taken: &KeySet) -> Vec<u128> {
        match self {
            Self::Embedded => Vec::new(),
            Self::Shared { claimed, not_new } => claimed
                .iter()
                .filter(|&key| !taken.contains(key) && !not_new.contains_key(key))
                .copied()
                .collect(),
        }
    }
}

impl Ledger {
    pub fn embedded(accepted: DedupSet) -> Self {
        Self::Embedded {
            accepted,
            in_doubt: InDoubt::default(),
        }
    }

    /// Ids remembered in this process (0 when they are shared).
    pub fn remembered(&self) -> usize {
        match self {
            Self::Embedded { accepted, .. } => accepted.len(),
            Self::Shared(_) => 0,
        }
    }

    /// Settles what is in doubt; until it is, no batch is inserted.
    pub async fn settle(&mut self, store: &Store) -> Result<(), LedgerError> {
        match self {
            Self::Embedded { accepted, in_doubt } => {
                for batch in in_doubt.settle(store).await? {
                    accepted.insert_all(batch.landed, batch.ingested_ms);
                }
                Ok(())
            }
            Self::Shared(shared) => shared.settle(store).await,
        }
    }

    /// Claims the ids of batch `batch_id`, stamped at `stamped_ms`: `keys`, per request, in
    /// order. In memory nothing is claimed ahead: verdicts are read id by id.
    pub async fn claim<'k>(
        &mut self,
        batch_id: u64,
        stamped_ms: i64,
        keys: impl Iterator<Item = &'k [u128]>,
    ) -> Result<Claims, LedgerError> {
        match self {
            Self::Embedded { .. } => Ok(Claims::Embedded),
            Self::Shared(shared) => {
                let mut claimed = KeySet::default();
                let ordered: Vec<u128> = keys
                    .flatten()
                    .copied()
                    .filter(|&key| claimed.insert(key))
                    .collect();
                let not_new = shared.claim(batch_id, stamped_ms, &ordered).await?;
                Ok(Claims::Shared { claimed, not_new })
            }
        }
    }

    /// The verdict on `key` of a batch's `claims`.
    pub fn verdict(&self, claims: &Claims, key: u128) -> Verdict {
        match (self, claims) {
            (Self::Embedded { accepted, in_doubt }, _) => {
                if in_doubt.holds_any(&[key]) {
                    Verdict::Busy
                } else if accepted.contains(key) {
                    Verdict::Duplicate
                } else {
                    Verdict::New
                }
            }
            (Self::Shared(_), Claims::Shared { claimed, not_new }) => match not_new.get(&key) {
                Some(&verdict) => verdict,
                None if claimed.contains(&key) => Verdict::New,
                None => Verdict::Busy,
            },
            (Self::Shared(_), Claims::Embedded) => Verdict::Busy,
        }
    }

    /// Gives back claimed `keys` that batch `batch_id` will not insert (their requests were
    /// refused).
    pub async fn release(&mut self, batch_id: u64, keys: &[u128]) -> Result<(), LedgerError> {
        match self {
            Self::Embedded { .. } => Ok(()),
            Self::Shared(shared) => shared.release(batch_id, keys).await,
        }
    }

    /// Whether an insert attempt may start now: not beside another writer that keeps ids in
    /// its own memory, and, shared, not while cut off from Redis or while Redis is loaded.
    pub async fn may_insert(&mut self, writer: &WriterStatus) -> Result<(), LedgerError> {
        if let Some(conflict) = writer.conflict() {
            return Err(LedgerError::Conflict(conflict));
        }
        match self {
            Self::Embedded { .. } => Ok(()),
            Self::Shared(shared) => shared.may_insert().await,
        }
    }

    /// Batch `batch_id` is stored: its `keys` are accepted.
    pub async fn committed(&mut self, batch_id: u64, keys: KeySet, stamped_ms: i64) {
        match self {
            Self::Embedded { accepted, .. } => accepted.insert_all(keys, stamped_ms),
            Self::Shared(shared) => shared.committed(batch_id, keys).await,
        }
    }

    /// The stamp of the oldest batch held in doubt.
    pub fn oldest_in_doubt_ms(&self) -> Option<i64> {
        match self {
            Self::Embedded { in_doubt, .. } => in_doubt.oldest_ms(),
            Self::Shared(shared) => shared.oldest_in_doubt_ms(),
        }
    }

    /// Batch `batch_id` failed; with `in_doubt`, it may have landed and is settled before the
    /// next batch.
    pub async fn failed(&mut self, batch_id: u64, keys: KeySet, stamped_ms: i64, in_doubt: bool) {
        match self {
            Self::Embedded { in_doubt: held, .. } => {
                if in_doubt {
                    held.hold(batch_id, stamped_ms, keys);
                }
            }
            Self::Shared(shared) => shared.failed(batch_id, keys, stamped_ms, in_doubt).await,
        }
    }
}
