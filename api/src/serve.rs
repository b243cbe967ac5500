//! The HTTP server: accepts connections and serves the router on each, with limits that
//! keep slow or oversized clients from holding the process.
//!
//! `axum::serve` sets no timer on hyper, so hyper's header read timeout never fires: a
//! client sending half a request line kept its connection (and its memory) for as long
//! as it liked. Here each HTTP/1 connection gets:
//!
//! - a header read timeout (`--header-read-timeout`): the whole head of a request must
//!   arrive within it, or the connection is closed;
//! - a header size limit (`--max-header-bytes`): a larger head is answered 431;
//! - a body read timeout (`--body-read-timeout`, a layer of the router): a body that
//!   stops arriving for that long fails the request with a 408 that says so.
//!
//! Shutdown stops accepting, asks every open connection to finish its request in flight
//! and close, and waits for them.

use std::{io, time::Duration};

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{AppState, router};

/// The default of `--max-header-bytes`.
pub(crate) const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;

/// The smallest `--max-header-bytes` hyper takes.
const MIN_HEAD_BYTES: usize = 8192;

/// `--max-header-bytes`: a number of bytes, at least [`MIN_HEAD_BYTES`].
pub(crate) fn parse_head_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if bytes < MIN_HEAD_BYTES {
        return Err(format!(
            "{bytes} is below the smallest limit, {MIN_HEAD_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

/// How long to wait before accepting again after an accept error (out of file
/// descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves the API on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let (header_read_timeout, max_head_bytes) = (
        state.config().header_read_timeout,
        state.config().max_header_bytes.max(MIN_HEAD_BYTES),
    );
    let router = router(state);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Reap the connections that ended, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(max_head_bytes);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
