//! Readiness checks: probes of what a server depends on (a database, a cache), each bounded by
//! a timeout and run in the background at an interval, never per request. `/readyz` and
//! grpc.health.v1 answer from the last results, so a flood of probes costs the dependency
//! nothing and a hung dependency cannot hang a probe.

use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Weak;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::registry::Inner;

/// What a failing check does to the server's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impact {
    /// The server cannot do its job without the dependency: while the check fails, every
    /// service reports NOT_SERVING and `/readyz` answers 503.
    Critical,
    /// The server works without it, less well (e.g. a cache): while the check fails, the
    /// server stays SERVING and `/readyz` answers 200 with status `degraded`.
    Degraded,
}

impl Impact {
    /// `"critical"` or `"degraded"`, as `/readyz` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Degraded => "degraded",
        }
    }
}

/// The server's readiness as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadinessStatus {
    /// Every check passes and the server reports SERVING.
    Serving,
    /// The server reports SERVING, but a [`Impact::Degraded`] check fails.
    Degraded,
    /// The server reports NOT_SERVING: a [`Impact::Critical`] check fails, the application
    /// set the whole server (`""`) NOT_SERVING, or shutdown began.
    NotServing,
}

impl ReadinessStatus {
    /// `"serving"`, `"degraded"` or `"not_serving"`, as `/readyz` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Degraded => "degraded",
            Self::NotServing => "not_serving",
        }
    }
}

/// The last outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// What its failure does to readiness.
    pub impact: Impact,
    /// Why its last probe failed; `None` when it passed.
    pub error: Option<String>,
}

/// A snapshot of readiness: the overall status and every check's last result, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The overall status.
    pub status: ReadinessStatus,
    /// Every registered check, ordered by name.
    pub checks: Vec<CheckResult>,
}

type BoxError = Box<dyn Error + Send + Sync + 'static>;
type Probe = Box<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A named probe of one dependency, registered with
/// [`HealthRegistry::add_check`](super::HealthRegistry::add_check).
///
/// ```
/// # use std::time::Duration;
/// use keel_health::ReadinessCheck;
/// let check = ReadinessCheck::new("cache", || async { Ok::<(), std::io::Error>(()) })
///     .degraded()
///     .timeout(Duration::from_millis(500))
///     .interval(Duration::from_secs(2));
/// assert_eq!(check.name(), "cache");
/// ```
pub struct ReadinessCheck {
    pub(super) name: String,
    pub(super) impact: Impact,
    pub(super) timeout: Duration,
    pub(super) interval: Duration,
    probe: Probe,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .field("impact", &self.impact)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl ReadinessCheck {
    /// How long one probe may take before it counts as failed, unless set: 2 s. A dependency
    /// that cannot answer a trivial request in that time cannot serve callers either.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// How long between the end of one probe and the start of the next, unless set: 5 s, so
    /// an outage shows within 7 s (interval + timeout), half Kubernetes' default probe period.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    /// A [`Impact::Critical`] check named `name` (as `/readyz` shows it) that passes when
    /// `probe`'s future returns `Ok`. Any error type that converts into a boxed error works
    /// (`std::io::Error`, `String`, ...); its message and sources are what `/readyz` shows.
    pub fn new<F, Fut, E>(name: impl Into<String>, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self {
            name: name.into(),
            impact: Impact::Critical,
            timeout: Self::DEFAULT_TIMEOUT,
            interval: Self::DEFAULT_INTERVAL,
            probe: Box::new(move || {
                let probe = probe();
                Box::pin(async move { probe.await.map_err(Into::into) })
            }),
        }
    }

    /// Makes the check [`Impact::Degraded`]: failing, it degrades the server but keeps it ready.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use keel_health::{HealthRegistry, ReadinessCheck, ReadinessStatus, ServingStatus};
    ///
    /// let registry = HealthRegistry::new();
    /// registry.set("", ServingStatus::Serving);
    /// let cache = ReadinessCheck::new("cache", || async { Err::<(), _>("connection refused") });
    /// registry.add_check(cache.degraded()).await;
    /// assert_eq!(registry.readiness().status, ReadinessStatus::Degraded);
    /// # }
    /// ```
    #[must_use]
    pub fn degraded(mut self) -> Self {
        self.impact = Impact::Degraded;
        self
    }

    /// Sets how long one probe may take (default [`ReadinessCheck::DEFAULT_TIMEOUT`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use keel_health::{HealthRegistry, ReadinessCheck};
    ///
    /// let registry = HealthRegistry::new();
    /// let hung = ReadinessCheck::new("database", || std::future::pending::<Result<(), String>>())
    ///     .timeout(Duration::from_millis(10));
    /// registry.add_check(hung).await;
    /// let error = registry.readiness().checks[0].error.clone();
    /// assert_eq!(error.as_deref(), Some("no answer within 10ms"));
    /// # }
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the pause between probes (default [`ReadinessCheck::DEFAULT_INTERVAL`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use keel_health::{HealthRegistry, ReadinessCheck};
    ///
    /// let registry = HealthRegistry::new();
    /// let check = ReadinessCheck::new("database", || async { Ok::<(), String>(()) })
    ///     .interval(Duration::from_secs(1));
    /// registry.add_check(check).await; // probed now, then every second
    /// assert_eq!(registry.readiness().checks[0].error, None);
    /// # }
    /// ```
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the probe once: `Err` with a message when it failed, timed out or panicked.
    pub(super) async fn probe(&self) -> Result<(), String> {
        // Inside the async block, so that a probe panicking before it returns a future is
        // caught too.
        let attempt = AssertUnwindSafe(async { (self.probe)().await }).catch_unwind();
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(chain(&*error)),
            Ok(Err(_panic)) => Err("the check panicked".to_owned()),
            Err(_elapsed) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// An error and its sources, `outer: inner: root`.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their source's message; say it once.
        if !text.ends_with(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Probes `check` every interval and records the outcome, until the registry freezes (shutdown
/// began), is dropped, or gives the check's name to another check.
pub(super) async fn run(
    check: ReadinessCheck,
    id: u64,
    registry: Weak<Inner>,
    mut frozen: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(check.interval) => {}
            _ = frozen.wait_for(|frozen| *frozen) => return,
        }
        let outcome = tokio::select! {
            outcome = check.probe() => outcome,
            _ = frozen.wait_for(|frozen| *frozen) => return,
        };
        let Some(inner) = registry.upgrade() else {
            return;
        };
        if !inner.record(&check, id, outcome) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_fails_on_error_timeout_and_panic() {
        let ok = ReadinessCheck::new("ok", || async { Ok::<(), String>(()) });
        assert_eq!(ok.probe().await, Ok(()));

        let refused = ReadinessCheck::new("refused", || async {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))
        });
        assert_eq!(refused.probe().await, Err("connection refused".to_owned()));

        let hung = ReadinessCheck::new("hung", std::future::pending::<Result<(), String>>)
            .timeout(Duration::from_millis(20));
        let error = hung.probe().await.unwrap_err();
        assert!(error.contains("no answer within 20ms"), "{error}");

        let panicking = ReadinessCheck::new("panics", || async {
            if true {
                panic!("probe bug");
            }
            Ok::<(), String>(())
        });
        assert_eq!(
            panicking.probe().await,
            Err("the check panicked".to_owned())
        );
    }

    #[test]
    fn errors_show_their_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("storage unavailable")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("pool timed out"));
        assert_eq!(chain(&error), "storage unavailable: pool timed out");

        #[derive(Debug, thiserror::Error)]
        #[error("redis: {0}")]
        struct Repeating(#[source] std::io::Error);
        let error = Repeating(std::io::Error::other("broken pipe"));
        assert_eq!(chain(&error), "redis: broken pipe");
    }
}
