//! A subchannel: the HTTP/2 connections to one backend address, kept up by their own
//! tasks, with the backend's load as the balancer sees it.
//!
//! Each of the `connections_per_backend` slots connects, serves until its connection ends,
//! and connects again, waiting per [`Backoff`] after failures. The subchannel's state
//! follows from its slots: READY while any connection is up; CONNECTING while none is but
//! an attempt is under way; TRANSIENT_FAILURE when every slot's last attempt failed (and
//! while it tries again: failing is sticky until a connection is made); IDLE before anyone
//! asked for a connection (`pick_first` connects lazily). Calls choose among
//! the live connections in turn. When the subchannel is removed, its connections close
//! once their calls are over.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::config::ChannelConfig;
use super::connector::{Connector, Io};
use super::outlier::{self, OutlierConfig};
use super::target::Address;

/// A subchannel's connectivity state, as grpc-go names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectivityState {
    /// No connection, and none wanted yet.
    Idle,
    /// Connecting, none up yet.
    Connecting,
    /// At least one connection is up.
    Ready,
    /// The last attempt of every connection failed; waiting to try again.
    TransientFailure,
}

/// What health checks say of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// No answer yet on this connection: the backend counts as still connecting.
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
}

/// One connection slot's state.
#[derive(Debug, Clone)]
enum Slot {
    Idle,
    Connecting,
    Ready,
    Failed(String),
}

/// What the channel's calls and the balancer share about one backend.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) address: Address,
    /// The largest response header block its connections accept, for error messages.
    pub(crate) header_limit: u32,
    /// Live connections, tried in turn.
    connections: RwLock<Vec<(usize, SendRequest<tonic::body::Body>)>>,
    next_connection: AtomicUsize,
    slots: Mutex<Vec<Slot>>,
    /// Calls sent and not finished (streams included, until their response ends).
    pub(crate) outstanding: AtomicUsize,
    /// Peak-EWMA response latency in nanoseconds, and when it was last updated.
    latency: Mutex<(f64, Option<Instant>)>,
    /// The EWMA's time constant.
    decay: Duration,
    /// What health checks say: [`Health::Serving`] without them.
    health: AtomicU8,
    /// Consecutive failures and ejections, when outlier ejection is on.
    outlier: Option<(OutlierConfig, outlier::Record)>,
    /// Raised when the outlier record asks for an ejection; the balancer decides.
    pub(crate) wants_ejection: AtomicBool,
    /// Wakes the slots of a lazily connected subchannel.
    wanted: watch::Sender<bool>,
    /// Tells the balancer something changed.
    changed: Arc<Notify>,
}

/// The latency a backend is assumed to have before its first answer: low enough that new
/// backends get tried, as in linkerd's peak-EWMA balancer.
const DEFAULT_LATENCY: Duration = Duration::from_millis(30);

impl Backend {
    /// The subchannel's current state.
    pub(crate) fn state(&self) -> ConnectivityState {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.iter().any(|slot| matches!(slot, Slot::Ready)) {
            ConnectivityState::Ready
        } else if slots.iter().any(|slot| matches!(slot, Slot::Connecting)) {
            ConnectivityState::Connecting
        } else if slots.iter().all(|slot| matches!(slot, Slot::Failed(_))) {
            ConnectivityState::TransientFailure
        } else {
            ConnectivityState::Idle
        }
    }

    /// The last connection error, if the subchannel is failing.
    pub(crate) fn last_error(&self) -> Option<String> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.iter().rev().find_map(|slot| match slot {
            Slot::Failed(error) => Some(error.clone()),
            _ => None,
        })
    }

    /// True if calls may be sent here when connected: serving, as far as health checks
    /// know, and not ejected as an outlier (re-admitted once the ejection is over).
    pub(crate) fn is_pickable(&self, now: Instant) -> bool {
        self.health() == Health::Serving
            && !self
                .outlier
                .as_ref()
                .is_some_and(|(_, record)| record.is_ejected(now))
    }

    /// What health checks say of the backend.
    pub(crate) fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            0 => Health::Unknown,
            1 => Health::Serving,
            _ => Health::NotServing,
        }
    }

    /// Records what health checks say, telling the balancer if that changed.
    pub(crate) fn set_health(&self, health: Health) {
        if self.health.swap(health as u8, Ordering::Relaxed) != health as u8 {
            self.changed.notify_one();
        }
    }

    /// True if outlier ejection is on (calls then report their status).
    pub(crate) fn detects_outliers(&self) -> bool {
        self.outlier.is_some()
    }

    /// A call's final status, for outlier ejection.
    pub(crate) fn record_outcome(&self, code: tonic::Code) {
        if let Some((config, record)) = &self.outlier
            && record.observe(code, config)
            && !self.wants_ejection.swap(true, Ordering::Relaxed)
        {
            self.changed.notify_one();
        }
    }

    /// Ejects the backend now (the balancer checked the share ejected); returns when it
    /// comes back.
    pub(crate) fn eject(&self, now: Instant) -> Option<Instant> {
        self.wants_ejection.store(false, Ordering::Relaxed);
        let (config, record) = self.outlier.as_ref()?;
        let until = record.eject(config, now);
        tracing::warn!(address = %self.address, until = ?until - now, "ejected as an outlier after consecutive failures");
        Some(until)
    }

    /// When its ejection ends, if it is ejected.
    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.outlier.as_ref()?.1.ejected_until()
    }

    /// The outlier settings, if ejection is on.
    pub(crate) fn outlier_config(&self) -> Option<&OutlierConfig> {
        self.outlier.as_ref().map(|(config, _)| config)
    }

    /// A live connection to send a call on, if any.
    pub(crate) fn connection(&self) -> Option<SendRequest<tonic::body::Body>> {
        let connections = self
            .connections
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let count = connections.len();
        let start = self.next_connection.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|i| &connections[(start + i) % count].1)
            .find(|connection| !connection.is_closed())
            .cloned()
    }

    /// Asks the slots to connect (a no-op once they do).
    pub(crate) fn connect(&self) {
        self.wanted
            .send_if_modified(|wanted| !std::mem::replace(wanted, true));
    }

    /// The peak-EWMA latency, decayed towards zero for the time without answers (so a
    /// backend that was slow gets tried again).
    pub(crate) fn latency(&self) -> Duration {
        let latency = *self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        Duration::from_nanos(self.decayed(latency, Instant::now()) as u64)
    }

    /// Records a response's latency: a slower one is taken at once (the peak), faster ones
    /// pull the average down.
    pub(crate) fn record_latency(&self, rtt: Duration) {
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let ewma = self.decayed(*latency, now);
        let next = if rtt > ewma {
            rtt
        } else {
            let weight = latency.1.map_or(0.0, |last| self.weight(now - last));
            ewma * weight + rtt * (1.0 - weight)
        };
        *latency = (next, Some(now));
    }

    fn decayed(&self, (ewma, last): (f64, Option<Instant>), now: Instant) -> f64 {
        last.map_or(ewma, |last| {
            ewma * self.weight(now.saturating_duration_since(last))
        })
    }

    /// How much of the old average remains after `elapsed`.
    fn weight(&self, elapsed: Duration) -> f64 {
        (-elapsed.as_secs_f64() / self.decay.as_secs_f64().max(1e-3)).exp()
    }

    fn set_slot(&self, index: usize, slot: Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots[index] = slot;
        drop(slots);
        self.changed.notify_one();
    }
}

/// A subchannel owned by the balancer; dropping it stops reconnecting and closes its
/// connections once their calls end.
#[derive(Debug)]
pub(crate) struct Subchannel {
    pub(crate) backend: Arc<Backend>,
    stop: watch::Sender<bool>,
}

impl Subchannel {
    /// A subchannel to `address`; its slots connect at once if `eager`, else on
    /// [`Backend::connect`].
    pub(crate) fn new(
        address: Address,
        config: &Arc<ChannelConfig>,
        connector: &Arc<dyn Connector>,
        eager: bool,
        changed: Arc<Notify>,
    ) -> Self {
        let slots = config.connections_per_backend.max(1);
        let (wanted, _) = watch::channel(eager);
        let backend = Arc::new(Backend {
            address,
            header_limit: config.http2.max_header_list_size,
            connections: RwLock::new(Vec::with_capacity(slots)),
            next_connection: AtomicUsize::new(0),
            slots: Mutex::new(vec![Slot::Idle; slots]),
            outstanding: AtomicUsize::new(0),
            latency: Mutex::new((DEFAULT_LATENCY.as_nanos() as f64, None)),
            decay: config.ewma_decay,
            health: AtomicU8::new(if config.health_check.is_none() {
                Health::Serving as u8
            } else {
                Health::Unknown as u8
            }),
            outlier: config
                .outlier
                .map(|outlier| (outlier, outlier::Record::default())),
            wants_ejection: AtomicBool::new(false),
            wanted,
            changed,
        });
        let (stop, stopped) = watch::channel(false);
        if let Some(service) = &config.health_check {
            tokio::spawn(super::health_check::run(
                backend.clone(),
                service.clone(),
                stopped.clone(),
            ));
        }
        for index in 0..slots {
            tokio::spawn(run_slot(
                backend.clone(),
                index,
                config.clone(),
                connector.clone(),
                stopped.clone(),
            ));
        }
        Self { backend, stop }
    }
}

impl Drop for Subchannel {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// One connection slot: connect, serve, reconnect, until the subchannel is dropped.
async fn run_slot(
    backend: Arc<Backend>,
    index: usize,
    config: Arc<ChannelConfig>,
    connector: Arc<dyn Connector>,
    mut stop: watch::Receiver<bool>,
) {
    let mut wanted = backend.wanted.subscribe();
    tokio::select! {
        _ = wanted.wait_for(|wanted| *wanted) => {}
        _ = stop.wait_for(|stop| *stop) => return,
    }
    let mut backoff = Backoff::new(config.connect_backoff);
    let mut failed = false;
    loop {
        // A slot whose last attempt failed stays failed while it tries again, until it
        // connects (gRPC's sticky TRANSIENT_FAILURE, gRFC A62): a backend that cannot be
        // reached does not flip to CONNECTING with every attempt, which made fail-fast
        // calls wait for it instead of failing.
        if !failed {
            backend.set_slot(index, Slot::Connecting);
        }
        let started = Instant::now();
        let attempt = tokio::time::timeout(
            backoff.connect_timeout(),
            connect(&backend.address, &config, &*connector),
        );
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let error = match outcome {
            Ok(Ok((sender, connection))) => {
                backend
                    .connections
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((index, sender));
                backend.set_slot(index, Slot::Ready);
                failed = false;
                let mut connection = std::pin::pin!(connection);
                let ended = tokio::select! {
                    ended = &mut connection => Some(ended),
                    _ = stop.wait_for(|stop| *stop) => None,
                };
                backend
                    .connections
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|(slot, _)| *slot != index);
                let Some(ended) = ended else {
                    // Removed: let the calls on this connection finish; hyper closes it
                    // when they and every sender are gone.
                    let _ = connection.await;
                    return;
                };
                if let Err(error) = ended {
                    tracing::debug!(address = %backend.address, %error, "connection ended");
                }
                backend.set_slot(index, Slot::Idle);
                // A connection that lived for a while resets the backoff; one that died at
                // once (a crash loop) does not, so reconnecting stays paced.
                if started.elapsed() >= config.connect_backoff.initial {
                    backoff.reset();
                    continue;
                }
                "the connection closed right after it was made".to_owned()
            }
            Ok(Err(error)) => error,
            Err(_) => format!(
                "connecting took longer than {:?}",
                backoff.connect_timeout()
            ),
        };
        tracing::debug!(address = %backend.address, %error, "connecting failed");
        backend.set_slot(index, Slot::Failed(error));
        failed = true;
        let wait = backoff.next_wait();
        tokio::select! {
            () = tokio::time::sleep_until(started + wait) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// A connection's request sender, and the future that drives the connection until it ends.
type Connected = (
    SendRequest<tonic::body::Body>,
    hyper::client::conn::http2::Connection<TokioIo<Box<dyn Io>>, tonic::body::Body, TokioExecutor>,
);

/// Opens a stream to `address` and runs the HTTP/2 handshake with the channel's settings.
async fn connect(
    address: &Address,
    config: &ChannelConfig,
    connector: &dyn Connector,
) -> Result<Connected, String> {
    let stream = connector.connect(address).await?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(interval) = config.keepalive.interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(config.keepalive.timeout)
            .keep_alive_while_idle(config.keepalive.while_idle);
    }
    if let Some(size) = config.http2.initial_stream_window {
        builder.initial_stream_window_size(size);
    }
    if let Some(size) = config.http2.initial_connection_window {
        builder.initial_connection_window_size(size);
    }
    builder.adaptive_window(config.http2.adaptive_window);
    builder.max_header_list_size(config.http2.max_header_list_size);
    builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP/2 handshake with {address}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::BackoffConfig;
    use crate::testing::{Host, Net, Reach};

    /// A subchannel to `host` with `backoff`, connecting at once, and the balancer's
    /// doorbell it rings on every change.
    fn subchannel(net: &Net, host: &Host, backoff: BackoffConfig) -> (Subchannel, Arc<Notify>) {
        let config = Arc::new(ChannelConfig {
            connect_backoff: backoff,
            ..ChannelConfig::default()
        });
        let connector: Arc<dyn Connector> = Arc::new(net.clone());
        let changed = Arc::new(Notify::new());
        let sub = Subchannel::new(host.address(), &config, &connector, true, changed.clone());
        (sub, changed)
    }

    /// Waits, at most a virtual minute, until the subchannel is in `state`.
    async fn until_state(sub: &Subchannel, changed: &Notify, state: ConnectivityState) {
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            while sub.backend.state() != state {
                changed.notified().await;
            }
        })
        .await;
        assert!(reached.is_ok(), "still {:?}", sub.backend.state());
    }

    /// The time between one attempt and the next, in seconds.
    fn gaps(attempts: &[Instant]) -> Vec<f64> {
        attempts
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs_f64())
            .collect()
    }

    /// The timer's resolution: waits end on the next millisecond.
    const TICK: f64 = 0.002;

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_back_off_by_the_multiplier_within_the_jitter_up_to_the_maximum() {
        let net = Net::default();
        let host = net.host(1, Duration::ZERO);
        host.set_reach(Reach::Refused);
        let backoff = BackoffConfig {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
            max: Duration::from_secs(10),
            min_connect_timeout: Duration::from_secs(20),
        };
        let (sub, changed) = subchannel(&net, &host, backoff);
        until_state(&sub, &changed, ConnectivityState::TransientFailure).await;
        assert!(
            sub.backend.last_error().unwrap().contains("refused"),
            "{:?}",
            sub.backend.last_error()
        );

        // sleep: virtual time: about a dozen attempts
        tokio::time::sleep(Duration::from_secs(100)).await;
        let gaps = gaps(&host.attempts());
        assert!(gaps.len() >= 9, "{gaps:?}");
        let mut base = 1.0_f64;
        let mut jittered = false;
        for gap in &gaps {
            assert!(
                *gap >= base * 0.8 - TICK && *gap <= base * 1.2 + TICK,
                "a wait of {gap} s where {base} s ±20% was due: {gaps:?}"
            );
            jittered |= (gap - base).abs() > TICK;
            base = (base * 2.0).min(10.0);
        }
        assert!(jittered, "every wait was exactly the base: {gaps:?}");

        // The host comes back: the next attempt, at most the maximum wait later, connects.
        host.set_reach(Reach::Serving);
        let last_failure = *host.attempts().last().unwrap();
        until_state(&sub, &changed, ConnectivityState::Ready).await;
        let waited = (Instant::now() - last_failure).as_secs_f64();
        assert!((8.0 - TICK..=12.0 + TICK).contains(&waited), "{waited}");
        assert!(sub.backend.connection().is_some());
        assert_eq!(sub.backend.last_error(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_lived_resets_the_backoff_and_a_crash_loop_does_not() {
        let net = Net::default();
        let host = net.host(1, Duration::ZERO);
        host.set_reach(Reach::Refused);
        let backoff = BackoffConfig {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_secs(60),
            min_connect_timeout: Duration::from_secs(20),
        };
        let (sub, changed) = subchannel(&net, &host, backoff);

        // sleep: virtual time: attempts at 0, 1, 3 and 7 s fail; the one at 15 s connects
        tokio::time::sleep(Duration::from_secs(10)).await;
        host.set_reach(Reach::Serving);
        until_state(&sub, &changed, ConnectivityState::Ready).await;
        assert_eq!(gaps(&host.attempts()), [1.0, 2.0, 4.0, 8.0]);

        // sleep: virtual time: the connection lives 5 s, longer than the initial wait.
        tokio::time::sleep(Duration::from_secs(5)).await;
        // It is lost; the host refuses, then accepts connections only to close them at once.
        let lost = Instant::now();
        host.set_reach(Reach::Refused);
        host.disconnect();
        // sleep: virtual time: past the first attempt after the loss.
        tokio::time::sleep(Duration::from_millis(500)).await;
        host.set_reach(Reach::Closing);
        // sleep: virtual time: four more attempts.
        tokio::time::sleep(Duration::from_secs(20)).await;

        let attempts = host.attempts();
        assert_eq!(attempts[5], lost, "reconnecting at once");
        let after = gaps(&attempts[5..]);
        assert!(after.len() >= 4, "{after:?}");
        for (gap, expected) in after.iter().zip([1.0, 2.0, 4.0, 8.0]) {
            assert!(
                (gap - expected).abs() <= TICK,
                "started over at the initial wait, then grew through the crash loop: {after:?}"
            );
        }
        let error = sub.backend.last_error().unwrap();
        assert!(error.contains("closed right after"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_without_an_answer_ends_at_the_connect_timeout() {
        let net = Net::default();
        let host = net.host(1, Duration::ZERO);
        host.set_reach(Reach::Silent);
        let backoff = BackoffConfig {
            initial: Duration::from_secs(1),
            jitter: 0.0,
            min_connect_timeout: Duration::from_secs(20),
            ..BackoffConfig::default()
        };
        let (sub, changed) = subchannel(&net, &host, backoff);
        until_state(&sub, &changed, ConnectivityState::Connecting).await;
        until_state(&sub, &changed, ConnectivityState::TransientFailure).await;
        let error = sub.backend.last_error().unwrap();
        assert!(error.contains("longer than 20s"), "{error}");
        // sleep: virtual time. The wait after a failure counts from the attempt's start, which is
        // long past: the next attempt goes out at once, and gets the same time.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let gaps = gaps(&host.attempts());
        assert!(gaps.len() >= 2, "{gaps:?}");
        assert!(
            gaps.iter().all(|gap| (gap - 20.0).abs() <= TICK),
            "{gaps:?}"
        );
    }
}
