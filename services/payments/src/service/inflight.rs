//! Idempotency keys with a request in flight, so a concurrent duplicate gets ABORTED
//! (Stripe's 409) instead of waiting on the database's unique constraint.
//!
//! This is a courtesy, not the guarantee: the store's unique constraint is what makes one key
//! execute once, also across processes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of `(operation, key)` pairs being executed in this process.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<(&'static str, String)>>>,
}

/// Holds a key as in flight until dropped.
#[derive(Debug)]
pub struct Claim {
    keys: Arc<Mutex<HashSet<(&'static str, String)>>>,
    entry: (&'static str, String),
}

impl InFlight {
    /// Claims `key` for `operation`; `None` if a request with it is already in flight.
    pub fn claim(&self, operation: &'static str, key: &str) -> Option<Claim> {
        let entry = (operation, key.to_owned());
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
    fn a_key_is_claimed_once_until_released_and_scoped_per_operation() {
        let inflight = InFlight::default();
        let claim = inflight.claim("process", "k").expect("free");
        assert!(inflight.claim("process", "k").is_none());
        assert!(inflight.claim("deposit", "k").is_some());
        drop(claim);
        assert!(inflight.claim("process", "k").is_some());
    }
}
