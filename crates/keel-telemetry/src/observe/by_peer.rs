//! The `peer_identity` label of a server's RPC metrics (`observe.identity_label`): each
//! method's series split by the caller's identity, the principal its certificate proved
//! (SPIFFE ID, else first DNS SAN, else subject), or `""` for a caller without one
//! (plaintext, or TLS without a client certificate).
//!
//! Meant for the bounded set of services calling a service over mutual TLS, never for end
//! users: each identity multiplies every method's series. A server labels at most
//! [`MAX_IDENTITIES`] distinct identities; calls from any further one share the
//! `peer_identity="other"` series (with one warning), so a CA that issues per-instance or
//! per-user certificates cannot grow `/metrics` without bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use keel_core::identity::PeerIdentity;
use keel_core::method::MethodInfo;

use super::rpc_metrics::{MethodMetrics, RpcMetrics};

/// Distinct identities one server labels its series with; the rest count as [`OTHER`].
pub const MAX_IDENTITIES: usize = 100;

/// The `peer_identity` of calls from identities past [`MAX_IDENTITIES`].
pub const OTHER: &str = "other";

/// The identities a server has labelled series with, shared by its methods.
#[derive(Debug, Default)]
pub(crate) struct Identities {
    named: Mutex<Named>,
}

#[derive(Debug, Default)]
struct Named {
    labels: HashSet<Arc<str>>,
    /// An identity past the limit has come (and the warning has been written).
    overflowed: bool,
}

impl Identities {
    /// The label value for calls from `principal`: itself while fewer than
    /// [`MAX_IDENTITIES`] are named (`""`, no identity, takes no place), else [`OTHER`].
    fn label(&self, principal: &str) -> Arc<str> {
        if principal.is_empty() {
            return Arc::from("");
        }
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = named.labels.get(principal) {
            return known.clone();
        }
        if named.labels.len() < MAX_IDENTITIES {
            let label: Arc<str> = Arc::from(principal);
            named.labels.insert(label.clone());
            return label;
        }
        if !std::mem::replace(&mut named.overflowed, true) {
            tracing::warn!(
                target: super::call::LOG_TARGET,
                limit = MAX_IDENTITIES,
                "more peer identities than observe.identity_label labels: calls from the \
                 others are counted as peer_identity=\"other\""
            );
        }
        Arc::from(OTHER)
    }
}

/// The series one method's calls are counted in.
#[derive(Debug)]
pub(crate) enum MethodSeries {
    /// One set for every caller: no `peer_identity` label.
    Shared(Arc<MethodMetrics>),
    /// A set per caller identity, created at the identity's first call.
    ByPeer(ByPeer),
}

impl MethodSeries {
    /// `info`'s series in `metrics`: split by caller when `identities` is given.
    pub(crate) fn new(
        info: &MethodInfo,
        metrics: &RpcMetrics,
        identities: Option<&Arc<Identities>>,
    ) -> Self {
        match identities {
            None => Self::Shared(metrics.method(info)),
            Some(identities) => Self::ByPeer(ByPeer {
                info: info.clone(),
                metrics: metrics.clone(),
                identities: identities.clone(),
                series: RwLock::default(),
            }),
        }
    }

    /// The series a call from `identity` is counted in.
    pub(crate) fn of(&self, identity: Option<&PeerIdentity>) -> Arc<MethodMetrics> {
        match self {
            Self::Shared(series) => series.clone(),
            Self::ByPeer(by_peer) => by_peer.of(identity.map_or("", PeerIdentity::principal)),
        }
    }
}

/// One method's series by caller identity.
#[derive(Debug)]
pub(crate) struct ByPeer {
    info: MethodInfo,
    metrics: RpcMetrics,
    identities: Arc<Identities>,
    /// By label value: at most [`MAX_IDENTITIES`] + 2 (`""` and [`OTHER`]).
    series: RwLock<HashMap<Arc<str>, Arc<MethodMetrics>>>,
}

impl ByPeer {
    fn of(&self, principal: &str) -> Arc<MethodMetrics> {
        let read = |label: &str| {
            let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
            series.get(label).cloned()
        };
        if let Some(found) = read(principal) {
            return found;
        }
        let label = self.identities.label(principal);
        if let Some(found) = read(&label) {
            return found;
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        series
            .entry(label.clone())
            .or_insert_with(|| self.metrics.method_of_peer(&self.info, label))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_core::method::RpcType;
    use prometheus_client::registry::Registry;
    use tonic::Code;

    use super::*;
    use crate::observe::Side;

    fn identity(principal: &str) -> PeerIdentity {
        PeerIdentity::new(Some(principal.to_owned()), Vec::new(), String::new())
    }

    #[test]
    fn identities_past_the_limit_share_the_other_series() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::register(Side::Server, &mut registry);
        let info = MethodInfo {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            rpc_type: RpcType::Unary,
        };
        let series = MethodSeries::new(&info, &metrics, Some(&Arc::default()));
        let call = |identity: Option<&PeerIdentity>| {
            series
                .of(identity)
                .handled(Code::Ok, Duration::from_millis(1), None);
        };
        call(None);
        for n in 0..MAX_IDENTITIES + 3 {
            call(Some(&identity(&format!("spiffe://keel.test/{n}"))));
        }
        // A labelled identity keeps its series after the limit is reached.
        call(Some(&identity("spiffe://keel.test/0")));
        call(None);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count = |identity: &str| {
            let series = format!(
                "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"helloworld.Greeter\",\
                 grpc_method=\"SayHello\",grpc_code=\"OK\",peer_identity=\"{identity}\"}}"
            );
            sample(&text, &series)
        };
        assert_eq!(count(""), Some(2.0), "{text}");
        assert_eq!(count("spiffe://keel.test/0"), Some(2.0), "{text}");
        assert_eq!(count("spiffe://keel.test/99"), Some(1.0), "{text}");
        assert_eq!(count("spiffe://keel.test/100"), None, "{text}");
        assert_eq!(count(OTHER), Some(3.0), "{text}");
        let handled = text
            .lines()
            .filter(|line| line.starts_with("grpc_server_handled_total{"))
            .count();
        assert_eq!(handled, MAX_IDENTITIES + 2, "{text}");
    }

    /// The value of `series` in the text `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }
}
