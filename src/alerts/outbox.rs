//! The webhook outbox: deliveries are rows of `webhook_deliveries` (ClickHouse), so they
//! survive a restart or a crash. Every process sends: the deliveries it makes at once, and
//! every second those due (retries, and whatever a process that stopped left). With Redis, a
//! lock per delivery lets one process at a time send it; each takes the lock, reads the
//! delivery's latest state again, and sends only if it is still due. Outcomes (the attempt,
//! the new state) are written in batches, every 100 ms at most; a process that dies before
//! writing one leaves the delivery pending, and it is sent again with the same id.
//!
//! A delivery is a `POST` of its event's JSON, signed (`signature`). A `2xx` delivers it;
//! anything else, or no answer within the timeout, is retried with exponential backoff (1 s,
//! 2 s, 4 s, … at most an hour apart, with jitter) until 24 hours after it was made; then it
//! has failed. A deleted endpoint's deliveries are cancelled, never sent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};

use super::{Context, signature};
use crate::domain::WebhookEndpoint;
use crate::ingest::shared::Lock;
use crate::store::StoreError;
use crate::store::webhooks::{AttemptRow, DeliveryRow};

/// How often due deliveries are looked for.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A delivery never attempted is left this long to the process that made it.
const NEW_LEFT_TO_MAKER_MS: i64 = 5_000;
/// Outcomes wait at most this long to be written together.
const RECORD_EVERY: Duration = Duration::from_millis(100);
/// Deliveries sent at once, at most.
const CONCURRENT_SENDS: usize = 64;
/// Retries stop this long after a delivery was made.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3_600_000;
/// The longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 3_600_000;

/// A delivery: tenant, event id, endpoint id.
pub type Key = (String, String, String);

/// An attempt's record and the delivery's new state, to write; the delivery's lock (with
/// replicas) is held until they are written, so that no replica reads the state from before.
struct Outcome {
    key: Key,
    attempt: AttemptRow,
    state: DeliveryRow,
    lock: Option<Lock>,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The sender of the process. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    context: Context,
    client: HttpClient,
    wake: mpsc::UnboundedSender<(Key, Option<DeliveryRow>)>,
    /// Outcomes to write.
    outcomes: mpsc::UnboundedSender<Outcome>,
    /// Deliveries this process is sending, or whose outcome it has yet to write.
    sending: Mutex<HashSet<Key>>,
    slots: Semaphore,
}

impl Outbox {
    /// The sender and its task.
    pub fn start(context: Context) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let (wake, mut woken) = mpsc::unbounded_channel();
        let (outcomes, recorded) = mpsc::unbounded_channel();
        let outbox = Self {
            inner: Arc::new(Inner {
                context,
                client: Client::builder(TokioExecutor::new()).build(https_connector()),
                wake,
                outcomes,
                sending: Mutex::new(HashSet::new()),
                slots: Semaphore::new(CONCURRENT_SENDS),
            }),
        };
        let recorder = tokio::spawn(outbox.clone().record(recorded));
        // Looking for due deliveries in a task of its own: new ones never wait for that query.
        let poller = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut tick = tokio::time::interval(POLL_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    outbox.send_due().await;
                }
            }
        });
        let task = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let _helpers = (AbortOnDrop(recorder), AbortOnDrop(poller));
                while let Some((key, row)) = woken.recv().await {
                    outbox.send_soon(key, row);
                }
            }
        });
        Ok((outbox, task))
    }

    /// Sends the delivery now if it is due (one whose retry was asked for).
    pub fn wake(&self, key: Key) {
        let _ = self.inner.wake.send((key, None));
    }

    /// Sends a delivery this process has just stored.
    pub fn send_new(&self, row: DeliveryRow) {
        let key = (row.tenant.clone(), row.id.clone(), row.endpoint.clone());
        let _ = self.inner.wake.send((key, Some(row)));
    }

    async fn send_due(&self) {
        let store = &self.inner.context.store;
        let now = now_ms();
        match store
            .due_deliveries(now, now - NEW_LEFT_TO_MAKER_MS, 1_000)
            .await
        {
            Ok(rows) => {
                for row in rows {
                    self.send_soon((row.tenant, row.id, row.endpoint), None);
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for due webhook deliveries failed"),
        }
    }

    /// Sends it unless this process is already at it; `row` is its state, when just stored
    /// by this process.
    fn send_soon(&self, key: Key, row: Option<DeliveryRow>) {
        let fresh = lock(&self.inner.sending).insert(key.clone());
        if !fresh {
            return;
        }
        let outbox = self.clone();
        tokio::spawn(async move {
            let mut recording = false;
            if let Ok(_slot) = outbox.inner.slots.acquire().await {
                match outbox.attempt(&key, row).await {
                    Ok(outcome) => recording = outcome,
                    Err(e) => tracing::warn!(tenant = %key.0, event = %key.1,
                        endpoint = %key.2, error = %e, "a webhook delivery could not be read; tried again"),
                }
            }
            if !recording {
                lock(&outbox.inner.sending).remove(&key);
            }
        });
    }

    /// Writes outcomes in batches; each delivery is this process's until its outcome is
    /// written.
    async fn record(self, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
        let store = self.inner.context.store.clone();
        while let Some(first) = outcomes.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + RECORD_EVERY;
            while let Ok(Some(more)) = tokio::time::timeout_at(deadline, outcomes.recv()).await {
                batch.push(more);
            }
            let attempts: Vec<AttemptRow> = batch.iter().map(|o| o.attempt.clone()).collect();
            let states: Vec<DeliveryRow> = batch.iter().map(|o| o.state.clone()).collect();
            let written = match store.insert_attempts(&attempts).await {
                Ok(()) => store.insert_deliveries(&states).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, deliveries = batch.len(),
                    "webhook outcomes not written: those deliveries are sent again");
            }
            for outcome in &mut batch {
                if let Some(held) = &mut outcome.lock {
                    held.give_back().await;
                }
            }
            let mut sending = lock(&self.inner.sending);
            for outcome in &batch {
                sending.remove(&outcome.key);
            }
        }
    }

    /// One attempt, under the delivery's lock where replicas share Redis; whether an outcome
    /// went to be written (the lock with it, given back once it is).
    async fn attempt(&self, key: &Key, row: Option<DeliveryRow>) -> Result<bool, StoreError> {
        let context = &self.inner.context;
        let mut held = context.redis.clone().map(|redis| {
            let name = format!("webhook:{}:{}:{}", key.0, key.1, key.2);
            Lock::new(redis, context.store.database(), &name)
        });
        if let Some(held) = &mut held {
            // The read, the attempt and its record; a sender that dies holding it delays the
            // delivery by this much.
            let hold = context.webhook_timeout + Duration::from_secs(10);
            match held.try_take(hold.as_millis() as u64).await {
                Ok(true) => {}
                // Another replica is sending it.
                Ok(false) => return Ok(false),
                Err(e) => {
                    tracing::debug!(error = %e, "redis unavailable; the delivery waits");
                    return Ok(false);
                }
            }
        }
        let outcome = self.attempt_held(key, row).await;
        match outcome {
            Ok(Some((attempt, state))) => {
                let outcome = Outcome {
                    key: key.clone(),
                    attempt,
                    state,
                    lock: held,
                };
                Ok(self.inner.outcomes.send(outcome).is_ok())
            }
            other => {
                if let Some(held) = &mut held {
                    held.give_back().await;
                }
                other.map(|_| false)
            }
        }
    }

    /// The attempt's record and the delivery's new state, if it was due.
    async fn attempt_held(
        &self,
        (tenant, id, endpoint): &Key,
        row: Option<DeliveryRow>,
    ) -> Result<Option<(AttemptRow, DeliveryRow)>, StoreError> {
        let context = &self.inner.context;
        let store = &context.store;
        // Alone, a process knows the state of what it just stored; replicas read it again
        // under the lock, since another may have sent it meanwhile.
        let row = match row {
            Some(row) if context.redis.is_none() => Some(row),
            _ => store
                .deliveries(tenant, Some(id), Some(endpoint), 1)
                .await?
                .pop(),
        };
        let Some(mut row) = row else {
            return Ok(None);
        };
        if row.state != "pending" || row.next_attempt_ms > now_ms() {
            return Ok(None);
        }
        let target = context
            .catalog
            .tenant(tenant)
            .webhook_endpoints
            .get(endpoint)
            .cloned();
        let Some(target) = target else {
            row.state = "cancelled".into();
            row.last_error = "the endpoint was deleted".into();
            row.version = next_version(row.version);
            store.insert_deliveries(&[row]).await?;
            return Ok(None);
        };
        let started = Instant::now();
        let at_ms = now_ms();
        let outcome = self.post(&target, &row.payload).await;
        let (status, error) = match outcome {
            Ok(status) if (200..300).contains(&status) => (status, String::new()),
            Ok(status) => (status, format!("answered {status}")),
            Err(error) => (0, error),
        };
        row.attempts += 1;
        let attempt = AttemptRow {
            tenant: tenant.clone(),
            id: id.clone(),
            endpoint: endpoint.clone(),
            attempt: row.attempts,
            at_ms,
            status,
            error: error.clone(),
            duration_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let now = now_ms();
        row.state = if error.is_empty() {
            "delivered".into()
        } else if now - row.created_ms >= GIVE_UP_AFTER_MS {
            "failed".into()
        } else {
            row.next_attempt_ms = now + backoff_ms(row.attempts);
            "pending".into()
        };
        tracing::info!(tenant = %tenant, event = %id, endpoint = %endpoint, attempt = row.attempts,
            status, state = %row.state, "webhook attempt");
        row.last_status = status;
        row.last_error = error;
        row.version = next_version(row.version);
        Ok(Some((attempt, row)))
    }

    /// POSTs `body` to the endpoint, signed; the status, or why there is none.
    async fn post(&self, target: &WebhookEndpoint, body: &str) -> Result<u16, String> {
        let t = chrono::Utc::now().timestamp();
        let request = hyper::Request::post(target.url.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("meterhouse-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header(signature::HEADER, signature::sign(&target.secret, t, body))
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| format!("the endpoint's url cannot be requested: {e}"))?;
        let timeout = self.inner.context.webhook_timeout;
        match tokio::time::timeout(timeout, self.inner.client.request(request)).await {
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Ok(Err(e)) => Err(format!("request failed: {e}")),
            Ok(Ok(response)) => Ok(response.status().as_u16()),
        }
    }
}

/// HTTP, and HTTPS checked against the system's roots (none found: HTTPS attempts fail, and
/// say why).
fn https_connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    let provider = rustls::crypto::ring::default_provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider) {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(error = %e, "no TLS root certificates found: https webhooks will fail");
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|c| {
                c.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
            match config {
                Ok(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
                Err(e) => unreachable!("ring supports the default protocol versions: {e}"),
            }
        }
    };
    builder.https_or_http().enable_http1().build()
}

/// The wait before attempt `attempts + 1`: 1 s doubled per attempt, at most an hour, ±20%.
pub fn backoff_ms(attempts: u32) -> i64 {
    let base = 1_000i64.saturating_mul(1i64 << attempts.saturating_sub(1).min(20));
    let base = base.min(MAX_BACKOFF_MS);
    let jitter = rand::random_range(0.8..1.2);
    (base as f64 * jitter) as i64
}

/// A version above `previous` and at least now (microseconds).
pub fn next_version(previous: u64) -> u64 {
    let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
    now.max(previous + 1)
}

/// Stops the outcome writer with the sender.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_up_to_an_hour() {
        for (attempts, base) in [
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (12, 2_048_000),
            (13, 3_600_000),
            (40, 3_600_000),
        ] {
            let wait = backoff_ms(attempts);
            assert!(
                wait >= base * 8 / 10 && wait <= base * 12 / 10,
                "{attempts}: {wait}"
            );
        }
    }

    #[test]
    fn a_new_version_is_above_the_last_even_from_the_future() {
        assert!(next_version(0) > 1_700_000_000_000_000);
        assert_eq!(next_version(u64::MAX / 2), u64::MAX / 2 + 1);
    }
}
