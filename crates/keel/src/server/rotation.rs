//! Certificate rotation while serving: one task per TLS listener reads its files every
//! `reload_interval` and on SIGHUP (how cert-manager, Vault Agent and spiffe-helper expect
//! a process to take up new files) and asks its `keel_tls::ServerTls` to reload. A change
//! that passes every check is swapped in for new handshakes; one that fails is logged with
//! the file and the reason, counted (`keel_tls_reloads_total{outcome="error"}`), and the
//! material in use stays. `keel_tls_certificate_expiry_timestamp_seconds` follows what is
//! in use.
//!
//! Files are compared by content, not modification time: agents replace files by renaming
//! over them, and copies keep or fake mtimes.

use std::sync::Arc;
use std::time::Duration;

use keel_tls::{Reloaded, ServerTls, Trigger};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::metrics::Metrics;
use crate::serving::{ConnectionMetrics, Listener};

/// The rotation tasks of a server's listeners; dropping it stops them.
pub(super) struct Rotation(Vec<JoinHandle<()>>);

impl Drop for Rotation {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts a rotation task for each of `listeners` that serves TLS, and records the expiry
/// of the material each one holds now.
pub(super) fn spawn(listeners: &[&Listener], metrics: &Metrics) -> Rotation {
    let tasks = listeners
        .iter()
        .filter_map(|listener| {
            let tls = listener.tls()?.clone();
            let name = listener.name();
            metrics.connection.tls_status(name, &tls.status());
            metrics.connection.tls_reloads_start(name);
            // Installed here, before serving starts, not in the task: a SIGHUP that
            // arrives while no handler is installed ends the process.
            let hangups = match signal(SignalKind::hangup()) {
                Ok(hangups) => Some(hangups),
                Err(error) => {
                    tracing::warn!(
                        listener = name,
                        %error,
                        "cannot listen for SIGHUP; TLS files are reloaded only by polling"
                    );
                    None
                }
            };
            Some(tokio::spawn(watch(
                name,
                tls,
                hangups,
                metrics.connection.clone(),
            )))
        })
        .collect();
    Rotation(tasks)
}

/// Reloads `tls` on every tick of its interval and every SIGHUP, for ever.
async fn watch(
    name: &'static str,
    tls: Arc<ServerTls>,
    mut hangups: Option<Signal>,
    metrics: ConnectionMetrics,
) {
    let mut ticks = interval(tls.settings().reload_interval);
    loop {
        let trigger = tokio::select! {
            () = tick(&mut ticks) => Trigger::Poll,
            () = hangup(&mut hangups) => Trigger::Signal,
        };
        let reloading = tls.clone();
        let outcome = tokio::task::spawn_blocking(move || reloading.reload(trigger)).await;
        match outcome {
            Ok(Ok(Reloaded::Unchanged)) => {
                if trigger == Trigger::Signal {
                    tracing::info!(listener = name, "SIGHUP: TLS files unchanged");
                }
            }
            Ok(Ok(Reloaded::Swapped(status))) => {
                metrics.tls_reload(name, "ok");
                metrics.tls_status(name, &status);
                tracing::info!(
                    listener = name,
                    fingerprint = %status.fingerprint_hex(),
                    not_after = %humantime::format_rfc3339_seconds(status.cert_not_after),
                    "TLS material reloaded; new handshakes use it"
                );
            }
            Ok(Err(error)) => {
                metrics.tls_reload(name, "error");
                tracing::warn!(
                    listener = name,
                    %error,
                    "TLS material refused; new handshakes keep using the previous"
                );
            }
            Err(error) => {
                metrics.tls_reload(name, "error");
                tracing::error!(listener = name, %error, "TLS reload task failed");
            }
        }
    }
}

/// Ticks every `period` from one period on; never when it is zero.
fn interval(period: Duration) -> Option<Interval> {
    (!period.is_zero()).then(|| {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    })
}

async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn hangup(hangups: &mut Option<Signal>) {
    if let Some(signals) = hangups {
        if signals.recv().await.is_some() {
            return;
        }
        // The signal driver is gone: no more SIGHUPs will come.
        *hangups = None;
    }
    std::future::pending().await
}
