//! Pickers: which ready backend takes a call. Keel's policies are pickers, and so is
//! anything a user plugs in with [`super::ChannelBuilder::picker`].
//!
//! A picker sees only the backends that can take a call now (connected, serving, not
//! ejected), in the resolver's order, with their load: calls outstanding (streams
//! included) and peak-EWMA latency. The seed's least-request picker, written as a user
//! would (this is the example the documentation and tests use):
//!
//! ```
//! use keel_client::{Backend, CallInfo, Picker};
//!
//! /// Of two backends chosen at random, the one with fewer calls in flight.
//! struct LeastLoaded;
//!
//! impl Picker for LeastLoaded {
//!     fn pick(&self, _call: &CallInfo<'_>, ready: &[Backend]) -> usize {
//!         if ready.len() == 1 {
//!             return 0;
//!         }
//!         let a = rand::random_range(0..ready.len());
//!         // A second, different one.
//!         let b = (a + rand::random_range(1..ready.len())) % ready.len();
//!         if ready[a].outstanding() <= ready[b].outstanding() { a } else { b }
//!     }
//! }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::config::Policy;
use super::subchannel;
use super::target::Address;

/// What a picker may look at of a call.
#[derive(Debug)]
pub struct CallInfo<'a> {
    /// The request path, `/package.Service/Method`.
    pub path: &'a str,
    /// The request headers (metadata), e.g. for picking by a key.
    pub headers: &'a http::HeaderMap,
}

/// A backend that can take a call now, as a picker sees it.
#[derive(Debug, Clone)]
pub struct Backend(pub(crate) Arc<subchannel::Backend>);

impl Backend {
    /// Its address.
    pub fn address(&self) -> &Address {
        &self.0.address
    }

    /// Calls sent to it and not finished, streams included.
    pub fn outstanding(&self) -> usize {
        self.0.outstanding.load(Ordering::Relaxed)
    }

    /// Its peak-EWMA response latency (measured only under the `p2c_ewma` policy, or
    /// when the picker's [`Picker::measures_latency`] says so; 30 ms until then).
    pub fn latency(&self) -> Duration {
        self.0.latency()
    }
}

/// Chooses a backend for each call.
pub trait Picker: Send + Sync + 'static {
    /// The index in `ready` (never empty) of the backend that takes `call`. An index out
    /// of range is taken modulo the length.
    fn pick(&self, call: &CallInfo<'_>, ready: &[Backend]) -> usize;

    /// True if the channel should measure each backend's latency for this picker (it
    /// costs a clock read and a lock per call).
    fn measures_latency(&self) -> bool {
        false
    }
}

/// The picker of a built-in policy.
pub(crate) fn for_policy(policy: Policy) -> Arc<dyn Picker> {
    match policy {
        Policy::PickFirst => Arc::new(First),
        Policy::RoundRobin => Arc::new(RoundRobin::default()),
        Policy::LeastRequest => Arc::new(LeastRequest),
        Policy::P2cEwma => Arc::new(P2cEwma),
    }
}

/// `pick_first`: the first ready backend in the resolver's order.
struct First;

impl Picker for First {
    fn pick(&self, _: &CallInfo<'_>, _: &[Backend]) -> usize {
        0
    }
}

/// `round_robin`: each ready backend in turn, starting at a random one so that many
/// clients do not all start on the same backend.
struct RoundRobin {
    next: AtomicUsize,
}

impl Default for RoundRobin {
    fn default() -> Self {
        Self {
            next: AtomicUsize::new(keel_core::random::below(1 << 16)),
        }
    }
}

impl Picker for RoundRobin {
    fn pick(&self, _: &CallInfo<'_>, ready: &[Backend]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % ready.len()
    }
}

/// Two different random indices of `0..len` (`len` ≥ 2).
fn two_choices(len: usize) -> (usize, usize) {
    let a = keel_core::random::below(len);
    let b = (a + 1 + keel_core::random::below(len - 1)) % len;
    (a, b)
}

/// `least_request`: the less loaded of two random backends (grpc's `least_request_experimental`
/// with a choice count of 2).
struct LeastRequest;

impl Picker for LeastRequest {
    fn pick(&self, _: &CallInfo<'_>, ready: &[Backend]) -> usize {
        if ready.len() == 1 {
            return 0;
        }
        let (a, b) = two_choices(ready.len());
        if ready[a].outstanding() <= ready[b].outstanding() {
            a
        } else {
            b
        }
    }
}

/// `p2c_ewma`: the cheaper of two random backends, cost = peak-EWMA latency × (outstanding
/// calls + 1), as linkerd and Finagle balance.
struct P2cEwma;

impl Picker for P2cEwma {
    fn pick(&self, _: &CallInfo<'_>, ready: &[Backend]) -> usize {
        if ready.len() == 1 {
            return 0;
        }
        let (a, b) = two_choices(ready.len());
        let cost = |backend: &Backend| {
            backend.latency().as_nanos() as f64 * (backend.outstanding() as f64 + 1.0)
        };
        if cost(&ready[a]) <= cost(&ready[b]) {
            a
        } else {
            b
        }
    }

    fn measures_latency(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_are_different_and_cover_every_pair() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let (a, b) = two_choices(3);
            assert!(a != b && a < 3 && b < 3);
            seen.insert((a, b));
        }
        assert_eq!(seen.len(), 6);
    }
}
