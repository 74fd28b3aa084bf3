//! The serving status of the server and of each service, observable by watchers, and the
//! readiness checks that can take the whole server out of service.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::readiness::{self, CheckResult, Impact, Readiness, ReadinessCheck, ReadinessStatus};

/// A service's serving status, as grpc.health.v1 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    /// Ready for RPCs.
    Serving,
    /// Up but not to be sent RPCs (e.g. draining before shutdown).
    NotServing,
}

/// Every registered service and its status; `""` is the whole server.
pub type Statuses = Arc<BTreeMap<String, ServingStatus>>;

/// Shared, cheaply cloned registry of serving statuses.
///
/// A service's reported status is the one [`HealthRegistry::set`] gave it, except that every
/// service reports NOT_SERVING while a critical readiness check
/// ([`HealthRegistry::add_check`]) fails. Every change reaches watchers at once.
///
/// Shutdown happens in two steps: [`HealthRegistry::set_all_not_serving`] reports NOT_SERVING
/// everywhere and freezes the statuses (later `set` calls are ignored, as in grpc-go, and the
/// checks stop), then [`HealthRegistry::end_watches`] ends open `Watch` streams so that they
/// do not hold a draining server open until its deadline.
#[derive(Debug, Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    state: Mutex<State>,
    /// What is reported, derived from `state`: what watchers see.
    statuses: watch::Sender<Statuses>,
    frozen: watch::Sender<bool>,
    ended: watch::Sender<bool>,
}

/// What the reported statuses are derived from.
#[derive(Debug, Default)]
struct State {
    /// The statuses as set.
    declared: BTreeMap<String, ServingStatus>,
    /// The last outcome of each readiness check, by name.
    checks: BTreeMap<String, Check>,
    /// The id the next check gets, so that a check replaced under its name stops recording.
    next_id: u64,
}

#[derive(Debug)]
struct Check {
    id: u64,
    impact: Impact,
    error: Option<String>,
}

impl State {
    /// True when every service must report NOT_SERVING.
    fn server_down(&self, frozen: bool) -> bool {
        frozen
            || self
                .checks
                .values()
                .any(|check| check.impact == Impact::Critical && check.error.is_some())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic: every change is one insert.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_frozen(&self) -> bool {
        *self.frozen.borrow()
    }

    /// Derives the reported statuses from `state` and tells watchers if they changed.
    fn publish(&self, state: &State) {
        let down = state.server_down(self.is_frozen());
        let reported: BTreeMap<String, ServingStatus> = state
            .declared
            .iter()
            .map(|(service, status)| {
                let status = if down {
                    ServingStatus::NotServing
                } else {
                    *status
                };
                (service.clone(), status)
            })
            .collect();
        self.statuses.send_if_modified(|current| {
            if **current == reported {
                return false;
            }
            *current = Arc::new(reported);
            true
        });
    }

    /// Records the outcome of a probe of check `id`. False when the check must stop: shutdown
    /// began, or another check took its name.
    pub(super) fn record(
        &self,
        check: &ReadinessCheck,
        id: u64,
        outcome: Result<(), String>,
    ) -> bool {
        if self.is_frozen() {
            return false;
        }
        let mut state = self.lock();
        let Some(entry) = state
            .checks
            .get_mut(&check.name)
            .filter(|entry| entry.id == id)
        else {
            return false;
        };
        let error = outcome.err();
        match (&entry.error, &error) {
            (None, Some(error)) => tracing::warn!(
                check = %check.name,
                impact = check.impact.as_str(),
                %error,
                "readiness check failing"
            ),
            (Some(_), None) => {
                tracing::info!(check = %check.name, "readiness check passing again")
            }
            _ => {}
        }
        entry.error = error;
        self.publish(&state);
        true
    }
}

impl Default for HealthRegistry {
    fn default() -> Self {
        let registry = Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                statuses: watch::Sender::new(Arc::default()),
                frozen: watch::Sender::new(false),
                ended: watch::Sender::new(false),
            }),
        };
        registry.set("", ServingStatus::Serving);
        registry
    }
}

impl HealthRegistry {
    /// A registry where the whole server (`""`) is SERVING.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `service`'s status (`""` for the whole server). Ignored once shutdown began.
    pub fn set(&self, service: &str, status: ServingStatus) {
        if self.inner.is_frozen() {
            return;
        }
        let mut state = self.inner.lock();
        state.declared.insert(service.to_owned(), status);
        self.inner.publish(&state);
    }

    /// The status `service` reports, `None` if it was never registered.
    pub fn get(&self, service: &str) -> Option<ServingStatus> {
        self.inner.statuses.borrow().get(service).copied()
    }

    /// Every registered service and the status it reports.
    pub fn snapshot(&self) -> Statuses {
        self.inner.statuses.borrow().clone()
    }

    /// Whether the whole server reports SERVING (what `/readyz` answers).
    pub fn is_serving(&self) -> bool {
        self.get("") == Some(ServingStatus::Serving)
    }

    /// Registers a readiness check: probes it once now and records the outcome, so the
    /// statuses tell the truth as soon as this returns, then probes it again every
    /// interval, in a task on the current Tokio runtime, until shutdown begins. Results are
    /// cached: `/readyz` and health calls never run a probe. A check registered under the name
    /// of an earlier one replaces it.
    pub async fn add_check(&self, check: ReadinessCheck) {
        let outcome = check.probe().await;
        if let Err(error) = &outcome {
            tracing::warn!(
                check = %check.name,
                impact = check.impact.as_str(),
                %error,
                "readiness check failing"
            );
        }
        let id = {
            let mut state = self.inner.lock();
            let id = state.next_id;
            state.next_id += 1;
            let entry = Check {
                id,
                impact: check.impact,
                error: outcome.err(),
            };
            state.checks.insert(check.name.clone(), entry);
            self.inner.publish(&state);
            id
        };
        let registry = Arc::downgrade(&self.inner);
        let frozen = self.inner.frozen.subscribe();
        tokio::spawn(readiness::run(check, id, registry, frozen));
    }

    /// Registers a critical check `name` that fails with `reason` and is never probed, until
    /// [`HealthRegistry::add_check`] replaces it under the same name: readiness held back
    /// while a dependency is still being set up. Synchronous, so it can be called before the
    /// listener that answers `/readyz` starts, leaving no window of false readiness.
    pub fn hold(&self, name: &str, reason: &str) {
        if self.inner.is_frozen() {
            return;
        }
        let mut state = self.inner.lock();
        let id = state.next_id;
        state.next_id += 1;
        let entry = Check {
            id,
            impact: Impact::Critical,
            error: Some(reason.to_owned()),
        };
        state.checks.insert(name.to_owned(), entry);
        self.inner.publish(&state);
    }

    /// The overall readiness and every check's last outcome: what `/readyz` reports.
    pub fn readiness(&self) -> Readiness {
        let state = self.inner.lock();
        let serving = state.declared.get("") == Some(&ServingStatus::Serving);
        let status = if !serving || state.server_down(self.inner.is_frozen()) {
            ReadinessStatus::NotServing
        } else if state.checks.values().any(|check| check.error.is_some()) {
            ReadinessStatus::Degraded
        } else {
            ReadinessStatus::Serving
        };
        let checks = state
            .checks
            .iter()
            .map(|(name, check)| CheckResult {
                name: name.clone(),
                impact: check.impact,
                error: check.error.clone(),
            })
            .collect();
        Readiness { status, checks }
    }

    /// Marks every service NOT_SERVING, freezes the statuses and stops the readiness checks:
    /// the first step of shutdown.
    pub fn set_all_not_serving(&self) {
        self.inner.frozen.send_replace(true);
        let state = self.inner.lock();
        self.inner.publish(&state);
    }

    /// Ends every open `Watch` stream with UNAVAILABLE, so clients look elsewhere.
    pub fn end_watches(&self) {
        self.inner.ended.send_replace(true);
    }

    pub(crate) fn subscribe(&self) -> (watch::Receiver<Statuses>, watch::Receiver<bool>) {
        (
            self.inner.statuses.subscribe(),
            self.inner.ended.subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_server_starts_serving() {
        let registry = HealthRegistry::new();
        assert!(registry.is_serving());
        assert_eq!(registry.get("x"), None);
    }

    #[test]
    fn statuses_freeze_after_not_serving() {
        let registry = HealthRegistry::new();
        registry.set("a", ServingStatus::Serving);
        registry.set_all_not_serving();
        registry.set("a", ServingStatus::Serving);
        registry.set("b", ServingStatus::Serving);
        assert_eq!(registry.get("a"), Some(ServingStatus::NotServing));
        assert_eq!(registry.get(""), Some(ServingStatus::NotServing));
        assert_eq!(registry.get("b"), None);
        assert!(!registry.is_serving());
    }

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    /// A check whose outcome the test switches; `probes` counts its runs, and the check's
    /// closure holds a clone of `alive`, so its strong count tells whether the check's task
    /// still runs.
    struct Switch {
        up: Arc<AtomicBool>,
        probes: Arc<AtomicUsize>,
        alive: Arc<()>,
    }

    impl Switch {
        fn new(up: bool) -> Self {
            Self {
                up: Arc::new(AtomicBool::new(up)),
                probes: Arc::new(AtomicUsize::new(0)),
                alive: Arc::new(()),
            }
        }

        fn check(&self, name: &str) -> ReadinessCheck {
            let (up, probes, alive) = (self.up.clone(), self.probes.clone(), self.alive.clone());
            ReadinessCheck::new(name, move || {
                let _alive = &alive;
                probes.fetch_add(1, Ordering::SeqCst);
                let up = up.load(Ordering::SeqCst);
                async move { if up { Ok(()) } else { Err("down") } }
            })
            .interval(Duration::from_millis(5))
        }

        fn set(&self, up: bool) {
            self.up.store(up, Ordering::SeqCst);
        }

        /// Waits (bounded) until the check's task has ended and dropped the check.
        async fn wait_stopped(&self) {
            for _ in 0..1_000 {
                if Arc::strong_count(&self.alive) == 1 {
                    return;
                }
                // sleep: poll interval of a bounded poll on the condition
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the check's task still runs");
        }
    }

    /// Waits (bounded) until `service` reports `want`.
    async fn wait_status(registry: &HealthRegistry, service: &str, want: ServingStatus) {
        let (mut statuses, _) = registry.subscribe();
        let reached = statuses.wait_for(|statuses| statuses.get(service) == Some(&want));
        tokio::time::timeout(Duration::from_secs(5), reached)
            .await
            .unwrap_or_else(|_| panic!("{service:?} never became {want:?}"))
            .unwrap();
    }

    #[tokio::test]
    async fn a_failing_critical_check_takes_every_service_out_until_it_passes() {
        let registry = HealthRegistry::new();
        registry.set("svc", ServingStatus::Serving);
        let database = Switch::new(false);
        registry.add_check(database.check("database")).await;
        // The first probe ran before add_check returned: no window of false readiness.
        assert_eq!(registry.get(""), Some(ServingStatus::NotServing));
        assert_eq!(registry.get("svc"), Some(ServingStatus::NotServing));
        let readiness = registry.readiness();
        assert_eq!(readiness.status, ReadinessStatus::NotServing);
        assert_eq!(
            readiness.checks,
            [CheckResult {
                name: "database".into(),
                impact: Impact::Critical,
                error: Some("down".into()),
            }]
        );

        database.set(true);
        wait_status(&registry, "", ServingStatus::Serving).await;
        assert_eq!(registry.get("svc"), Some(ServingStatus::Serving));
        assert_eq!(registry.readiness().status, ReadinessStatus::Serving);
        database.set(false);
        wait_status(&registry, "svc", ServingStatus::NotServing).await;
    }

    #[tokio::test]
    async fn a_failing_degraded_check_keeps_the_server_serving() {
        let registry = HealthRegistry::new();
        let cache = Switch::new(false);
        registry.add_check(cache.check("cache").degraded()).await;
        assert!(registry.is_serving());
        let readiness = registry.readiness();
        assert_eq!(readiness.status, ReadinessStatus::Degraded);
        assert_eq!(readiness.checks[0].impact, Impact::Degraded);
        assert_eq!(readiness.checks[0].error.as_deref(), Some("down"));
    }

    #[tokio::test]
    async fn an_application_that_sets_the_server_not_serving_is_not_ready() {
        let registry = HealthRegistry::new();
        registry.set("", ServingStatus::NotServing);
        assert_eq!(registry.readiness().status, ReadinessStatus::NotServing);
    }

    #[tokio::test]
    async fn shutdown_stops_the_checks_and_never_serves_again() {
        let registry = HealthRegistry::new();
        let database = Switch::new(true);
        registry.add_check(database.check("database")).await;
        assert!(registry.is_serving());
        registry.set_all_not_serving();
        database.wait_stopped().await;
        let probes = database.probes.load(Ordering::SeqCst);
        assert_eq!(registry.readiness().status, ReadinessStatus::NotServing);
        assert!(!registry.is_serving());
        // A check added during shutdown cannot bring the server back either.
        let late = Switch::new(true);
        registry.add_check(late.check("late")).await;
        late.wait_stopped().await;
        assert!(!registry.is_serving());
        assert_eq!(database.probes.load(Ordering::SeqCst), probes);
    }

    #[tokio::test]
    async fn a_check_under_a_taken_name_replaces_the_earlier_one() {
        let registry = HealthRegistry::new();
        let first = Switch::new(false);
        registry.add_check(first.check("database")).await;
        let second = Switch::new(true);
        registry.add_check(second.check("database")).await;
        first.wait_stopped().await;
        assert!(registry.is_serving());
        assert_eq!(registry.readiness().checks.len(), 1);
    }

    #[tokio::test]
    async fn a_held_check_keeps_the_server_out_until_a_real_check_replaces_it() {
        let registry = HealthRegistry::new();
        registry.hold("log", "the log is not open yet");
        assert!(!registry.is_serving());
        let readiness = registry.readiness();
        assert_eq!(readiness.status, ReadinessStatus::NotServing);
        assert_eq!(
            readiness.checks[0].error.as_deref(),
            Some("the log is not open yet")
        );
        let log = Switch::new(true);
        registry.add_check(log.check("log")).await;
        assert!(registry.is_serving());
        assert_eq!(registry.readiness().checks.len(), 1);
    }

    #[tokio::test]
    async fn dropping_the_registry_stops_its_checks() {
        let registry = HealthRegistry::new();
        let database = Switch::new(true);
        registry.add_check(database.check("database")).await;
        drop(registry);
        database.wait_stopped().await;
    }
}
