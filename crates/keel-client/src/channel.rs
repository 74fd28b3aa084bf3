//! [`Channel`]: the client end every generated tonic client can use, with Keel's resolver,
//! balancer and subchannels behind it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use tokio::sync::{Notify, watch};
use tonic::Status;

use super::attempts;
use super::balancer::{self, Picks};
use super::config::ChannelConfig;
use super::connector::{Connector, Dial, TlsDial};
use super::error::ConnectError;
use super::picker::{self, Picker};
use super::resolver::{self, Resolution, Resolver};
use super::response::ResponseBody;
use super::service_config::{ServiceConfig, ServiceConfigError};
use super::subchannel::ConnectivityState;
use super::target::{Address, Target, TargetError};
use keel_core::settings::{InvalidSetting, Validate};

/// A client channel: one target, its backends' connections shared by every clone and every
/// call, calls spread by the configured policy.
///
/// Use it wherever tonic takes a channel: `GreeterClient::new(channel.clone())`. Cloning
/// is cheap; the connections close when the last clone is dropped (after their calls end).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_client::{Channel, Policy};
///
/// let channel = Channel::builder("dns:///payments.internal:50051")?
///     .policy(Policy::LeastRequest)
///     .connections_per_backend(2)
///     .build()?;
/// # let _ = channel;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
    picks: watch::Receiver<Arc<Picks>>,
}

/// What every call of a channel reads.
pub(crate) struct Shared {
    /// The target as given, for error messages.
    pub(crate) target: String,
    pub(crate) picker: Arc<dyn Picker>,
    /// Whether attempts time their responses for the picker.
    pub(crate) measure_latency: bool,
    /// The `:authority` of every call.
    pub(crate) authority: Authority,
    /// The deadline of calls that set none and have no per-method one.
    pub(crate) timeout: Option<Duration>,
    /// Whether calls wait for a backend when all are failing.
    pub(crate) wait_for_ready: bool,
    /// Per-method policies.
    pub(crate) service_config: ServiceConfig,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.shared.target)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Channel`].
pub struct ChannelBuilder {
    target: Target,
    config: ChannelConfig,
    service_config: ServiceConfig,
    picker: Option<Arc<dyn Picker>>,
    resolver: Option<Box<dyn Resolver>>,
    connector: Arc<dyn Connector>,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("target", &self.target)
            .field("config", &self.config)
            .field("custom_picker", &self.picker.is_some())
            .field("custom_resolver", &self.resolver.is_some())
            .finish()
    }
}

impl ChannelBuilder {
    /// All settings at once, checked by [`ChannelBuilder::build`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use keel_client::{Channel, ChannelConfig};
    ///
    /// let mut config = ChannelConfig::default();
    /// config.keepalive.interval = Some(Duration::from_secs(60));
    /// let channel = Channel::builder("static:///127.0.0.1:50051")?
    ///     .config(config)
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn config(mut self, config: ChannelConfig) -> Self {
        self.config = config;
        self
    }

    /// The load-balancing policy (default [`super::Policy::RoundRobin`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_client::{Channel, Policy};
    ///
    /// let channel = Channel::builder("static:///127.0.0.1:50051,127.0.0.2:50051")?
    ///     .policy(Policy::P2cEwma)
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn policy(mut self, policy: super::Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Per-method deadlines, wait-for-ready, retry and hedging policies and retry
    /// throttling, in gRPC's service config JSON (see [`super::service_config`]). A config
    /// that cannot be used is refused here, naming the field.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_client::Channel;
    ///
    /// let channel = Channel::builder("static:///127.0.0.1:50051")?
    ///     .service_config(r#"{"methodConfig": [{"name": [{}], "timeout": "2s"}]}"#)?
    ///     .build()?;
    /// # let _ = channel;
    /// let refused = Channel::builder("static:///127.0.0.1:50051")?
    ///     .service_config(r#"{"methodConfig": [{"name": [{}], "timeout": "-2s"}]}"#);
    /// assert!(refused.unwrap_err().to_string().contains("methodConfig[0].timeout"));
    /// # Ok(()) }
    /// ```
    pub fn service_config(mut self, json: &str) -> Result<Self, ServiceConfigError> {
        self.service_config = ServiceConfig::parse(json)?;
        Ok(self)
    }

    /// A picker of your own instead of the policy's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_client::{Backend, CallInfo, Channel, Picker};
    ///
    /// /// Always the first ready backend, in the resolver's order.
    /// struct First;
    ///
    /// impl Picker for First {
    ///     fn pick(&self, _call: &CallInfo<'_>, _ready: &[Backend]) -> usize {
    ///         0
    ///     }
    /// }
    ///
    /// let channel = Channel::builder("static:///127.0.0.1:50051")?
    ///     .picker(First)
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn picker(mut self, picker: impl Picker) -> Self {
        self.picker = Some(Arc::new(picker));
        self
    }

    /// A resolver of your own instead of the target's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use keel_client::{Address, BoxFuture, Channel, Resolver};
    ///
    /// /// Backends from a registry; here, one fixed address.
    /// struct Registry;
    ///
    /// impl Resolver for Registry {
    ///     fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>> {
    ///         Box::pin(async { Ok(vec![Address::Tcp("127.0.0.1:50051".parse().unwrap())]) })
    ///     }
    ///
    ///     fn refresh_interval(&self) -> Option<Duration> {
    ///         Some(Duration::from_secs(10))
    ///     }
    /// }
    ///
    /// let channel = Channel::builder("dns:///payments.internal:50051")?
    ///     .resolver(Registry)
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Some(Box::new(resolver));
        self
    }

    /// HTTP/2 connections per backend (default 1, at most 1024; `0` is refused by
    /// [`ChannelBuilder::build`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_client::Channel;
    ///
    /// let channel = Channel::builder("static:///127.0.0.1:50051")?
    ///     .connections_per_backend(4)
    ///     .build()?;
    /// # let _ = channel;
    /// let refused = Channel::builder("static:///127.0.0.1:50051")?
    ///     .connections_per_backend(0)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(refused.to_string(), "connections_per_backend = 0: must be between 1 and 1024");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn connections_per_backend(mut self, count: usize) -> Self {
        self.config.connections_per_backend = count;
        self
    }

    /// The deadline of calls that set none (above zero, at most a year).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use keel_client::Channel;
    ///
    /// let channel = Channel::builder("static:///127.0.0.1:50051")?
    ///     .timeout(Duration::from_secs(5))
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Connections over TLS ([`ClientTls`](super::ClientTls), from a
    /// [`ClientTlsConfig`](super::ClientTlsConfig)):
    /// the server's chain verified against the configured roots, its name against the
    /// target's host (a DNS target's host; a static target's IP address) unless the TLS
    /// settings name another, ALPN `h2` required, and its identity among the expected
    /// ones when a list is set. A backend that fails any of these is not used, and
    /// fail-fast calls get UNAVAILABLE with the reason.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_client::{Channel, ClientTls, ClientTlsConfig};
    ///
    /// let mut tls = ClientTlsConfig::default();
    /// tls.ca = "certs/ca.pem".into();
    /// tls.cert = "certs/client.pem".into();
    /// tls.key = "certs/client.key".into();
    /// tls.expected_identities = vec!["spiffe://keel.test/payments".into()];
    /// let channel = Channel::builder("dns:///payments.keel.test:8443")?
    ///     .tls(ClientTls::load(&tls)?)
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: keel_tls::ClientTls) -> Self {
        let host = match &self.target {
            Target::Dns { host, .. } => Some(host.clone()),
            _ => None,
        };
        self.connector = Arc::new(TlsDial { tls, host });
        self
    }

    /// Backends reached through `connector` instead of the network (the unit tests'
    /// in-memory backends).
    #[cfg(test)]
    pub(crate) fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Arc::new(connector);
        self
    }

    /// Checks the settings, then starts resolving and connecting (in the background, on
    /// the current Tokio runtime) and returns the channel at once. A setting that cannot be
    /// used is an [`InvalidSetting`] naming its key (`keepalive.timeout = 0s: must be above
    /// 0s`), and nothing is started. Panics outside a Tokio runtime.
    pub fn build(self) -> Result<Channel, InvalidSetting> {
        self.config.validate()?;
        Ok(self.start())
    }

    /// Starts a channel whose settings are known to be valid.
    fn start(self) -> Channel {
        let config = Arc::new(self.config);
        let picker = self
            .picker
            .unwrap_or_else(|| picker::for_policy(config.policy));
        let authority_text = config
            .authority
            .clone()
            .unwrap_or_else(|| self.target.authority());
        let authority = authority_text
            .parse()
            .unwrap_or_else(|_| Authority::from_static("localhost"));
        let target = self.target.to_string();
        let resolver = self
            .resolver
            .unwrap_or_else(|| resolver::for_target(&self.target, config.dns));

        let (resolutions_tx, resolutions) = watch::channel(Resolution::default());
        let (picks_tx, picks) = watch::channel(Arc::new(Picks::starting()));
        let refresh = Arc::new(Notify::new());
        tokio::spawn(resolver::run(
            resolver,
            resolutions_tx,
            refresh.clone(),
            target.clone(),
        ));
        tokio::spawn(balancer::run(
            resolutions,
            picks_tx,
            Arc::new(Notify::new()),
            refresh,
            config.clone(),
            self.connector,
        ));
        Channel {
            shared: Arc::new(Shared {
                target,
                measure_latency: picker.measures_latency(),
                picker,
                authority,
                timeout: config.timeout,
                wait_for_ready: config.wait_for_ready,
                service_config: self.service_config,
            }),
            picks,
        }
    }
}

impl Channel {
    /// A builder for `target` (see [`Target::parse`] for the forms).
    pub fn builder(target: &str) -> Result<ChannelBuilder, TargetError> {
        Ok(ChannelBuilder {
            target: Target::parse(target)?,
            config: ChannelConfig::default(),
            service_config: ServiceConfig::default(),
            picker: None,
            resolver: None,
            connector: Arc::new(Dial),
        })
    }

    /// A channel to `target` with the default settings (which are valid).
    pub fn new(target: &str) -> Result<Self, TargetError> {
        Ok(Self::builder(target)?.start())
    }

    /// The channel's state: READY when any backend can take calls.
    pub fn state(&self) -> ConnectivityState {
        self.picks.borrow().state
    }

    /// Every backend and its subchannel's state, in the resolver's order.
    pub fn backends(&self) -> Vec<(Address, ConnectivityState)> {
        self.picks.borrow().all.clone()
    }

    /// Waits until some backend can take calls (`Ok`), or every backend has failed (`Err`
    /// saying why: the resolution failed, every backend is unreachable or out of
    /// rotation), at most `timeout` ([`ConnectError::Timeout`]): for tools that should say
    /// at once that a server cannot be reached.
    pub async fn connect(&self, timeout: Duration) -> Result<(), ConnectError> {
        let mut picks = self.picks.clone();
        let settled = tokio::time::timeout(
            timeout,
            picks.wait_for(|picks| !picks.ready.is_empty() || picks.error.is_some()),
        )
        .await;
        match settled {
            Ok(Ok(picks)) => match &picks.error {
                Some(error) if picks.ready.is_empty() => Err(error.clone()),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(ConnectError::Shutdown),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    /// What calls may use now, and every change to it.
    #[cfg(test)]
    pub(crate) fn picks(&self) -> watch::Receiver<Arc<Picks>> {
        self.picks.clone()
    }

    /// Waits until some backend can take calls, at most `timeout`; false if none could.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut picks = self.picks.clone();
        tokio::time::timeout(timeout, picks.wait_for(|picks| !picks.ready.is_empty()))
            .await
            .is_ok_and(|found| found.is_ok())
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<ResponseBody>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Calls wait for a backend inside their future, under their deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(attempts::call(
            self.shared.clone(),
            self.picks.clone(),
            request,
        ))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::resolver::BoxFuture;
    use crate::testing::{Net, Reach, say_hello};

    /// A resolver that never finds anything.
    struct Failing;

    impl Resolver for Failing {
        fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>> {
            Box::pin(async { Err("no such service".to_owned()) })
        }

        fn refresh_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(60))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connect_says_what_failed() {
        let net = Net::default();
        let up = net.host(1, Duration::ZERO);
        let refused = net.host(2, Duration::ZERO);
        refused.set_reach(Reach::Refused);
        let silent = net.host(3, Duration::ZERO);
        silent.set_reach(Reach::Silent);
        let second = Duration::from_secs(1);

        assert_eq!(net.channel(&[&up], |b| b).connect(second).await, Ok(()));
        assert_eq!(
            net.channel(&[&up, &refused], |b| b).connect(second).await,
            Ok(()),
            "one backend is enough"
        );
        match net.channel(&[&refused], |b| b).connect(second).await {
            Err(ConnectError::Unreachable {
                backends: 1,
                last_error,
            }) => assert!(last_error.contains("refused"), "{last_error}"),
            other => panic!("{other:?}"),
        }

        // No answer at all: still connecting when the caller's time is up; failing once
        // the attempt's own time (the minimum connect timeout, 20 s) is.
        let blackholed = net.channel(&[&silent], |b| b);
        assert_eq!(
            blackholed.connect(second).await,
            Err(ConnectError::Timeout(second))
        );
        match blackholed.connect(Duration::from_secs(30)).await {
            Err(ConnectError::Unreachable { last_error, .. }) => {
                assert!(last_error.contains("longer than 20s"), "{last_error}");
            }
            other => panic!("{other:?}"),
        }
        let status = say_hello(&blackholed).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "fails fast: {status:?}");

        let unresolved = net.channel(&[&up], |b| b.resolver(Failing));
        assert_eq!(
            unresolved.connect(second).await,
            Err(ConnectError::Resolution("no such service".to_owned()))
        );
        let status = say_hello(&unresolved).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().ends_with("no addresses: no such service"),
            "{status:?}"
        );
    }
}
