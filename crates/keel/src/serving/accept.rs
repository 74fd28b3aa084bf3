//! The accept loop: connections in, up to the listener's limit; failures backed off;
//! finished connections reaped; then the drain and the forced close.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connection::{self, Ended, Shared};
use super::{ListenerReport, ListenerService, ResponseBody, Stage};

/// First pause after a failed accept; doubled on each failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after failed accepts: a descriptor shortage lasts; spinning helps nobody.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per this period for the same kind of trouble; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How one accept loop's connections ended.
#[derive(Debug, Default)]
pub(super) struct Accepted {
    /// The report, without the requests cut by the forced close.
    pub(super) report: ListenerReport,
    /// Requests in flight on the whole listener when this loop closed its connections by
    /// force: the listener's gauge, which loops on other threads read too.
    pub(super) cut_at_close: usize,
}

impl Accepted {
    /// The report of a listener served by this loop alone.
    pub(super) fn alone(self) -> ListenerReport {
        let mut report = self.report;
        report.cut += self.cut_at_close;
        report
    }
}

/// Accepts until draining, drains until closing, closes what is left; reports how the
/// connections open at the drain ended.
pub(super) async fn run<S, B>(tcp: TcpListener, shared: Arc<Shared<S>>) -> Accepted
where
    S: ListenerService<B>,
    B: ResponseBody,
{
    let metrics = &shared.metrics;
    let name = metrics.name;
    let limit = shared.config.connection.max_connections;
    let mut stage = shared.stage.clone();
    let mut connections: JoinSet<Ended> = JoinSet::new();
    let mut backoff = FIRST_BACKOFF;
    let mut accept_warning = Throttle::default();
    let mut limit_warning = Throttle::default();

    loop {
        tokio::select! {
            biased;
            () = reached(&mut stage, Stage::Draining) => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_panic(name, joined.err());
            }
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = FIRST_BACKOFF;
                    if limit != 0 && connections.len() >= limit {
                        metrics.refused.inc();
                        drop(stream);
                        if let Some(suppressed) = limit_warning.allow() {
                            tracing::warn!(
                                listener = name,
                                max_connections = limit,
                                suppressed,
                                "connection limit reached; closing new connections on arrival"
                            );
                        }
                        continue;
                    }
                    connections.spawn(connection::drive(stream, shared.clone()));
                }
                Err(error) => {
                    metrics.accept_errors.inc();
                    if let Some(suppressed) = accept_warning.allow() {
                        tracing::warn!(
                            listener = name,
                            %error,
                            retry_in = ?backoff,
                            suppressed,
                            "accepting a connection failed; backing off"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
    }
    drop(tcp);

    let mut report = ListenerReport::default();
    let mut cut_at_close = 0;
    let open = connections.len();
    loop {
        tokio::select! {
            biased;
            joined = connections.join_next() => match joined {
                None => break,
                Some(Ok(ended)) => {
                    if ended.failed {
                        report.failed += 1;
                    } else {
                        report.drained += 1;
                    }
                    report.cut += ended.cut;
                }
                Some(Err(error)) => {
                    report.failed += 1;
                    log_panic(name, Some(error));
                }
            },
            () = reached(&mut stage, Stage::Closing) => {
                report.forced = connections.len();
                cut_at_close = usize::try_from(metrics.inflight.get()).unwrap_or(0);
                if report.forced > 0 {
                    tracing::warn!(
                        listener = name,
                        connections = report.forced,
                        requests = cut_at_close,
                        "closing the remaining connections"
                    );
                }
                metrics.forced_closes.inc_by(report.forced as u64);
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
        }
    }
    tracing::debug!(
        listener = name,
        open,
        ?report,
        cut_at_close,
        "listener closed"
    );
    Accepted {
        report,
        cut_at_close,
    }
}

/// Completes once the listener is at `wanted` or later (or its controller is gone).
async fn reached(stage: &mut tokio::sync::watch::Receiver<Stage>, wanted: Stage) {
    let _ = stage.wait_for(|stage| *stage >= wanted).await;
}

fn log_panic(listener: &str, error: Option<tokio::task::JoinError>) {
    if let Some(error) = error
        && error.is_panic()
    {
        tracing::error!(listener, %error, "connection task panicked");
    }
}

/// Allows one warning per [`WARN_EVERY`] and counts the ones it holds back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last one)` when a warning may go out now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
