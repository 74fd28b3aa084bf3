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
    use tokio::sync::Notify;

    use super::*;
    use crate::config::ChannelConfig;
    use crate::connector::Connector;
    use crate::response::Load;
    use crate::subchannel::{ConnectivityState, Subchannel};
    use crate::testing::{Host, Net, drive, until_pickable};

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

    /// Ready backends for hosts answering after `latencies`, as the balancer would list
    /// them; the subchannels must be kept for the backends to stay connected.
    async fn ready_backends(latencies: &[Duration]) -> (Vec<Subchannel>, Vec<Backend>) {
        let net = Net::default();
        let connector: Arc<dyn Connector> = Arc::new(net.clone());
        let config = Arc::new(ChannelConfig::default());
        let changed = Arc::new(Notify::new());
        let subchannels: Vec<Subchannel> = (1..)
            .zip(latencies)
            .map(|(n, latency)| {
                let address = net.host(n, *latency).address();
                Subchannel::new(address, &config, &connector, true, changed.clone())
            })
            .collect();
        let all_ready = async {
            while subchannels
                .iter()
                .any(|sub| sub.backend.state() != ConnectivityState::Ready)
            {
                changed.notified().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all_ready)
            .await
            .expect("every host connects");
        let backends = subchannels
            .iter()
            .map(|sub| Backend(sub.backend.clone()))
            .collect();
        (subchannels, backends)
    }

    /// How many of `total` calls `picker` gives each backend when `concurrency` callers
    /// each send one call at a time, and a backend answers after its latency (virtual
    /// time, so that the outcome does not depend on the machine's load). Calls count as
    /// outstanding and answers are timed as the channel does it.
    async fn spread(
        picker: Arc<dyn Picker>,
        latencies: &[Duration],
        total: usize,
        concurrency: usize,
    ) -> Vec<usize> {
        let (_subchannels, backends) = ready_backends(latencies).await;
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(latencies.iter().map(|_| AtomicUsize::new(0)).collect());
        let issued = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (picker, backends, latencies) =
                    (picker.clone(), backends.clone(), latencies.to_vec());
                let (counts, issued) = (counts.clone(), issued.clone());
                tokio::spawn(async move {
                    let headers = http::HeaderMap::new();
                    let call = CallInfo {
                        path: "/helloworld.Greeter/SayHello",
                        headers: &headers,
                    };
                    while issued.fetch_add(1, Ordering::Relaxed) < total {
                        let index = picker.pick(&call, &backends) % backends.len();
                        counts[index].fetch_add(1, Ordering::Relaxed);
                        let load = Load::start(backends[index].0.clone());
                        // sleep: the backend's latency: what the policies are measured against
                        tokio::time::sleep(latencies[index]).await;
                        if picker.measures_latency() {
                            load.backend.record_latency(latencies[index]);
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    const FAST: Duration = Duration::from_millis(2);
    const SLOW: Duration = Duration::from_millis(20);

    /// The policy-quality bounds, in virtual time: an even spread would give the slow
    /// backend a third. Choosing the less loaded of two by calls outstanding gives it about
    /// 6%; weighing latency too, under 1%. Over equal backends both stay even.
    #[tokio::test(start_paused = true)]
    async fn load_aware_pickers_starve_a_slow_backend_and_spread_equal_ones_evenly() {
        for (policy, most) in [(Policy::LeastRequest, 0.10), (Policy::P2cEwma, 0.02)] {
            let counts = spread(for_policy(policy), &[FAST, FAST, SLOW], 3_000, 24).await;
            let share = counts[2] as f64 / 3_000.0;
            assert!(
                share < most,
                "{policy:?}: the slow backend got {share:.3} of the calls {counts:?}"
            );
            let counts = spread(for_policy(policy), &[FAST, FAST, FAST], 3_000, 24).await;
            assert!(
                counts.iter().all(|count| count.abs_diff(1_000) <= 50),
                "{policy:?} over equal backends: {counts:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_gives_each_backend_its_turn_whatever_their_speed() {
        let net = Net::default();
        let hosts = [net.host(1, FAST), net.host(2, FAST), net.host(3, SLOW)];
        let channel = net.channel(&[&hosts[0], &hosts[1], &hosts[2]], |b| {
            b.policy(Policy::RoundRobin)
        });
        until_pickable(&channel, &[&hosts[0], &hosts[1], &hosts[2]]).await;
        let failures = drive(&channel, 150, 24).await;
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(hosts.each_ref().map(Host::calls), [50, 50, 50]);
    }

    /// Through the channel: a call counts on its backend until its response ends, so the
    /// load-aware policies send nothing more to a backend whose calls hang while another
    /// answers (round robin would give it half).
    #[tokio::test(start_paused = true)]
    async fn load_aware_pickers_keep_calls_off_a_backend_whose_calls_hang() {
        for policy in [Policy::LeastRequest, Policy::P2cEwma] {
            let net = Net::default();
            let stuck = net.host(1, Duration::from_secs(10));
            let quick = net.host(2, Duration::from_millis(1));
            let channel = net.channel(&[&stuck, &quick], |b| b.policy(policy));
            until_pickable(&channel, &[&stuck, &quick]).await;
            let failures = drive(&channel, 100, 4).await;
            assert!(failures.is_empty(), "{policy:?}: {failures:?}");
            assert_eq!(stuck.calls() + quick.calls(), 100);
            assert!(
                stuck.calls() <= 3,
                "{policy:?}: the hanging backend got {} calls",
                stuck.calls()
            );
        }
    }
}
