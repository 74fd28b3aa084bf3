//! TLS on one connection: the handshake, run in the connection's own task (never in the
//! accept loop) and bounded by the connection's handshake deadline, so a client that opens
//! TCP and sends nothing costs one sleeping task and delays no other; then what it
//! negotiated, and its count in `keel_tls_handshakes_total`.
//!
//! Each handshake takes the listener's current `rustls::ServerConfig` when it starts
//! (`ServerTls::acceptor`), so a certificate rotation applies to new handshakes only.

use keel_tls::tokio_rustls::server::TlsStream;
use keel_tls::{Negotiated, ServerTls};
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
    let accept = tls.acceptor().accept(tcp);
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
        Some(Err(error)) => {
            let reason = keel_tls::failure_reason(&error);
            metrics.tls_handshake(reason);
            tracing::debug!(listener = metrics.name, ?peer, reason, %error, "TLS handshake failed");
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
