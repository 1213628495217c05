//! The documents of a tenant's catalog and their rules: meters and their aggregations, plans
//! and prices, customers, subscriptions and their phases, alerts and webhook endpoints. Types and validation only, no IO;
//! they build on `billing`'s values (intervals, currencies, rating models). `weighted` is the
//! arithmetic of time-weighted meters, shared by the reads and the grain that stores it.

pub mod alert;
pub mod customer;
pub mod meter;
pub mod plan;
pub mod subscription;
pub mod weighted;

pub use alert::{Alert, WebhookEndpoint};
pub use customer::Customer;
pub use meter::{Aggregation, Meter};
pub use plan::Plan;
pub use subscription::Subscription;
