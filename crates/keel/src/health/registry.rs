//! The serving status of the server and of each service, observable by watchers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

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
/// Every change reaches watchers at once. Shutdown happens in two steps:
/// [`HealthRegistry::set_all_not_serving`] reports NOT_SERVING everywhere and freezes the
/// statuses (later `set` calls are ignored, as in grpc-go), then [`HealthRegistry::end_watches`]
/// ends open `Watch` streams so that they do not hold a draining server open until its deadline.
#[derive(Debug, Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    statuses: watch::Sender<Statuses>,
    frozen: AtomicBool,
    ended: watch::Sender<bool>,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        let registry = Self {
            inner: Arc::new(Inner {
                statuses: watch::Sender::new(Arc::default()),
                frozen: AtomicBool::new(false),
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
        if self.inner.frozen.load(Ordering::Acquire) {
            return;
        }
        self.inner.statuses.send_if_modified(|map| {
            if map.get(service) == Some(&status) {
                return false;
            }
            Arc::make_mut(map).insert(service.to_owned(), status);
            true
        });
    }

    /// The status of `service`, `None` if it was never registered.
    pub fn get(&self, service: &str) -> Option<ServingStatus> {
        self.inner.statuses.borrow().get(service).copied()
    }

    /// Every registered service and its status.
    pub fn snapshot(&self) -> Statuses {
        self.inner.statuses.borrow().clone()
    }

    /// Whether the whole server reports SERVING (what `/readyz` answers).
    pub fn is_serving(&self) -> bool {
        self.get("") == Some(ServingStatus::Serving)
    }

    /// Marks every service NOT_SERVING and freezes the statuses: the first step of shutdown.
    pub fn set_all_not_serving(&self) {
        self.inner.frozen.store(true, Ordering::Release);
        self.inner.statuses.send_modify(|map| {
            for status in Arc::make_mut(map).values_mut() {
                *status = ServingStatus::NotServing;
            }
        });
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
}
