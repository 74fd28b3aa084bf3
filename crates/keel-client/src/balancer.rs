//! The balancer task: keeps one subchannel per resolved address and publishes, after every
//! change, the set of backends calls may be sent to.
//!
//! Calls read the latest [`Picks`] from a `watch` channel without locking anything the
//! balancer holds; the balancer rebuilds it when the resolver sends new addresses or a
//! subchannel changes state. A subchannel that fails asks the resolver to look again (DNS
//! answers change when backends move). `pick_first` connects one address at a time, in the
//! resolver's order; the other policies connect to all.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use super::config::{ChannelConfig, Policy};
use super::connector::Connector;
use super::error::ConnectError;
use super::picker::Backend;
use super::resolver::Resolution;
use super::subchannel::{ConnectivityState, Health, Subchannel};
use super::target::Address;

/// What calls may use now.
#[derive(Debug, Clone)]
pub(crate) struct Picks {
    /// Backends that can take a call, in the resolver's order.
    pub(crate) ready: Vec<Backend>,
    /// The channel's state: READY if any backend is; CONNECTING while any may still be;
    /// TRANSIENT_FAILURE when all are failing (or none is known).
    pub(crate) state: ConnectivityState,
    /// Why calls cannot be sent: set exactly when the state is TRANSIENT_FAILURE.
    pub(crate) error: Option<ConnectError>,
    /// Every subchannel's address and state, in the resolver's order.
    pub(crate) all: Vec<(Address, ConnectivityState)>,
}

impl Picks {
    /// Before the first resolution.
    pub(crate) fn starting() -> Self {
        Self {
            ready: Vec::new(),
            state: ConnectivityState::Connecting,
            error: None,
            all: Vec::new(),
        }
    }

    fn same_as(&self, other: &Self) -> bool {
        self.state == other.state
            && self.error == other.error
            && self.all == other.all
            && self.ready.len() == other.ready.len()
            && self
                .ready
                .iter()
                .zip(&other.ready)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0))
    }
}

/// Runs until every receiver of `picks` is gone, then drops the subchannels (their
/// connections close when their calls end).
pub(crate) async fn run(
    mut resolutions: watch::Receiver<Resolution>,
    picks: watch::Sender<Arc<Picks>>,
    changed: Arc<Notify>,
    refresh: Arc<Notify>,
    config: Arc<ChannelConfig>,
    connector: Arc<dyn Connector>,
) {
    let mut subchannels: Vec<Subchannel> = Vec::new();
    let mut resolution = Resolution::default();
    let mut resolver_alive = true;
    let mut failing: Vec<Address> = Vec::new();
    loop {
        tokio::select! {
            update = resolutions.changed(), if resolver_alive => match update {
                Ok(()) => {
                    resolution = resolutions.borrow_and_update().clone();
                    subchannels = update_subchannels(subchannels, &resolution.addresses, &config, &connector, &changed);
                }
                Err(_) => resolver_alive = false,
            },
            () = changed.notified() => {}
            () = sleep_until(next_readmission(&subchannels)) => {}
            () = picks.closed() => return,
        }
        eject_outliers(&subchannels);
        if config.policy == Policy::PickFirst {
            connect_first_viable(&subchannels);
        }

        // Ask for a fresh resolution when a backend starts failing.
        let now_failing: Vec<Address> = subchannels
            .iter()
            .filter(|sub| sub.backend.state() == ConnectivityState::TransientFailure)
            .map(|sub| sub.backend.address.clone())
            .collect();
        if now_failing.iter().any(|address| !failing.contains(address)) {
            refresh.notify_one();
        }
        failing = now_failing;

        let next = picks_of(&subchannels, &resolution);
        picks.send_if_modified(|current| {
            let modified = !current.same_as(&next);
            if modified {
                *current = Arc::new(next);
            }
            modified
        });
    }
}

/// The subchannels for `addresses`: kept where the address stays, new where it is new,
/// dropped where it went away.
fn update_subchannels(
    old: Vec<Subchannel>,
    addresses: &[Address],
    config: &Arc<ChannelConfig>,
    connector: &Arc<dyn Connector>,
    changed: &Arc<Notify>,
) -> Vec<Subchannel> {
    let mut by_address: HashMap<Address, Subchannel> = old
        .into_iter()
        .map(|sub| (sub.backend.address.clone(), sub))
        .collect();
    let eager = config.policy != Policy::PickFirst;
    addresses
        .iter()
        .map(|address| {
            by_address.remove(address).unwrap_or_else(|| {
                Subchannel::new(address.clone(), config, connector, eager, changed.clone())
            })
        })
        .collect()
}

/// Ejects the backends that asked for it, as long as no more than the configured share of
/// backends (but always one) is out at once.
fn eject_outliers(subchannels: &[Subchannel]) {
    let Some(config) = subchannels
        .iter()
        .find_map(|sub| sub.backend.outlier_config().copied())
    else {
        return;
    };
    let now = Instant::now();
    let allowed = (subchannels.len() * config.max_ejection_percent as usize / 100).max(1);
    let mut ejected = subchannels
        .iter()
        .filter(|sub| sub.backend.ejected_until().is_some_and(|until| until > now))
        .count();
    for sub in subchannels {
        if sub.backend.wants_ejection.load(Ordering::Relaxed) {
            if ejected < allowed {
                sub.backend.eject(now);
                ejected += 1;
            } else {
                sub.backend.wants_ejection.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// When the next ejected backend comes back (far in the future if none is out).
fn next_readmission(subchannels: &[Subchannel]) -> Instant {
    subchannels
        .iter()
        .filter_map(|sub| sub.backend.ejected_until())
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
}

/// `pick_first`: connect the first address that is not failing, and keep every address
/// before it trying (they are failing; the first to recover wins).
fn connect_first_viable(subchannels: &[Subchannel]) {
    for sub in subchannels {
        sub.backend.connect();
        if sub.backend.state() != ConnectivityState::TransientFailure {
            break;
        }
    }
}

/// The picks `subchannels` allow.
fn picks_of(subchannels: &[Subchannel], resolution: &Resolution) -> Picks {
    let now = Instant::now();
    let all: Vec<(Address, ConnectivityState)> = subchannels
        .iter()
        .map(|sub| (sub.backend.address.clone(), sub.backend.state()))
        .collect();
    let ready: Vec<Backend> = subchannels
        .iter()
        .zip(&all)
        .filter(|(sub, (_, state))| {
            *state == ConnectivityState::Ready && sub.backend.is_pickable(now)
        })
        .map(|(sub, _)| Backend(sub.backend.clone()))
        .collect();
    let (state, error) = if !ready.is_empty() {
        (ConnectivityState::Ready, None)
    } else if subchannels.is_empty() {
        match &resolution.error {
            Some(error) => (
                ConnectivityState::TransientFailure,
                Some(ConnectError::Resolution(error.clone())),
            ),
            None => (ConnectivityState::Connecting, None),
        }
    } else if all.iter().zip(subchannels).any(|((_, state), sub)| {
        matches!(
            state,
            ConnectivityState::Connecting | ConnectivityState::Idle
        ) || (*state == ConnectivityState::Ready && sub.backend.health() == Health::Unknown)
    }) {
        (ConnectivityState::Connecting, None)
    } else if all
        .iter()
        .any(|(_, state)| *state == ConnectivityState::Ready)
    {
        (
            ConnectivityState::TransientFailure,
            Some(ConnectError::OutOfRotation),
        )
    } else {
        let last_error = subchannels
            .iter()
            .find_map(|sub| sub.backend.last_error())
            .unwrap_or_else(|| "no backend is reachable".to_owned());
        (
            ConnectivityState::TransientFailure,
            Some(ConnectError::Unreachable {
                backends: subchannels.len(),
                last_error,
            }),
        )
    };
    Picks {
        ready,
        state,
        error,
        all,
    }
}
