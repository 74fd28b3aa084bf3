//! Serving, then graceful shutdown in logged phases with a hard deadline.
//!
//! 1. **not serving**: health and `/readyz` report NOT_SERVING; RPCs are still served so
//!    load balancers can notice during the drain delay;
//! 2. **stop accepting**: the listener closes (new connections are refused) and health
//!    `Watch` streams end;
//! 3. **goaway**: every connection gets GOAWAY; in-flight RPCs run to completion;
//! 4. **deadline**: whatever is still open when `shutdown.timeout` (counted from the
//!    signal) expires is closed by force. A second signal skips to this phase.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use super::builder::BoundServer;
use super::connection::{self, ConnectionShared};

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when GOAWAY was sent that then closed on their own.
    pub drained: usize,
    /// Connections closed by force at the deadline (or on a second signal).
    pub forced: usize,
    /// From the shutdown signal to the end.
    pub elapsed: Duration,
}

/// What starts (first event) and hurries (second event) a shutdown.
pub(super) trait ShutdownTrigger: Send {
    /// Completes at the next trigger event.
    fn next(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A single future: it starts the shutdown; nothing hurries it.
pub(super) struct Trigger<F>(Option<Pin<Box<F>>>);

impl<F: Future<Output = ()> + Send> Trigger<F> {
    pub(super) fn new(future: F) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl<F: Future<Output = ()> + Send> ShutdownTrigger for Trigger<F> {
    fn next(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            match self.0.as_mut() {
                Some(future) => {
                    future.await;
                    self.0 = None;
                }
                None => std::future::pending().await,
            }
        })
    }
}

/// SIGTERM (what orchestrators send) and SIGINT (Ctrl-C).
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

impl ShutdownTrigger for Signals {
    fn next(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            tokio::select! {
                _ = self.term.recv() => tracing::info!("received SIGTERM"),
                _ = self.int.recv() => tracing::info!("received SIGINT"),
            }
        })
    }
}

/// Serves until the trigger fires, then shuts down as the module describes.
pub(super) async fn run(server: BoundServer, mut trigger: impl ShutdownTrigger) -> ShutdownReport {
    let BoundServer {
        listener,
        admin,
        routes,
        fallback,
        config,
        health,
        metrics,
        observer,
    } = server;
    let (goaway_tx, goaway_rx) = watch::channel(false);
    let shared = Arc::new(ConnectionShared::new(
        &config,
        routes,
        fallback,
        metrics.clone(),
        observer,
        goaway_rx,
    ));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(crate::admin::serve(
        admin,
        health.clone(),
        metrics.clone(),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    let mut connections = JoinSet::new();

    accept_until(&listener, &shared, &mut connections, trigger.next()).await;
    let started = Instant::now();
    let deadline = started + config.shutdown.timeout;
    let drain = config.shutdown.drain_delay;
    tracing::info!(
        phase = "not_serving",
        drain_delay = ?drain,
        deadline = ?config.shutdown.timeout,
        "shutdown: reporting NOT_SERVING; still serving during the drain delay (signal again to force)"
    );
    health.set_all_not_serving();

    let hurried = tokio::select! {
        _ = accept_until(&listener, &shared, &mut connections, sleep(drain)) => false,
        _ = trigger.next() => true,
    };
    drop(listener);
    health.end_watches();
    let open = connections.len();
    tracing::info!(
        phase = "stop_accepting",
        connections = open,
        "shutdown: stopped accepting; sending GOAWAY"
    );
    goaway_tx.send_replace(true);

    if !hurried {
        tokio::select! {
            _ = async { while connections.join_next().await.is_some() {} } => {}
            _ = sleep_until(deadline) => {
                tracing::warn!(phase = "deadline", connections = connections.len(), "shutdown: deadline reached; closing the remaining connections");
            }
            _ = trigger.next() => {
                tracing::warn!(phase = "forced", connections = connections.len(), "shutdown: second signal; closing every connection now");
            }
        }
    }
    let forced = connections.len();
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    metrics.forced_closes.inc_by(forced as u64);
    let _ = admin_stop.send(());
    let _ = admin_task.await;

    let report = ShutdownReport {
        drained: open.saturating_sub(forced),
        forced,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        phase = "done",
        drained = report.drained,
        forced = report.forced,
        elapsed = ?report.elapsed,
        "shutdown: complete"
    );
    report
}

/// Accepts connections until `until` completes, reaping finished ones as it goes.
async fn accept_until(
    listener: &TcpListener,
    shared: &Arc<ConnectionShared>,
    connections: &mut JoinSet<()>,
    until: impl Future<Output = ()>,
) {
    tokio::pin!(until);
    loop {
        tokio::select! {
            biased;
            _ = &mut until => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    connections.spawn(connection::drive(tcp, shared.clone()));
                }
                Err(error) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed; retrying in 50 ms");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined
                    && error.is_panic()
                {
                    tracing::error!(%error, "connection task panicked");
                }
            }
        }
    }
}
