//! TLS on one connection: the handshake, run in the connection's own task (never in the
//! accept loop) and bounded by the connection's handshake deadline, so a client that opens
//! TCP and sends nothing costs one sleeping task and delays no other; then what it
//! negotiated, and its count in `keel_tls_handshakes_total`.
//!
//! Each handshake takes the listener's current `rustls::ServerConfig` when it starts
//! (`ServerTls::acceptor`), so a certificate rotation applies to new handshakes only.
//!
//! A refused handshake ends in a lingering close: the alert, then FIN, then what the client
//! sent meanwhile read and discarded for a moment. In TLS 1.3 the client's handshake is
//! over before the server judges its certificate, so a client (curl, grpc-core) may have
//! sent its first request already; closing with those bytes unread would send a reset,
//! and the client would report a broken connection instead of the alert that says why.

use std::time::Duration;

use keel_tls::tokio_rustls::server::TlsStream;
use keel_tls::{Negotiated, ServerTls};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Stage;
use super::metrics::ListenerMetrics;

/// Why a connection got no TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoSession {
    /// The handshake failed or did not finish in time.
    Failed,
    /// The listener began draining first: the connection had nothing to finish.
    Draining,
}

/// Runs the TLS handshake on `tcp` until `deadline` (none: unbounded) or until the
/// listener drains, counting its outcome.
pub(super) async fn handshake(
    tcp: TcpStream,
    tls: &ServerTls,
    deadline: Option<Instant>,
    metrics: &ListenerMetrics,
    stage: &watch::Receiver<Stage>,
    peer: Option<std::net::SocketAddr>,
) -> Result<(TlsStream<TcpStream>, Negotiated), NoSession> {
    let accept = tls.acceptor().accept(tcp).into_fallible();
    let timed = async {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, accept).await.ok(),
            None => Some(accept.await),
        }
    };
    let mut stage = stage.clone();
    let outcome = tokio::select! {
        outcome = timed => outcome,
        _ = stage.wait_for(|stage| *stage != Stage::Serving) => return Err(NoSession::Draining),
    };
    match outcome {
        Some(Ok(stream)) => {
            metrics.tls_handshake("ok");
            let negotiated = Negotiated::of(stream.get_ref().1);
            Ok((stream, negotiated))
        }
        Some(Err((error, tcp))) => {
            let reason = keel_tls::failure_reason(&error);
            metrics.tls_handshake(reason);
            tracing::debug!(listener = metrics.name, ?peer, reason, %error, "TLS handshake failed");
            linger(tcp).await;
            Err(NoSession::Failed)
        }
        None => {
            metrics.tls_handshake("timeout");
            metrics.handshake_timeouts.inc();
            tracing::debug!(
                listener = metrics.name,
                ?peer,
                "no TLS handshake within the handshake timeout; closing"
            );
            Err(NoSession::Failed)
        }
    }
}

/// How long a connection whose handshake failed is read after its alert: enough for a
/// client's request already in flight to arrive, short enough that refused clients hold
/// few connection slots.
const LINGER: Duration = Duration::from_millis(500);
/// The most a lingering connection reads before it is closed anyway.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes `tcp` after a refused handshake (whose alert tokio-rustls has written): sends
/// FIN, then reads and discards until the client closes, [`LINGER`] passes or
/// [`LINGER_BYTES`] arrived, so the close sends no reset that would overtake the alert.
async fn linger(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buffer = [0; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    })
    .await;
}
