//! The attempts of one call: its deadline around them, the retries or hedges its policy
//! asks for (the policies themselves are in `retry.rs`), the transparent retry of calls the
//! server never saw, and each attempt's pick of a backend.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http_body::Body as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Code, Status};

use super::balancer::Picks;
use super::channel::Shared;
use super::picker::CallInfo;
use super::replay::Replay;
use super::response::{Load, ResponseBody};
use super::retry::{HedgingPolicy, Throttle, pushback};
use super::service_config::Again;
use super::transport_error::{refused, transport_status};
use keel_core::code::status_of;
use keel_core::context::{format_grpc_timeout, parse_grpc_timeout};
use keel_core::status_check::{CheckedBody, check_response};

/// Calls that never reached the server are sent again this many times at most.
const MAX_UNSEEN_RETRIES: usize = 8;

/// Bytes of request body kept per call for retries (grpc-go's per-RPC default).
const RETRY_BUFFER: usize = 256 * 1024;

/// One call: its policy, its deadline around choosing backends and getting the response
/// headers (the rest of the deadline goes with the response body), and its attempts.
pub(crate) async fn call(
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

/// An attempt's outcome as the retry and hedging policies weigh it: its code (OK for an
/// answer that is not a failure), the server's pushback, and what the caller gets if no
/// further attempt is made.
struct Outcome {
    code: Code,
    pushback: Option<Option<Duration>>,
    result: Result<http::Response<ResponseBody>, Status>,
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
            let outcome = match self.attempt(request).await {
                Attempt::Failed { unseen: true, .. }
                    if unseen_retries < MAX_UNSEEN_RETRIES && replay.can_replay() =>
                {
                    unseen_retries += 1;
                    attempts -= 1;
                    continue;
                }
                attempt => self.weigh(attempt, throttle),
            };
            if outcome.code == Code::Ok {
                return outcome.result;
            }
            let Some(policy) = retry.filter(|policy| policy.retryable.contains(&outcome.code))
            else {
                return outcome.result;
            };
            if let Some(throttle) = throttle {
                throttle.failure();
            }
            let allowed = attempts < policy.max_attempts
                && replay.can_replay()
                && throttle.is_none_or(Throttle::allows)
                && outcome.pushback != Some(None);
            if !allowed {
                return outcome.result;
            }
            let wait = outcome
                .pushback
                .flatten()
                .unwrap_or_else(|| policy.backoff(attempts));
            if self
                .deadline
                .is_some_and(|deadline| Instant::now() + wait >= deadline)
            {
                return outcome.result;
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
                Some(attempt) = futures_util::StreamExt::next(&mut running) => {
                    let outcome = self.weigh(attempt, throttle);
                    if outcome.code == Code::Ok || !policy.non_fatal.contains(&outcome.code) {
                        return outcome.result;
                    }
                    if let Some(throttle) = throttle {
                        throttle.failure();
                    }
                    last = Some(outcome.result);
                    match outcome.pushback {
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

    /// What `attempt` means for the call (a success is counted by the throttle here).
    fn weigh(&self, attempt: Attempt, throttle: Option<&Throttle>) -> Outcome {
        match attempt {
            Attempt::Answered(response, load) => {
                let code = trailers_only_status(&response).unwrap_or(Code::Ok);
                if code == Code::Ok
                    && let Some(throttle) = throttle
                {
                    throttle.success();
                }
                Outcome {
                    code,
                    pushback: pushback(response.headers()),
                    result: Ok(self.respond(response, load)),
                }
            }
            Attempt::Failed { status, .. } => Outcome {
                code: status.code(),
                pushback: None,
                result: Err(status),
            },
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
        response.map(|body| ResponseBody::new(body, load, self.deadline))
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
                // Set while every backend is failing: fail fast.
                if let Some(error) = &current.error
                    && !self.wait_for_ready
                {
                    return Attempt::Failed {
                        status: Status::unavailable(format!("{}: {error}", shared.target)),
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
