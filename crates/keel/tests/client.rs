//! Keel's client Channel against real Keel servers on 127.0.0.x loopback addresses:
//! connection reuse, policies' spread, failover, resolvers.
//!
//! Tests wait on events or poll for them within a bound ([`eventually`]); the exact timing
//! of backoff, ejection and health transitions, and the quality of the load-aware
//! policies, are pinned by keel-client's unit tests in paused time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use keel::Server;
use keel::client::{
    Backend as PickedBackend, CallInfo, Channel, ChannelConfig, ConnectivityState, Picker, Policy,
};
use keel::metrics::Metrics;
use keel::server::ShutdownReport;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use keel_interop::pb::helloworld::{HelloReply, HelloRequest};
use keel_test_support::{eventually, eventually_async};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

/// A Greeter that counts its calls and answers after `delay`.
#[derive(Clone)]
struct Counted {
    delay: Duration,
    calls: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Greeter for Counted {
    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            // sleep: the backend's simulated latency: what the tests run calls against
            tokio::time::sleep(self.delay).await;
        }
        Ok(Response::new(HelloReply {
            message: "hello".into(),
        }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

/// A running backend.
struct Backend {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    health: keel::health::HealthRegistry,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<ShutdownReport>,
}

impl Backend {
    /// A backend listening on `listen` (port 0 for any), answering after `delay`.
    async fn start(listen: &str, delay: Duration) -> Self {
        Self::start_counting(listen, delay, Arc::default()).await
    }

    async fn start_counting(listen: &str, delay: Duration, calls: Arc<AtomicU64>) -> Self {
        let mut config = common::config();
        config.listen = listen.parse().unwrap();
        let server = Server::builder(config)
            .add_service(GreeterServer::new(Counted {
                delay,
                calls: calls.clone(),
            }))
            .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
            .bind()
            .await
            .expect("bind");
        let (addr, metrics, health) = (server.local_addr(), server.metrics(), server.health());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            calls,
            metrics,
            health,
            stop: Some(stop),
            task,
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = (&mut self.task).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn static_target(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// Makes `total` calls through `channel`, `concurrency` at a time; returns the failures.
async fn drive(channel: &Channel, total: usize, concurrency: usize) -> Vec<Status> {
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

fn assert_even(counts: &[u64], total: u64, tolerance: f64) {
    let even = total as f64 / counts.len() as f64;
    for count in counts {
        let off = (*count as f64 - even).abs() / even;
        assert!(
            off <= tolerance,
            "counts {counts:?} are not within ±{tolerance} of {even}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_calls_share_the_configured_connections() {
    let backend = Backend::start("127.0.0.1:0", Duration::from_millis(50)).await;
    let channel = Channel::builder(&format!("dns:///{}", backend.addr))
        .unwrap()
        .connections_per_backend(2)
        .build()
        .unwrap();
    let failures = drive(&channel, 500, 500).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(backend.calls(), 500);
    assert_eq!(
        backend.metrics.connection.listener("grpc").accepted.get(),
        2,
        "500 concurrent calls used exactly the 2 configured connections"
    );
    assert_eq!(
        backend
            .metrics
            .connection
            .listener("grpc")
            .connections
            .get(),
        2
    );

    drop(channel);
    let connections = &backend.metrics.connection.listener("grpc").connections;
    eventually(
        "dropping the channel closes its connections",
        Duration::from_secs(5),
        || connections.get() == 0,
    )
    .await;
}

/// True when every backend of `channel` is connected.
fn all_ready(channel: &Channel) -> bool {
    channel
        .backends()
        .iter()
        .all(|(_, state)| *state == ConnectivityState::Ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_thirty_thousand_calls_evenly() {
    let a = Backend::start("127.0.0.1:0", Duration::ZERO).await;
    let b = Backend::start("127.0.0.2:0", Duration::ZERO).await;
    let c = Backend::start("127.0.0.3:0", Duration::ZERO).await;
    let channel = Channel::builder(&static_target(&[&a, &b, &c]))
        .unwrap()
        .policy(Policy::RoundRobin)
        .build()
        .unwrap();
    // All three connected, so that the spread measures the policy.
    eventually("every backend connects", Duration::from_secs(5), || {
        all_ready(&channel)
    })
    .await;
    let failures = drive(&channel, 30_000, 32).await;
    assert!(failures.is_empty(), "{failures:?}");
    let counts = [a.calls(), b.calls(), c.calls()];
    assert_eq!(counts.iter().sum::<u64>(), 30_000);
    assert_even(&counts, 30_000, 0.05);
}

/// The seed's least-request picker, as a user writes it (the documented example).
struct LeastLoaded;

impl Picker for LeastLoaded {
    fn pick(&self, _call: &CallInfo<'_>, ready: &[PickedBackend]) -> usize {
        if ready.len() == 1 {
            return 0;
        }
        let a = rand::random_range(0..ready.len());
        let b = (a + rand::random_range(1..ready.len())) % ready.len();
        if ready[a].outstanding() <= ready[b].outstanding() {
            a
        } else {
            b
        }
    }
}

/// End to end, over real connections: the load-aware policies (and a user's picker) send a
/// backend fifty times slower than the others less than its even share, and starve none of
/// equal backends. The gap is wide so that a loaded machine, whose queueing adds to every
/// backend's latency, cannot close it; the policies' quality is measured exactly in
/// keel-client's unit tests (`picker.rs`), in paused time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_policies_prefer_a_fast_backend_end_to_end() {
    let fast = Duration::from_millis(4);
    let a = Backend::start("127.0.0.1:0", fast).await;
    let b = Backend::start("127.0.0.2:0", fast).await;
    let slow = Backend::start("127.0.0.3:0", fast * 50).await;
    let target = static_target(&[&a, &b, &slow]);

    type Build = fn(keel::client::ChannelBuilder) -> keel::client::ChannelBuilder;
    let policies: [(&str, Build); 3] = [
        ("least_request", |b| b.policy(Policy::LeastRequest)),
        ("p2c_ewma", |b| b.policy(Policy::P2cEwma)),
        ("custom LeastLoaded", |b| b.picker(LeastLoaded)),
    ];
    for (name, build) in policies {
        let before = [a.calls(), b.calls(), slow.calls()];
        let channel = build(Channel::builder(&target).unwrap()).build().unwrap();
        eventually("every backend connects", Duration::from_secs(5), || {
            all_ready(&channel)
        })
        .await;
        let failures = drive(&channel, 600, 16).await;
        assert!(failures.is_empty(), "{name}: {failures:?}");
        let counts = [
            a.calls() - before[0],
            b.calls() - before[1],
            slow.calls() - before[2],
        ];
        println!("{name}: {counts:?}");
        assert!(
            counts[2] * 3 < 600,
            "{name}: the slow backend got its even share or more: {counts:?}"
        );
    }

    // Equal backends: every one takes a good part.
    drop(slow);
    let c = Backend::start("127.0.0.3:0", fast).await;
    let target = static_target(&[&a, &b, &c]);
    for policy in [Policy::LeastRequest, Policy::P2cEwma] {
        let before = [a.calls(), b.calls(), c.calls()];
        let channel = Channel::builder(&target)
            .unwrap()
            .policy(policy)
            .build()
            .unwrap();
        eventually("every backend connects", Duration::from_secs(5), || {
            all_ready(&channel)
        })
        .await;
        let failures = drive(&channel, 600, 16).await;
        assert!(failures.is_empty(), "{policy:?}: {failures:?}");
        let counts = [
            a.calls() - before[0],
            b.calls() - before[1],
            c.calls() - before[2],
        ];
        println!("{policy:?} over equal backends: {counts:?}");
        assert!(
            counts.iter().all(|count| *count >= 100),
            "{policy:?} over equal backends: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_fails_over_and_its_subchannel_recovers_on_restart() {
    let a = Backend::start("127.0.0.1:0", Duration::ZERO).await;
    let b = Backend::start("127.0.0.2:0", Duration::ZERO).await;
    let mut config = ChannelConfig::default();
    config.connect_backoff.initial = Duration::from_millis(50);
    config.connect_backoff.max = Duration::from_millis(200);
    let channel = Channel::builder(&static_target(&[&a, &b]))
        .unwrap()
        .config(config)
        .build()
        .unwrap();
    assert!(drive(&channel, 200, 4).await.is_empty());
    let a_addr = a.addr;
    a.stop().await;

    let state_of = |channel: &Channel, addr: SocketAddr| {
        channel
            .backends()
            .into_iter()
            .find(|(address, _)| address.to_string() == addr.to_string())
            .map(|(_, state)| state)
    };
    eventually(
        "the stopped backend's subchannel fails",
        Duration::from_secs(5),
        || state_of(&channel, a_addr) == Some(ConnectivityState::TransientFailure),
    )
    .await;
    let before = b.calls();
    assert!(
        drive(&channel, 300, 4).await.is_empty(),
        "calls go to the live backend"
    );
    assert_eq!(b.calls() - before, 300);

    let a = Backend::start(&a_addr.to_string(), Duration::ZERO).await;
    eventually(
        "the restarted backend's subchannel reconnects",
        Duration::from_secs(5),
        || state_of(&channel, a_addr) == Some(ConnectivityState::Ready),
    )
    .await;
    assert!(drive(&channel, 300, 4).await.is_empty());
    assert!(
        a.calls() > 100,
        "the restarted backend is back in rotation: {}",
        a.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_resolver_follows_the_file_without_dropping_calls() {
    let a = Backend::start("127.0.0.1:0", Duration::from_millis(1)).await;
    let b = Backend::start("127.0.0.2:0", Duration::from_millis(1)).await;
    let dir = std::env::temp_dir().join(format!("keel-file-resolver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backends");
    let write = |text: String| {
        // Written whole and renamed, as a config management tool would.
        let partial = dir.join("backends.partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &file).unwrap();
    };
    write(format!("# backends\n{}\n", a.addr));
    let channel = Channel::new(&format!("file://{}", file.display())).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (mut client, stop, failures) = (
            GreeterClient::new(channel.clone()),
            stop.clone(),
            failures.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if client.say_hello(HelloRequest::default()).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    eventually("a serves", Duration::from_secs(10), || a.calls() > 50).await;
    assert_eq!(b.calls(), 0);

    write(format!("{}\n{}\n", a.addr, b.addr));
    eventually("b joins", Duration::from_secs(10), || b.calls() > 50).await;

    write(format!("{}\n", b.addr));
    let a_address = a.addr.to_string();
    eventually("a leaves the channel", Duration::from_secs(10), || {
        channel
            .backends()
            .iter()
            .all(|(address, _)| address.to_string() != a_address)
    })
    .await;
    // Calls picked before a left may still be on their way to it; once every caller has
    // finished, none can be.
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed");
    let a_before = a.calls();
    assert!(drive(&channel, 200, 4).await.is_empty());
    assert_eq!(a.calls(), a_before, "a left the rotation");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_first_uses_one_backend_and_moves_on_when_it_goes() {
    let a = Backend::start("127.0.0.1:0", Duration::ZERO).await;
    let b = Backend::start("127.0.0.2:0", Duration::ZERO).await;
    let mut config = ChannelConfig::default();
    config.policy = Policy::PickFirst;
    config.connect_backoff.initial = Duration::from_millis(50);
    let channel = Channel::builder(&static_target(&[&a, &b]))
        .unwrap()
        .config(config)
        .build()
        .unwrap();
    assert!(drive(&channel, 100, 4).await.is_empty());
    assert_eq!((a.calls(), b.calls()), (100, 0));
    assert_eq!(
        b.metrics.connection.listener("grpc").accepted.get(),
        0,
        "pick_first connects to one address at a time"
    );
    a.stop().await;
    eventually_async("calls move to b", Duration::from_secs(5), || async {
        let _ = drive(&channel, 1, 1).await;
        b.calls() > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_targets_fail_fast_and_deadlines_bound_calls() {
    // Nothing listens on this port (bound, then released).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let channel = Channel::new(&format!("static:///{free}")).unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let status = client.say_hello(HelloRequest::default()).await.unwrap_err();
            if status.code() == Code::Unavailable {
                return status;
            }
        }
    })
    .await
    .expect("fails fast once the backend is known to be down");
    assert!(status.message().contains(&free.to_string()), "{status:?}");

    let slow = Backend::start("127.0.0.1:0", Duration::from_secs(5)).await;
    let channel = Channel::builder(&format!("dns:///{}", slow.addr))
        .unwrap()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let status = GreeterClient::new(channel)
        .say_hello(HelloRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_targets_work() {
    let dir = std::env::temp_dir().join(format!("keel-unix-target-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("greeter.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let calls = Arc::new(AtomicU64::new(0));
    let server = tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Counted {
            delay: Duration::ZERO,
            calls: calls.clone(),
        }))
        .serve_with_incoming(incoming);
    let server = tokio::spawn(server);

    let channel = Channel::new(&format!("unix://{}", path.display())).unwrap();
    assert!(drive(&channel, 10, 2).await.is_empty());
    assert_eq!(calls.load(Ordering::Relaxed), 10);
    server.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Greeter that fails its first `fail_first` calls with `code` (and `pushback`, if set),
/// is slow on its first call if `slow_first` is set, and records each call's
/// `grpc-previous-rpc-attempts`.
#[derive(Clone, Default)]
struct Scripted {
    fail_first: usize,
    code: Option<Code>,
    pushback: Option<&'static str>,
    slow_first: Option<Duration>,
    calls: Arc<AtomicUsize>,
    previous_attempts: Arc<std::sync::Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl Greeter for Scripted {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let number = self.calls.fetch_add(1, Ordering::SeqCst);
        let previous = request
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        self.previous_attempts.lock().unwrap().push(previous);
        if number == 0
            && let Some(delay) = self.slow_first
        {
            // sleep: a slow first attempt: what hedging is tested against
            tokio::time::sleep(delay).await;
        }
        if number < self.fail_first {
            let mut status =
                Status::new(self.code.unwrap_or(Code::Unavailable), "scripted failure");
            if let Some(pushback) = self.pushback {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", pushback.parse().unwrap());
            }
            return Err(status);
        }
        Ok(Response::new(HelloReply {
            message: format!("answer {number}"),
        }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

/// Serves `greeter` on 127.0.0.1; returns the address and the task.
async fn serve_scripted(greeter: Scripted) -> (SocketAddr, JoinHandle<ShutdownReport>) {
    let server = Server::builder(common::config())
        .add_service(GreeterServer::new(greeter))
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    (addr, tokio::spawn(server.serve(std::future::pending())))
}

/// Serves `greeter` and returns a channel to it with the service config `json`.
async fn serve_with_config(greeter: Scripted, json: &str) -> (Channel, JoinHandle<ShutdownReport>) {
    let (addr, server) = serve_scripted(greeter).await;
    let channel = Channel::builder(&format!("dns:///{addr}"))
        .unwrap()
        .service_config(json)
        .unwrap()
        .build()
        .unwrap();
    (channel, server)
}

fn retry_config(max_attempts: u32, codes: &str, throttling: &str) -> String {
    format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "helloworld.Greeter"}}],
             "retryPolicy": {{"maxAttempts": {max_attempts}, "initialBackoff": "0.01s",
               "maxBackoff": "0.05s", "backoffMultiplier": 2,
               "retryableStatusCodes": [{codes}]}}}}]{throttling}}}"#
    )
}

async fn say_hello(channel: &Channel) -> Result<String, Status> {
    GreeterClient::new(channel.clone())
        .say_hello(HelloRequest::default())
        .await
        .map(|reply| reply.into_inner().message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policies_retry_what_they_name_as_often_as_they_allow() {
    // Two UNAVAILABLE answers, then success: three attempts succeed.
    let greeter = Scripted {
        fail_first: 2,
        ..Scripted::default()
    };
    let (channel, server) =
        serve_with_config(greeter.clone(), &retry_config(3, r#""UNAVAILABLE""#, "")).await;
    assert_eq!(say_hello(&channel).await.unwrap(), "answer 2");
    assert_eq!(
        *greeter.previous_attempts.lock().unwrap(),
        ["", "1", "2"],
        "retries say how many attempts came before"
    );
    server.abort();

    // Calls that fail as a whole: (what, server, attempts allowed, code, calls made).
    let failing = [
        (
            "two attempts allowed: the second failure is the call's",
            Scripted {
                fail_first: 2,
                ..Scripted::default()
            },
            2,
            Code::Unavailable,
            2,
        ),
        (
            "a code the policy does not name is not retried",
            Scripted {
                fail_first: 1,
                code: Some(Code::InvalidArgument),
                ..Scripted::default()
            },
            5,
            Code::InvalidArgument,
            1,
        ),
        (
            "the server's pushback of -1 says not to retry",
            Scripted {
                fail_first: 1,
                pushback: Some("-1"),
                ..Scripted::default()
            },
            5,
            Code::Unavailable,
            1,
        ),
    ];
    for (what, greeter, attempts, code, calls) in failing {
        let config = retry_config(attempts, r#""UNAVAILABLE""#, "");
        let (channel, server) = serve_with_config(greeter.clone(), &config).await;
        assert_eq!(
            say_hello(&channel).await.unwrap_err().code(),
            code,
            "{what}"
        );
        assert_eq!(greeter.calls.load(Ordering::SeqCst), calls, "{what}");
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_stops_retries_when_most_calls_fail() {
    let greeter = Scripted {
        fail_first: usize::MAX,
        ..Scripted::default()
    };
    let (addr, server) = serve_scripted(greeter.clone()).await;
    let throttling = r#", "retryThrottling": {"maxTokens": 4, "tokenRatio": 0.1}"#;
    let channel = Channel::builder(&format!("dns:///{addr}"))
        .unwrap()
        .service_config(&retry_config(5, r#""UNAVAILABLE""#, throttling))
        .unwrap()
        .build()
        .unwrap();
    // Tokens 4 → 3 (retry allowed) → 2 (at half: no more retries).
    assert_eq!(
        say_hello(&channel).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(greeter.calls.load(Ordering::SeqCst), 2);
    // Now every failure is final at once.
    assert_eq!(
        say_hello(&channel).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(greeter.calls.load(Ordering::SeqCst), 3);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_answers_from_the_first_fast_attempt() {
    let greeter = Scripted {
        slow_first: Some(Duration::from_secs(5)),
        ..Scripted::default()
    };
    let (channel, server) = serve_with_config(
        greeter.clone(),
        r#"{"methodConfig": [{"name": [{"service": "helloworld.Greeter", "method": "SayHello"}],
                "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.1s"}}]}"#,
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(say_hello(&channel).await.unwrap(), "answer 1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        greeter.calls.load(Ordering::SeqCst),
        2,
        "one hedge was enough; the third was never sent"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_turning_not_serving_gets_no_new_calls_within_a_second() {
    let a = Backend::start("127.0.0.1:0", Duration::from_millis(1)).await;
    let b = Backend::start("127.0.0.2:0", Duration::from_millis(1)).await;
    let mut config = ChannelConfig::default();
    config.health_check = Some(String::new());
    let channel = Channel::builder(&static_target(&[&a, &b]))
        .unwrap()
        .config(config)
        .build()
        .unwrap();
    assert!(drive(&channel, 400, 8).await.is_empty());
    assert!(
        a.calls() > 100 && b.calls() > 100,
        "{} {}",
        a.calls(),
        b.calls()
    );

    a.health.set("", keel::health::ServingStatus::NotServing);
    eventually_async(
        "the NOT_SERVING backend gets no new calls",
        Duration::from_secs(1),
        || async {
            let before = a.calls();
            assert!(drive(&channel, 50, 8).await.is_empty());
            a.calls() == before
        },
    )
    .await;
    let before = a.calls();
    assert!(
        drive(&channel, 400, 8).await.is_empty(),
        "b takes every call"
    );
    assert_eq!(a.calls(), before, "the NOT_SERVING backend got no new call");

    a.health.set("", keel::health::ServingStatus::Serving);
    eventually_async(
        "SERVING again puts it back in rotation",
        Duration::from_secs(5),
        || async {
            let _ = drive(&channel, 20, 2).await;
            a.calls() > before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_backend_until_its_time_is_up() {
    let good = Backend::start("127.0.0.1:0", Duration::ZERO).await;
    let failing = Scripted {
        fail_first: usize::MAX,
        code: Some(Code::Internal),
        ..Scripted::default()
    };
    let (bad, server) = serve_scripted(failing.clone()).await;
    let mut outlier = keel::client::OutlierConfig::default();
    outlier.consecutive_failures = 3;
    outlier.base_ejection_time = Duration::from_millis(500);
    let mut config = ChannelConfig::default();
    config.outlier = Some(outlier);
    let target = format!("static:///{},{bad}", good.addr);
    let channel = Channel::builder(&target)
        .unwrap()
        .config(config)
        .build()
        .unwrap();
    eventually("both backends connect", Duration::from_secs(5), || {
        all_ready(&channel)
    })
    .await;
    let started = std::time::Instant::now();
    let failures = drive(&channel, 200, 1).await;
    assert_eq!(
        failing.calls.load(Ordering::SeqCst),
        3,
        "three failures in a row ejected the backend"
    );
    assert_eq!(failures.len(), 3);
    // Re-admitted after the ejection: it gets calls (and fails them) again.
    eventually_async("re-admitted", Duration::from_secs(5), || async {
        let _ = drive(&channel, 5, 1).await;
        failing.calls.load(Ordering::SeqCst) > 3
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the ejection time: {:?}",
        started.elapsed()
    );
    server.abort();
}

/// Answers with the microseconds its call's deadline has left.
struct DeadlineEcho;

#[tonic::async_trait]
impl Greeter for DeadlineEcho {
    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let left = keel::context::Deadline::current()
            .map(|deadline| deadline.remaining().as_micros().to_string())
            .unwrap_or_default();
        Ok(Response::new(HelloReply { message: left }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

type ObservedChannel = keel::observe::ClientObserve<Channel>;

/// Passes calls on through a Keel Channel wrapped in the client observe layer.
struct Relay(GreeterClient<ObservedChannel>);

#[tonic::async_trait]
impl Greeter for Relay {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.0.clone().say_hello(request.into_inner()).await
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

async fn serve_greeter(greeter: impl Greeter) -> SocketAddr {
    let server = Server::builder(common::config())
        .add_service(GreeterServer::new(greeter))
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_channels_count_calls_and_pass_a_shorter_deadline_on() {
    let echo = serve_greeter(DeadlineEcho).await;
    let mut methods = keel::method::MethodTable::default();
    methods
        .add_encoded(keel_interop::FILE_DESCRIPTOR_SET)
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let observer = keel::observe::ClientObserver::new(
        &methods,
        &mut registry,
        &keel::telemetry::Traces::global(),
    );
    let echo_channel = Channel::new(&format!("dns:///{echo}")).unwrap();
    let observed = tower::ServiceBuilder::new()
        .layer(
            keel::observe::ClientObserveLayer::new(observer)
                .target(&format!("http://{echo}").parse().unwrap()),
        )
        .service(echo_channel);
    let relay = serve_greeter(Relay(GreeterClient::new(observed))).await;

    let mut client = GreeterClient::new(Channel::new(&format!("dns:///{relay}")).unwrap());
    let mut request = Request::new(HelloRequest::default());
    request.set_timeout(Duration::from_millis(200));
    let left_us: u64 = client
        .say_hello(request)
        .await
        .unwrap()
        .into_inner()
        .message
        .parse()
        .expect("echo saw a deadline");
    assert!(
        left_us > 0 && left_us < 200_000,
        "echo had {left_us} µs of a 200 ms deadline"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.lines()
            .any(|line| line.starts_with("grpc_client_handled_total{")
                && line.contains("grpc_method=\"SayHello\"")
                && line.contains("grpc_code=\"OK\"")
                && line.ends_with(" 1")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_replace_a_connection_whose_peer_went_silent() {
    // A "server" that accepts connections and never answers anything, not even PINGs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let channel_to_silent = |keepalive: Option<Duration>| {
        let mut config = ChannelConfig::default();
        config.keepalive.interval = keepalive;
        config.keepalive.timeout = Duration::from_millis(200);
        config.keepalive.while_idle = true;
        config.connect_backoff.initial = Duration::from_millis(50);
        Channel::builder(&format!("static:///{addr}"))
            .unwrap()
            .config(config)
            .build()
            .unwrap()
    };

    let channel = channel_to_silent(Some(Duration::from_millis(200)));
    eventually(
        "unanswered pings close the connection and a new one is made",
        Duration::from_secs(5),
        || accepted.load(Ordering::SeqCst) >= 2,
    )
    .await;
    drop(channel);

    let before = accepted.load(Ordering::SeqCst);
    let channel = channel_to_silent(None);
    eventually("the channel connects", Duration::from_secs(5), || {
        accepted.load(Ordering::SeqCst) > before
    })
    .await;
    // sleep: the behaviour under test is that nothing happens: this is several times as long as
    // the pings above took to notice the silence
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst) - before,
        1,
        "without keepalive nothing notices"
    );
    drop(channel);
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_calls_pass_through_the_channel() {
    use tonic::codec::CompressionEncoding::Gzip;
    let server = Server::builder(common::config())
        .add_service(
            GreeterServer::new(Counted {
                delay: Duration::ZERO,
                calls: Arc::default(),
            })
            .accept_compressed(Gzip)
            .send_compressed(Gzip),
        )
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(server.serve(std::future::pending()));
    let channel = Channel::new(&format!("dns:///{addr}")).unwrap();
    let mut client = GreeterClient::new(channel)
        .send_compressed(Gzip)
        .accept_compressed(Gzip);
    let request = HelloRequest {
        name: "x".repeat(10_000),
    };
    let response = client.say_hello(request).await.unwrap();
    assert_eq!(
        response.metadata().get("grpc-encoding").unwrap(),
        "gzip",
        "the answer came compressed"
    );
    assert_eq!(response.into_inner().message, "hello");
    task.abort();
}

/// A resolver that counts its resolutions and can be told new addresses.
struct Counting {
    addresses: Arc<std::sync::Mutex<Vec<keel::client::Address>>>,
    resolutions: Arc<AtomicUsize>,
}

impl keel::client::Resolver for Counting {
    fn resolve(
        &mut self,
    ) -> keel::client::BoxFuture<'_, Result<Vec<keel::client::Address>, String>> {
        self.resolutions.fetch_add(1, Ordering::SeqCst);
        let addresses = self.addresses.lock().unwrap().clone();
        Box::pin(async move { Ok(addresses) })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_makes_the_resolver_look_again() {
    let a = Backend::start("127.0.0.1:0", Duration::ZERO).await;
    let b = Backend::start("127.0.0.2:0", Duration::ZERO).await;
    let addresses = Arc::new(std::sync::Mutex::new(vec![keel::client::Address::Tcp(
        a.addr,
    )]));
    let resolutions = Arc::new(AtomicUsize::new(0));
    let resolver = Counting {
        addresses: addresses.clone(),
        resolutions: resolutions.clone(),
    };
    let mut config = ChannelConfig::default();
    config.connect_backoff.initial = Duration::from_millis(50);
    let channel = Channel::builder("dns:///ignored:1")
        .unwrap()
        .config(config)
        .resolver(resolver)
        .build()
        .unwrap();
    assert!(drive(&channel, 50, 2).await.is_empty());
    assert_eq!(resolutions.load(Ordering::SeqCst), 1);

    // The backend moves: the old address fails, the resolver is asked again and finds b.
    *addresses.lock().unwrap() = vec![keel::client::Address::Tcp(b.addr)];
    a.stop().await;
    eventually_async("calls reach b", Duration::from_secs(5), || async {
        let _ = drive(&channel, 5, 1).await;
        b.calls() > 0
    })
    .await;
    assert!(resolutions.load(Ordering::SeqCst) >= 2);
}
