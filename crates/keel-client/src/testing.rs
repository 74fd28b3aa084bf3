//! Doubles for the client core's unit tests: backends in memory, reached through a
//! [`Connector`] of their own ([`Net`]), that serve helloworld.Greeter with a simulated
//! latency and outcome, and grpc.health.v1 `Watch` with a status the test sets.
//!
//! With no socket in the way, the tests run under tokio's paused time: a backend's latency,
//! a reconnection backoff or an ejection passes in virtual time, in a deterministic order,
//! and costs nothing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use keel_health::pb::health_server::{Health, HealthServer};
use keel_health::pb::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
    health_check_response::ServingStatus,
};
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use keel_interop::pb::helloworld::{HelloReply, HelloRequest};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use super::Channel;
use super::balancer::Picks;
use super::connector::{Connector, Io};
use super::resolver::BoxFuture;
use super::target::Address;

/// Bytes buffered in each direction of an in-memory connection.
const PIPE_BUFFER: usize = 64 * 1024;

/// What a connection attempt to a host meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Refused at once.
    Refused,
    /// No answer, ever (a blackholed address).
    Silent,
    /// Accepted, then closed right after the HTTP/2 handshake (a crash-looping process).
    Closing,
    /// Served.
    Serving,
}

/// What a host's health service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HealthAnswer {
    /// Streams this status, and each change to it.
    Status(ServingStatus),
    /// Opens the stream, sends nothing yet.
    Silent,
    /// Ends every `Watch` with this code (UNIMPLEMENTED: no health service).
    Fails(Code),
}

/// The in-memory network: its hosts by address. Clones share it.
#[derive(Clone, Default)]
pub(crate) struct Net {
    hosts: Arc<Mutex<HashMap<Address, Host>>>,
}

impl Net {
    /// A serving host at `127.0.0.<n>:50051`, answering after `latency`, healthy.
    pub(crate) fn host(&self, n: u8, latency: Duration) -> Host {
        let address = Address::Tcp(([127, 0, 0, n], 50051).into());
        let (health, _) = watch::channel(HealthAnswer::Status(ServingStatus::Serving));
        let host = Host(Arc::new(HostState {
            address: address.clone(),
            reach: Mutex::new(Reach::Serving),
            latency: Mutex::new(latency),
            failure: Mutex::new(None),
            calls: AtomicUsize::new(0),
            health,
            connections: Mutex::new(Vec::new()),
            attempts: Mutex::new(Vec::new()),
        }));
        self.hosts.lock().unwrap().insert(address, host.clone());
        host
    }

    /// A channel to `hosts` (a `static:///` target) over this network, set up by `configure`.
    pub(crate) fn channel(
        &self,
        hosts: &[&Host],
        configure: impl FnOnce(super::ChannelBuilder) -> super::ChannelBuilder,
    ) -> Channel {
        let list: Vec<String> = hosts
            .iter()
            .map(|host| host.address().to_string())
            .collect();
        let builder = Channel::builder(&format!("static:///{}", list.join(","))).unwrap();
        configure(builder.connector(self.clone()))
            .build()
            .expect("the tests' settings are valid")
    }
}

impl Connector for Net {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, Result<Box<dyn Io>, String>> {
        let host = self.hosts.lock().unwrap().get(address).cloned();
        Box::pin(async move {
            let Some(host) = host else {
                return Err(format!("{address}: no such host"));
            };
            host.0.attempts.lock().unwrap().push(Instant::now());
            let reach = *host.0.reach.lock().unwrap();
            match reach {
                Reach::Refused => Err(format!("connecting to {address}: refused")),
                Reach::Silent => std::future::pending().await,
                Reach::Closing => Ok(Box::new(host.accept(true)) as Box<dyn Io>),
                Reach::Serving => Ok(Box::new(host.accept(false)) as Box<dyn Io>),
            }
        })
    }
}

/// A backend of the in-memory network. Clones share it.
#[derive(Clone)]
pub(crate) struct Host(Arc<HostState>);

struct HostState {
    address: Address,
    reach: Mutex<Reach>,
    latency: Mutex<Duration>,
    failure: Mutex<Option<Code>>,
    calls: AtomicUsize,
    health: watch::Sender<HealthAnswer>,
    /// The tasks serving its connections.
    connections: Mutex<Vec<AbortHandle>>,
    /// When each connection attempt was made.
    attempts: Mutex<Vec<Instant>>,
}

impl Host {
    /// Its address.
    pub(crate) fn address(&self) -> Address {
        self.0.address.clone()
    }

    /// Greeter calls it has received.
    pub(crate) fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// When each connection attempt to it was made.
    pub(crate) fn attempts(&self) -> Vec<Instant> {
        self.0.attempts.lock().unwrap().clone()
    }

    /// What new connection attempts meet.
    pub(crate) fn set_reach(&self, reach: Reach) {
        *self.0.reach.lock().unwrap() = reach;
    }

    /// Fails every Greeter call with `code` from now on (`None`: answers again).
    pub(crate) fn set_failure(&self, code: Option<Code>) {
        *self.0.failure.lock().unwrap() = code;
    }

    /// What its health service says from now on (open `Watch` streams included).
    pub(crate) fn set_health(&self, answer: HealthAnswer) {
        self.0.health.send_replace(answer);
    }

    /// Closes every connection it has (the process died).
    pub(crate) fn disconnect(&self) {
        for connection in self.0.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// A new connection: serves the far end of a pipe (only to say GOAWAY and close it if
    /// `closing`), returns the near end.
    fn accept(&self, closing: bool) -> tokio::io::DuplexStream {
        let (near, far) = tokio::io::duplex(PIPE_BUFFER);
        let routes = tonic::service::Routes::new(GreeterServer::new(self.clone()))
            .add_service(HealthServer::new(self.clone()));
        let serving = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(far), TowerToHyperService::new(routes));
        let task = tokio::spawn(async move {
            let mut serving = std::pin::pin!(serving);
            if closing {
                serving.as_mut().graceful_shutdown();
            }
            let _ = serving.await;
        });
        self.0.connections.lock().unwrap().push(task.abort_handle());
        near
    }
}

#[tonic::async_trait]
impl Greeter for Host {
    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let latency = *self.0.latency.lock().unwrap();
        // sleep: the backend's simulated latency: the behaviour the tests measure (virtual time)
        tokio::time::sleep(latency).await;
        match *self.0.failure.lock().unwrap() {
            Some(code) => Err(Status::new(code, "scripted failure")),
            None => Ok(Response::new(HelloReply {
                message: self.0.address.to_string(),
            })),
        }
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Host {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Err(Status::unimplemented("the client core only watches"))
    }

    async fn list(
        &self,
        _: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("the client core only watches"))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        if let HealthAnswer::Fails(code) = *self.0.health.borrow() {
            return Err(Status::new(code, "scripted health failure"));
        }
        let answers = tokio_stream::wrappers::WatchStream::new(self.0.health.subscribe());
        let stream = tokio_stream::StreamExt::filter_map(answers, |answer| match answer {
            HealthAnswer::Status(status) => Some(Ok(HealthCheckResponse {
                status: status as i32,
            })),
            HealthAnswer::Silent => None,
            HealthAnswer::Fails(code) => Some(Err(Status::new(code, "scripted health failure"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Waits (at most a virtual minute) until what `channel`'s calls may use satisfies `done`.
pub(crate) async fn until_picks(channel: &Channel, done: impl FnMut(&Arc<Picks>) -> bool) {
    let mut picks = channel.picks();
    let waited = tokio::time::timeout(Duration::from_secs(60), picks.wait_for(done)).await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "picks never got there: {:?}",
        channel.picks().borrow()
    );
}

/// The addresses calls may go to now.
pub(crate) fn pickable(channel: &Channel) -> Vec<Address> {
    channel
        .picks()
        .borrow()
        .ready
        .iter()
        .map(|backend| backend.address().clone())
        .collect()
}

/// Waits until exactly `hosts` take calls.
pub(crate) async fn until_pickable(channel: &Channel, hosts: &[&Host]) {
    let expected: Vec<Address> = hosts.iter().map(|host| host.address()).collect();
    until_picks(channel, |picks| {
        picks
            .ready
            .iter()
            .map(|backend| backend.address())
            .eq(expected.iter())
    })
    .await;
}

/// One SayHello call through `channel`.
pub(crate) async fn say_hello(channel: &Channel) -> Result<String, Status> {
    GreeterClient::new(channel.clone())
        .say_hello(HelloRequest::default())
        .await
        .map(|reply| reply.into_inner().message)
}

/// Makes `total` SayHello calls through `channel`, `concurrency` at a time; returns the
/// failures.
pub(crate) async fn drive(channel: &Channel, total: usize, concurrency: usize) -> Vec<Status> {
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = GreeterClient::new(channel.clone());
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                if let Err(status) = client.say_hello(HelloRequest::default()).await {
                    failures.push(status);
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    failures
}
