//! Usage alerts, fired the moment a committed batch takes a subscription's usage to a
//! threshold, and the signed webhooks that tell of them.
//!
//! - `watch`: which customers each committed batch touched (a [`BatchObserver`]), and the task
//!   that rates their periods and fires the alerts reached, once per alert, subscription and
//!   billing period (`alert_firings`, and a Redis claim between replicas).
//! - `outbox`: the deliveries of fired alerts (`webhook_deliveries`, durable in ClickHouse),
//!   signed, sent, retried with backoff for 24 hours; one sender per delivery at a time.
//! - `signature`: the `Meterhouse-Signature` header.
//!
//! [`BatchObserver`]: crate::ingest::batcher::BatchObserver

pub mod outbox;
pub mod signature;
pub mod watch;

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::catalog::Catalog;
use crate::readmodel::UsageReader;
use crate::store::Store;

/// The type of event an alert sends.
pub const ALERT_TRIGGERED: &str = "alert.triggered";

/// What alerts and their webhooks need of the process.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub catalog: Catalog,
    pub usage: UsageReader,
    /// Shared with other replicas (`--redis-url`): claims and send locks go through it.
    pub redis: Option<ConnectionManager>,
    /// How long a receiver may take to answer.
    pub webhook_timeout: Duration,
}

/// The running alert task and webhook sender.
pub struct Started {
    /// To tell of committed batches (the batcher's observer).
    pub touches: watch::Touches,
    /// The sender's handle (for `POST /v1/webhook_deliveries/{id}/retry`).
    pub outbox: outbox::Outbox,
    /// Ends by itself once every `Touches` is dropped and what they told is looked at.
    pub watcher: tokio::task::JoinHandle<()>,
    pub sender: tokio::task::JoinHandle<()>,
}

/// Starts the alert task and the webhook sender.
pub fn start(context: Context) -> anyhow::Result<Started> {
    let (outbox, sender) = outbox::Outbox::start(context.clone())?;
    let (touches, watcher) = watch::start(context, outbox.clone());
    Ok(Started {
        touches,
        outbox,
        watcher,
        sender,
    })
}
