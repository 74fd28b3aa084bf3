//! [`Channel`]: the client end every generated tonic client can use, with Keel's resolver,
//! balancer and subchannels behind it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};

use super::balancer::{self, Picks};
use super::config::ChannelConfig;
use super::picker::{self, CallInfo, Picker};
use super::replay::Replay;
use super::resolver::{self, Resolution, Resolver};
use super::retry::{HedgingPolicy, Throttle, pushback};
use super::service_config::{Again, ServiceConfig, ServiceConfigError};
use super::subchannel::{Backend, ConnectivityState};
use super::target::{Address, Target, TargetError};
use keel_core::code::status_of;
use keel_core::context::{format_grpc_timeout, parse_grpc_timeout};
use keel_core::status_check::{CheckedBody, check_response};

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
///     .build();
/// # let _ = channel;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
    picks: watch::Receiver<Arc<Picks>>,
}

/// What every call of a channel reads.
struct Shared {
    target: String,
    picker: Arc<dyn Picker>,
    measure_latency: bool,
    authority: Authority,
    timeout: Option<Duration>,
    wait_for_ready: bool,
    service_config: ServiceConfig,
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
    /// All settings at once.
    pub fn config(mut self, config: ChannelConfig) -> Self {
        self.config = config;
        self
    }

    /// The load-balancing policy.
    pub fn policy(mut self, policy: super::Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Per-method deadlines, wait-for-ready, retry and hedging policies and retry
    /// throttling, in gRPC's service config JSON (see [`super::service_config`]).
    pub fn service_config(mut self, json: &str) -> Result<Self, ServiceConfigError> {
        self.service_config = ServiceConfig::parse(json)?;
        Ok(self)
    }

    /// A picker of your own instead of the policy's.
    pub fn picker(mut self, picker: impl Picker) -> Self {
        self.picker = Some(Arc::new(picker));
        self
    }

    /// A resolver of your own instead of the target's.
    pub fn resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Some(Box::new(resolver));
        self
    }

    /// HTTP/2 connections per backend.
    pub fn connections_per_backend(mut self, count: usize) -> Self {
        self.config.connections_per_backend = count.max(1);
        self
    }

    /// The deadline of calls that set none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Starts resolving and connecting (in the background, on the current Tokio runtime)
    /// and returns the channel at once. Panics outside a Tokio runtime.
    pub fn build(self) -> Channel {
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
        })
    }

    /// A channel to `target` with the default settings.
    pub fn new(target: &str) -> Result<Self, TargetError> {
        Ok(Self::builder(target)?.build())
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
    /// with the last connection error), at most `timeout`: for tools that should say at
    /// once that a server cannot be reached.
    pub async fn connect(&self, timeout: Duration) -> Result<(), String> {
        let mut picks = self.picks.clone();
        let settled = tokio::time::timeout(
            timeout,
            picks.wait_for(|picks| {
                !picks.ready.is_empty() || picks.state == ConnectivityState::TransientFailure
            }),
        )
        .await;
        match settled {
            Ok(Ok(picks)) if !picks.ready.is_empty() => Ok(()),
            Ok(Ok(picks)) => Err(picks
                .error
                .clone()
                .unwrap_or_else(|| "no backend is reachable".to_owned())),
            Ok(Err(_)) => Err("the channel has shut down".to_owned()),
            Err(_) => Err(format!("no backend was ready within {timeout:?}")),
        }
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
        Box::pin(call(self.shared.clone(), self.picks.clone(), request))
    }
}

/// One call: its policy, its deadline around choosing backends and getting the response
/// headers (the rest of the deadline goes with the response body), and its attempts.
async fn call(
    shared: Arc<Shared>,
    picks: watch::Receiver<Arc<Picks>>,
    mut request: http::Request<tonic::body::Body>,
) -> Result<http::Response<ResponseBody>, Status> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(shared.authority.clone());
    if parts.path_and_query.is_none() {
        return Err(Status::internal("a call without a path"));
    }
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|error| Status::internal(error.to_string()))?;

    let policy = shared.service_config.lookup(request.uri().path()).cloned();
    let timeout = match parse_grpc_timeout(request.headers()) {
        Some(timeout) => Some(timeout),
        None => {
            let timeout = policy
                .as_ref()
                .and_then(|policy| policy.timeout)
                .or(shared.timeout);
            if let Some(timeout) = timeout
                && let Ok(value) = format_grpc_timeout(timeout).parse()
            {
                request.headers_mut().insert("grpc-timeout", value);
            }
            timeout
        }
    };
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let call = Call {
        shared: &shared,
        picks,
        wait_for_ready: policy
            .as_ref()
            .and_then(|policy| policy.wait_for_ready)
            .unwrap_or(shared.wait_for_ready),
        deadline,
    };
    let attempts = call.run(request, policy.as_ref().and_then(|p| p.again.as_ref()));
    match (timeout, deadline) {
        (Some(timeout), Some(deadline)) => tokio::time::timeout_at(deadline, attempts)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded(timeout))),
        _ => attempts.await,
    }
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("the call's deadline of {timeout:?} passed"))
}

/// What a call's attempts share.
struct Call<'a> {
    shared: &'a Shared,
    picks: watch::Receiver<Arc<Picks>>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
}

/// How one attempt ended.
enum Attempt {
    /// Response headers arrived (a trailers-only response included), their status checked.
    Answered(http::Response<CheckedBody<hyper::body::Incoming>>, Load),
    /// No response: the status to report, and whether the server cannot have seen the
    /// call (a refused stream), so that it may be sent again transparently.
    Failed { status: Status, unseen: bool },
}

/// The status of a trailers-only response (no body; the status in the headers).
fn trailers_only_status(
    response: &http::Response<CheckedBody<hyper::body::Incoming>>,
) -> Option<Code> {
    if !response.body().is_end_stream() {
        return None;
    }
    status_of(response.headers()).map(|(code, _)| code)
}

/// Calls that never reached the server are sent again this many times at most.
const MAX_UNSEEN_RETRIES: usize = 8;

impl Call<'_> {
    /// Runs the call's attempts per its retry or hedging policy (one attempt without).
    async fn run(
        mut self,
        request: http::Request<tonic::body::Body>,
        again: Option<&Again>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let (parts, body) = request.into_parts();
        let head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        };
        let replay = Replay::new(body, RETRY_BUFFER);
        let throttle = self.shared.service_config.throttle.as_deref();
        if let Some(Again::Hedge(policy)) = again {
            return self.hedge(&head, &replay, policy, throttle).await;
        }
        let retry = match again {
            Some(Again::Retry(policy)) => Some(policy),
            _ => None,
        };
        let mut attempts = 0_u32;
        let mut unseen_retries = 0;
        loop {
            attempts += 1;
            let request = head.request(attempts - 1, replay.body());
            let (code, pushback, outcome) = match self.attempt(request).await {
                Attempt::Answered(response, load) => match trailers_only_status(&response) {
                    None | Some(Code::Ok) => {
                        if let Some(throttle) = throttle {
                            throttle.success();
                        }
                        return Ok(self.respond(response, load));
                    }
                    Some(code) => {
                        let pushback = pushback(response.headers());
                        (code, pushback, Ok(self.respond(response, load)))
                    }
                },
                Attempt::Failed { status, unseen } => {
                    if unseen && unseen_retries < MAX_UNSEEN_RETRIES && replay.can_replay() {
                        unseen_retries += 1;
                        attempts -= 1;
                        continue;
                    }
                    (status.code(), None, Err(status))
                }
            };
            let Some(policy) = retry.filter(|policy| policy.retryable.contains(&code)) else {
                return outcome;
            };
            if let Some(throttle) = throttle {
                throttle.failure();
            }
            let allowed = attempts < policy.max_attempts
                && replay.can_replay()
                && throttle.is_none_or(Throttle::allows)
                && pushback != Some(None);
            if !allowed {
                return outcome;
            }
            let wait = pushback
                .flatten()
                .unwrap_or_else(|| policy.backoff(attempts));
            if self
                .deadline
                .is_some_and(|deadline| Instant::now() + wait >= deadline)
            {
                return outcome;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Hedging: a new attempt every `delay` until one answers with a status that is not
    /// non-fatal; the others are cancelled.
    async fn hedge(
        &mut self,
        head: &Head,
        replay: &Replay,
        policy: &HedgingPolicy,
        throttle: Option<&Throttle>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let mut running = futures_util::stream::FuturesUnordered::new();
        let start = |number: u32| {
            let mut attempt = Call {
                shared: self.shared,
                picks: self.picks.clone(),
                wait_for_ready: self.wait_for_ready,
                deadline: self.deadline,
            };
            let request = head.request(number, replay.body());
            async move { attempt.attempt(request).await }
        };
        running.push(start(0));
        let mut sent = 1;
        let mut last: Option<Result<http::Response<ResponseBody>, Status>> = None;
        let mut next_at = Instant::now() + policy.delay;
        let mut stopped = false;
        loop {
            let may_send = !stopped
                && sent < policy.max_attempts
                && replay.can_replay()
                && throttle.is_none_or(Throttle::allows);
            tokio::select! {
                Some(outcome) = futures_util::StreamExt::next(&mut running) => {
                    let (code, pushback, outcome) = match outcome {
                        Attempt::Answered(response, load) => match trailers_only_status(&response) {
                            None | Some(Code::Ok) => {
                                if let Some(throttle) = throttle {
                                    throttle.success();
                                }
                                return Ok(self.respond(response, load));
                            }
                            Some(code) => {
                                let pushback = pushback(response.headers());
                                (code, pushback, Ok(self.respond(response, load)))
                            }
                        },
                        Attempt::Failed { status, .. } => (status.code(), None, Err(status)),
                    };
                    if !policy.non_fatal.contains(&code) {
                        return outcome;
                    }
                    if let Some(throttle) = throttle {
                        throttle.failure();
                    }
                    last = Some(outcome);
                    match pushback {
                        Some(None) => stopped = true,
                        Some(Some(wait)) => next_at = Instant::now() + wait,
                        None => next_at = Instant::now(),
                    }
                    if running.is_empty() && (stopped || !may_send) {
                        return last.unwrap_or_else(|| Err(Status::unavailable("no attempt answered")));
                    }
                }
                () = tokio::time::sleep_until(next_at), if may_send => {
                    running.push(start(sent));
                    sent += 1;
                    next_at = Instant::now() + policy.delay;
                }
                else => {
                    return last.unwrap_or_else(|| Err(Status::unavailable("no attempt answered")));
                }
            }
        }
    }

    /// Wraps an answer for the caller.
    fn respond(
        &self,
        response: http::Response<CheckedBody<hyper::body::Incoming>>,
        load: Load,
    ) -> http::Response<ResponseBody> {
        if load.backend.detects_outliers()
            && let Some(code) = trailers_only_status(&response)
        {
            load.backend.record_outcome(code);
        }
        let deadline = self
            .deadline
            .map(|at| (Box::pin(tokio::time::sleep_until(at)), at));
        response.map(|body| ResponseBody {
            inner: body,
            load,
            deadline,
        })
    }

    /// One attempt: picks a backend and sends; waits while no backend is ready (unless
    /// all are failing and the call is fail-fast), and sends again when a connection turns
    /// out to be closing before the request left.
    async fn attempt(&mut self, mut request: http::Request<tonic::body::Body>) -> Attempt {
        let shared = self.shared;
        let mut never_sent = 0;
        loop {
            let current = self.picks.borrow_and_update().clone();
            if current.ready.is_empty() {
                if current.state == ConnectivityState::TransientFailure && !self.wait_for_ready {
                    return Attempt::Failed {
                        status: Status::unavailable(format!(
                            "{}: {}",
                            shared.target,
                            current.error.as_deref().unwrap_or("no backend is ready")
                        )),
                        unseen: false,
                    };
                }
                if self.picks.changed().await.is_err() {
                    return Attempt::Failed {
                        status: Status::unavailable("the channel has shut down"),
                        unseen: false,
                    };
                }
                continue;
            }
            let index = {
                let call = CallInfo {
                    path: request.uri().path(),
                    headers: request.headers(),
                };
                shared.picker.pick(&call, &current.ready) % current.ready.len()
            };
            let backend = current.ready[index].0.clone();
            drop(current);
            let Some(mut connection) = backend.connection() else {
                // The connection closed after the balancer's last update; the next one is
                // coming.
                tokio::select! {
                    _ = self.picks.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                continue;
            };
            let load = Load::start(backend);
            let sent_at = shared.measure_latency.then(Instant::now);
            match connection.try_send_request(request).await {
                Ok(response) => {
                    if let Some(sent_at) = sent_at {
                        load.backend.record_latency(sent_at.elapsed());
                    }
                    return Attempt::Answered(check_response(response), load);
                }
                Err(mut error) => match error.take_message() {
                    // Never sent: the connection was closing. Any backend may take it.
                    Some(unsent) if never_sent < MAX_UNSEEN_RETRIES => {
                        never_sent += 1;
                        request = unsent;
                    }
                    _ => {
                        let error = error.into_error();
                        load.backend.record_outcome(Code::Unavailable);
                        return Attempt::Failed {
                            unseen: refused(&error),
                            status: transport_status(&error, &load.backend),
                        };
                    }
                },
            }
        }
    }
}

/// Bytes of request body kept per call for retries (grpc-go's per-RPC default).
const RETRY_BUFFER: usize = 256 * 1024;

/// The parts of a request every attempt repeats.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Head {
    /// The request of attempt number `previous` + 1 (retries say how many came before).
    fn request(&self, previous: u32, body: tonic::body::Body) -> http::Request<tonic::body::Body> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        if previous > 0 {
            request
                .headers_mut()
                .insert("grpc-previous-rpc-attempts", previous.into());
        }
        request
    }
}

/// True when the server refused the stream (REFUSED_STREAM, or a GOAWAY that came before
/// it): gRPC guarantees the application never saw such a call.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = error.source();
    }
    false
}

/// A call counted as outstanding on its backend until its response ends.
struct Load {
    backend: Arc<Backend>,
}

impl Load {
    fn start(backend: Arc<Backend>) -> Self {
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        Self { backend }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.backend.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The status a transport failure gives a call, per gRPC's HTTP/2 mapping: a stream the
/// server refused or a connection that failed is UNAVAILABLE; a cancelled stream
/// CANCELLED; ENHANCE_YOUR_CALM from the server is RESOURCE_EXHAUSTED; a protocol the
/// server broke is [`broken_protocol_status`].
fn transport_status(error: &(dyn std::error::Error + 'static), backend: &Backend) -> Status {
    let address = &backend.address;
    if let Some(status) = broken_protocol_status(error, backend.header_limit) {
        return Status::internal(format!("{address}: {}", status.message()));
    }
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && let Some(reason) = h2.reason()
        {
            let code = match reason {
                h2::Reason::CANCEL => Code::Cancelled,
                h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
                h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
                h2::Reason::REFUSED_STREAM | h2::Reason::NO_ERROR => Code::Unavailable,
                _ if h2.is_go_away() || h2.is_io() => Code::Unavailable,
                _ => Code::Internal,
            };
            return Status::new(code, format!("{address}: {error}"));
        }
        source = error.source();
    }
    Status::unavailable(format!("{address}: {error}"))
}

/// The status of a call whose stream or connection this client's HTTP/2 stack (h2) closed
/// because the server broke the protocol, most often with response headers over the
/// client's `header_limit`: INTERNAL, naming that limit. `None` for any other error.
///
/// [`Channel`] applies it itself; this is for errors of other transports, such as tonic's
/// channel, whose own wording ("h2 protocol error: http2 error") says nothing of the cause.
pub fn broken_protocol_status(
    error: &(dyn std::error::Error + 'static),
    header_limit: u32,
) -> Option<Status> {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            let broken = h2.is_library()
                && matches!(
                    h2.reason(),
                    Some(
                        h2::Reason::PROTOCOL_ERROR
                            | h2::Reason::COMPRESSION_ERROR
                            | h2::Reason::ENHANCE_YOUR_CALM
                    )
                );
            return broken.then(|| {
                Status::internal(format!(
                    "{h2}: the server's response headers were malformed or larger than this \
                     client's limit of {header_limit} bytes (http2.max_header_list_size)"
                ))
            });
        }
        source = error.source();
    }
    None
}

pin_project_lite::pin_project! {
    /// A response body from a [`Channel`]: counts its call as outstanding until it ends,
    /// ends the call with DEADLINE_EXCEEDED when the deadline passes first, and has its
    /// trailers checked (a malformed or missing status becomes a clear one).
    pub struct ResponseBody {
        #[pin]
        inner: CheckedBody<hyper::body::Incoming>,
        load: Load,
        deadline: Option<(Pin<Box<Sleep>>, Instant)>,
    }
}

impl Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            let backend = &this.load.backend;
            if backend.detects_outliers() {
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(code) = frame.trailers_ref().and_then(status_of) {
                            backend.record_outcome(code.0);
                        }
                    }
                    Some(Err(_)) => backend.record_outcome(Code::Unavailable),
                    None => {}
                }
            }
            return Poll::Ready(
                frame.map(|frame| frame.map_err(|error| transport_status(&error, backend))),
            );
        }
        if let Some((sleep, at)) = this.deadline {
            ready!(sleep.as_mut().poll(cx));
            let late = Instant::now().saturating_duration_since(*at);
            *this.deadline = None;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "the call's deadline passed while the response was streaming ({late:?} ago)"
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
