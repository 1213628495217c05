//! Events in: decode and validate a request, extract meter samples, deduplicate, group-commit.

pub mod batcher;
pub mod cloudevents;
pub mod dedup;
pub mod ledger;
pub mod parse;
pub mod repair;
pub mod samples;
pub mod settle;
pub mod shared;
pub mod writers;

pub use batcher::{Ack, IngestError, Ingestor};

/// At most this many bytes in a property value a meter groups or counts distinct values of:
/// it is stored in every sample and rollup row and copied into every read that groups by it.
pub const MAX_GROUP_VALUE_BYTES: usize = 1024;

/// At most this many events in one request (docs/api.md).
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// At most this many bytes in one request body (docs/api.md).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
