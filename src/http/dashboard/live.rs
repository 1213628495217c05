//! Current-period figures that refresh on their own: a page holds them in one element with
//! the address of their refresh and a digest of what it shows; `assets/live.js` asks again
//! and again, and each request waits (up to [`WAIT`]) until the figures differ from that
//! digest, so a new event shows within a second of being acknowledged.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Json;
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::PageError;
use crate::http::AppState;

/// The longest a refresh request waits for a change.
const WAIT: Duration = Duration::from_secs(4);
/// How often a waiting request looks again.
const LOOK_EVERY: Duration = Duration::from_millis(400);

#[derive(Debug, Default, Deserialize)]
pub(super) struct LiveParams {
    /// The digest of the figures the page shows.
    seen: Option<String>,
}

/// The figures as HTML, and their digest.
#[derive(Debug, Serialize)]
pub(super) struct Figures {
    digest: String,
    html: String,
}

fn digest(html: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(html.as_bytes()))
}

/// The element holding `figures`, refreshed from `src`.
pub(super) fn section(src: &str, figures: Markup) -> Markup {
    let html = figures.into_string();
    html! {
        section #live data-src=(src) data-digest=(digest(&html)) data-refreshes="0" {
            (maud::PreEscaped(html))
        }
    }
}

/// `render()`'s figures once they differ from the digest the page has, or after [`WAIT`].
pub(super) async fn wait_for_change<F, Fut>(
    state: &AppState,
    params: &LiveParams,
    render: F,
) -> Result<Json<Figures>, PageError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Markup, PageError>>,
{
    let _waiting = Waiting::start(&state.metrics.dashboard_live_waiting);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let html = render().await?.into_string();
        let digest = digest(&html);
        let changed = params.seen.as_deref() != Some(digest.as_str());
        if changed || tokio::time::Instant::now() + LOOK_EVERY > deadline {
            return Ok(Json(Figures { digest, html }));
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Counts a waiting request in the gauge until it ends, also when the browser goes away.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
