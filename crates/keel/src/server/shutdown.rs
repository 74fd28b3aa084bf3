//! Serving, then graceful shutdown in logged phases with a hard deadline, for a server's
//! main listener (gRPC, or a gateway's HTTP) and its admin listener.
//!
//! 1. **not serving**: health and `/readyz` report NOT_SERVING; requests are still served
//!    so load balancers can notice during the drain delay;
//! 2. **stop accepting**: the main listener closes (new connections are refused) and
//!    health `Watch` streams end;
//! 3. **goaway**: every connection gets GOAWAY; in-flight requests run to completion;
//! 4. **deadline**: whatever is still open when `shutdown.timeout` (counted from the
//!    signal) expires is closed by force. A second signal skips to this phase.
//!
//! The admin listener answers throughout (probes see the 503) and closes last.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::ShutdownConfig;
use crate::metrics::Metrics;
use crate::serving::{Listener, ListenerReport, Stage};
use keel_health::HealthRegistry;

/// Longest the admin listener waits for its requests once the main listener is done.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// How a shutdown went, for the main listener's connections and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open at GOAWAY that then closed on their own, every request finished.
    pub drained: usize,
    /// Connections whose transport failed while draining.
    pub failed: usize,
    /// Connections closed by force at the deadline (or on a second signal).
    pub forced: usize,
    /// Requests cut: in flight on a failed or forcibly closed connection.
    pub cut: usize,
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

/// A stream of events: the first starts the shutdown, the second hurries it.
pub(super) struct Events<S>(pub(super) Pin<Box<S>>);

impl<S: futures_util::Stream<Item = ()> + Send> ShutdownTrigger for Events<S> {
    fn next(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            use futures_util::StreamExt as _;
            if self.0.next().await.is_none() {
                std::future::pending::<()>().await;
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

/// A server's main listener, serving in its own task.
pub(crate) struct MainListener {
    /// The listener's name, for logs.
    pub(crate) name: &'static str,
    /// The serving task.
    pub(crate) task: JoinHandle<ListenerReport>,
    /// Moves it through its stages.
    pub(crate) stage: watch::Sender<Stage>,
}

/// Serves until the trigger fires, then shuts down as the module describes.
pub(crate) async fn run(
    main: MainListener,
    admin: Listener,
    health: HealthRegistry,
    metrics: Arc<Metrics>,
    config: &ShutdownConfig,
    mut trigger: impl ShutdownTrigger,
) -> ShutdownReport {
    let MainListener {
        name,
        mut task,
        stage,
    } = main;
    let (admin_stage, admin_stage_rx) = watch::channel(Stage::Serving);
    let mut admin_task = tokio::spawn(admin.serve(
        crate::admin::router(health.clone(), metrics.clone()),
        admin_stage_rx,
    ));

    trigger.next().await;
    let started = Instant::now();
    let deadline = started + config.timeout;
    let drain = config.drain_delay;
    tracing::info!(
        phase = "not_serving",
        drain_delay = ?drain,
        deadline = ?config.timeout,
        "shutdown: reporting NOT_SERVING; still serving during the drain delay (signal again to force)"
    );
    health.set_all_not_serving();

    let hurried = tokio::select! {
        () = sleep(drain) => false,
        () = trigger.next() => true,
    };
    stage.send_replace(Stage::Draining);
    health.end_watches();
    tracing::info!(
        phase = "stop_accepting",
        listener = name,
        connections = metrics.connection.listener(name).connections.get(),
        "shutdown: stopped accepting; sending GOAWAY"
    );

    let finished = if hurried {
        stage.send_replace(Stage::Closing);
        None
    } else {
        tokio::select! {
            joined = &mut task => Some(joined),
            () = sleep_until(deadline) => {
                tracing::warn!(phase = "deadline", "shutdown: deadline reached; closing the remaining connections");
                stage.send_replace(Stage::Closing);
                None
            }
            () = trigger.next() => {
                tracing::warn!(phase = "forced", "shutdown: second signal; closing every connection now");
                stage.send_replace(Stage::Closing);
                None
            }
        }
    };
    let joined = match finished {
        Some(joined) => joined,
        None => task.await,
    };
    let listener = joined.unwrap_or_else(|error| {
        tracing::error!(%error, "the listener task failed");
        ListenerReport::default()
    });

    admin_stage.send_replace(Stage::Draining);
    let admin_deadline = deadline.min(Instant::now() + ADMIN_GRACE);
    if tokio::time::timeout_at(admin_deadline, &mut admin_task)
        .await
        .is_err()
    {
        admin_stage.send_replace(Stage::Closing);
        let _ = admin_task.await;
    }

    let report = ShutdownReport {
        drained: listener.drained,
        failed: listener.failed,
        forced: listener.forced,
        cut: listener.cut,
        elapsed: started.elapsed(),
    };
    let verdict = if report.cut > 0 || report.failed > 0 {
        tracing::warn!(
            requests_cut = report.cut,
            failed = report.failed,
            "shutdown cut requests that were in flight"
        );
        "some requests were cut"
    } else {
        "every request finished"
    };
    tracing::info!(
        phase = "done",
        drained = report.drained,
        failed = report.failed,
        forced = report.forced,
        requests_cut = report.cut,
        elapsed = ?report.elapsed,
        "shutdown: complete; {verdict}"
    );
    report
}
