//! The HTTP server: accepts connections and serves the router on each, with the limits that
//! keep a slow or idle client from holding a connection or a request open: a request's headers
//! must arrive within [`HEADER_TIMEOUT`] (which also closes a keep-alive connection left idle
//! that long), and a body that stops arriving for [`BODY_TIMEOUT`] is answered `408`. On
//! shutdown it stops accepting and waits for the requests in flight.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// A request's headers, and the next request on a keep-alive connection, within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a request body may pause between two of its pieces.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        BODY_TIMEOUT,
    ));
    // HTTP/1 only, served without sniffing for HTTP/2 (`serve_connection` with a set version):
    // the sniffing read has no deadline, so a connection that sent nothing would be held for
    // good; with HTTP/1 set, the header timeout runs from the first moment.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // Room for heads past the router's own bounds, so that those are answered in the
        // error shape (`http::limit_head`) rather than with hyper's empty 431.
        .max_buf_size(1 << 20);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain timeout; stopping anyway");
    }
}
