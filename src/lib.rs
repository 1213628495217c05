//! meterhouse: usage metering and rating for usage-based billing, on ClickHouse.
//!
//! - [`config`]: flags and `METERHOUSE_*` variables of `meterhouse serve`.
//! - [`account`]: a customer's active subscriptions and current usage, shared by the read routes.
//! - [`app`]: start-up (store, migrations, dedup state, keys, batcher) and graceful shutdown.
//! - [`http`]: the HTTP API, one module per resource, and the shared [`http::AppState`].
//! - [`server`]: the HTTP server loop: connection and body timeouts, graceful drain.
//! - [`error`]: the one error type of the HTTP edge and docs/api.md's error body.
//! - [`auth`]: API keys (held hashed), tenants and roles.
//! - [`limits`]: per-key request and event rate limits.
//! - [`ingest`]: body decoding and validation, meter samples, dedup, group commit.
//! - [`billing`]: billing windows, rating and currencies; pure, no IO.
//! - [`catalog`]: tenants' meters and settings, in memory.
//! - [`store`]: ClickHouse client, error classes, rows, migrations, an owned local server.
//! - [`usage`]: usage and charges of a subscription over a window (store + billing).
//! - [`backfill`]: samples and rollups for a meter created after its events arrived.
//! - [`metrics`]: Prometheus text metrics.
//! - [`loadgen`]: the ingest load harness behind `meterhouse loadgen`.
//! - [`readbench`]: the read-latency harness behind `meterhouse readbench`.
//! - [`soak`]: the long steady-load run behind `meterhouse soak`.

#![warn(rust_2018_idioms, unreachable_pub)]

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
