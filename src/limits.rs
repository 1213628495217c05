//! Per-key rate limits (`governor`): requests per second and events per second.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Both limits, keyed by the API key's id. Cheap to clone.
#[derive(Clone)]
pub struct RateLimits {
    requests: Arc<DefaultKeyedRateLimiter<u64>>,
    events: Arc<DefaultKeyedRateLimiter<u64>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// `rps` requests and `eps` events per second per key; a burst of one second's worth.
    /// The event burst is at least one full request (10,000 events).
    pub fn new(rps: u32, eps: u32) -> Self {
        let rps = NonZeroU32::new(rps.max(1)).unwrap_or(NonZeroU32::MIN);
        let eps_rate = NonZeroU32::new(eps.max(1)).unwrap_or(NonZeroU32::MIN);
        let eps_burst = NonZeroU32::new(eps.max(super::ingest::MAX_EVENTS_PER_REQUEST as u32))
            .unwrap_or(NonZeroU32::MIN);
        Self {
            requests: Arc::new(RateLimiter::keyed(Quota::per_second(rps))),
            events: Arc::new(RateLimiter::keyed(
                Quota::per_second(eps_rate).allow_burst(eps_burst),
            )),
            clock: DefaultClock::default(),
        }
    }

    pub fn check_request(&self, key_id: u64) -> Result<(), ApiError> {
        self.requests
            .check_key(&key_id)
            .map_err(|not_until| self.limited(not_until.wait_time_from(self.clock.now())))
    }

    pub fn check_events(&self, key_id: u64, events: usize) -> Result<(), ApiError> {
        let n = NonZeroU32::new(events as u32).unwrap_or(NonZeroU32::MIN);
        match self.events.check_key_n(&key_id, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.limited(not_until.wait_time_from(self.clock.now()))),
            // More than the burst can ever hold; decode() already caps a request at 10,000.
            Err(_) => Err(ApiError::PayloadTooLarge(format!(
                "{events} events exceed this key's burst limit"
            ))),
        }
    }

    fn limited(&self, wait: std::time::Duration) -> ApiError {
        ApiError::RateLimited {
            retry_after_s: wait.as_secs() + 1,
        }
    }
}
