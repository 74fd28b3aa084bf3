//! Idempotency keys with a request in flight, so a concurrent duplicate gets ABORTED
//! (Stripe's 409) instead of waiting on the database's unique constraint.
//!
//! This is a courtesy, not the guarantee: the store's unique constraint is what makes one key
//! execute once, also across processes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// An operation, the caller whose key it is (`None`: anonymous), the key: keys are per
/// caller, as in the store, so one caller's request never holds up another's.
type Entry = (&'static str, Option<String>, String);

/// The set of `(operation, caller, key)` being executed in this process.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<Entry>>>,
}

/// Holds a key as in flight until dropped.
#[derive(Debug)]
pub struct Claim {
    keys: Arc<Mutex<HashSet<Entry>>>,
    entry: Entry,
}

impl InFlight {
    /// Claims `caller`'s `key` for `operation`; `None` if a request with it is already in
    /// flight.
    pub fn claim(&self, operation: &'static str, caller: Option<&str>, key: &str) -> Option<Claim> {
        let entry = (operation, caller.map(str::to_owned), key.to_owned());
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.insert(entry.clone()).then(|| Claim {
            keys: self.keys.clone(),
            entry,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_claimed_once_until_released_and_scoped_per_operation_and_caller() {
        let inflight = InFlight::default();
        let claim = inflight.claim("process", None, "k").expect("free");
        assert!(inflight.claim("process", None, "k").is_none());
        assert!(inflight.claim("deposit", None, "k").is_some());
        let alice = inflight
            .claim("process", Some("alice"), "k")
            .expect("alice's own key");
        assert!(inflight.claim("process", Some("alice"), "k").is_none());
        assert!(inflight.claim("process", Some("bob"), "k").is_some());
        drop(claim);
        drop(alice);
        assert!(inflight.claim("process", None, "k").is_some());
    }
}
