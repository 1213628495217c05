//! Events in: decode and validate a request, extract meter samples, deduplicate, group-commit.

pub mod batcher;
pub mod dedup;
pub mod parse;
pub mod samples;

pub use batcher::{Ack, IngestError, Ingestor};

/// At most this many events in one request (docs/api.md).
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// At most this many bytes in one request body (docs/api.md).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
