//! meterhouse: usage metering and rating for usage-based billing, on ClickHouse.
//!
//! Dependencies point one way, from the edge down to the pure leaves (`tests/layers.rs` checks
//! that no module depends on itself through others):
//!
//! - [`billing`]: billing periods, rating, currencies and rounding. Pure, no IO.
//! - [`domain`]: catalog documents and their rules: meters and aggregations, plans and prices,
//!   customers, subscriptions. Pure; builds on `billing`'s values.
//! - [`store`]: ClickHouse and nothing else: client and read budget, error classes, rows,
//!   every statement with its values (`sql`, `queries`, `usage_sql`, `combined_sql`,
//!   `series_sql`), event inserts under query ids, migrations, the catalog's and the API keys'
//!   tables, an owned local server.
//! - [`catalog`]: the tenants' catalogs in memory, one snapshot per tenant, kept current by
//!   polling the store; seed files.
//! - [`ingest`]: body decoding and validation, meter samples, the accepted ids (`ledger`: in
//!   memory, `dedup`, or shared through Redis, `shared`), group commit (`batcher`), in-doubt
//!   batches (`settle`), the writers of a database (`writers`). Tells whoever listens of each
//!   batch (`BatchObserver`).
//! - [`readmodel`]: usage reads: where each piece of a window is read from, the answers kept in
//!   memory and how they follow changes, their bulk preload, reports (usage rated into
//!   charges) and a customer's account.
//! - [`alerts`]: usage alerts fired as committed batches reach them, and their signed webhooks
//!   (a durable outbox in ClickHouse, retried with backoff).
//! - [`backfill`]: samples and rollups for a meter created after its events arrived.
//! - [`http`]: the HTTP API, one module per resource and one per vendor shape; translates only.
//!   `dashboard`: pages for people (links, sessions, charts) rendered from the same reads.
//! - [`server`]: the HTTP server loop: connection and body timeouts, graceful drain.
//! - [`auth`]: API keys (held hashed), tenants and roles; keys made through the API, kept
//!   current in every process (`stored`); dashboard links and sessions, signed (`links`). [`limits`]: per-key rate limits.
//! - [`error`]: the one error type of the HTTP edge and docs/api.md's error body.
//! - [`metrics`]: Prometheus text metrics. [`config`]: flags and `METERHOUSE_*` variables.
//! - [`app`]: start-up (store, migrations, the writer's registration and accepted ids, catalog,
//!   keys, read model, batcher) and graceful shutdown.
//!
//! The load, read and soak harnesses are bench targets (`benches/`), not part of the library.

#![warn(rust_2018_idioms, unreachable_pub)]

pub mod alerts;
pub mod app;
pub mod auth;
pub mod backfill;
pub mod billing;
pub mod catalog;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod readmodel;
pub mod server;
pub mod store;
