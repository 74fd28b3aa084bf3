//! The run: one thread per core, each a current-thread runtime with its share of the
//! connections; workers, one per call in flight, spread over the connections round robin,
//! call until the plan's count or duration is reached. Closed loop, each worker calls again as
//! soon as its call ends; open loop (a fixed rate), call N is due at `start + N / rate`, and
//! its latency counts from then, not from when a worker was free to send it, so a server
//! that stalls shows its stall in full (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http::Uri;
use keel_tls::ClientTls;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::connection::{Connection, call_headers, rest_headers};
use crate::record::{Failure, Record};
use crate::report::{Load, Report};
use crate::requests::{Call, Requests};
use crate::template::Context;

/// The most calls in flight a plan may ask for.
pub const MAX_CONCURRENCY: usize = 100_000;

/// The highest fixed rate a plan may ask for, calls per second.
pub const MAX_RATE: f64 = 10_000_000.0;

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many calls.
    Calls(u64),
    /// Once this long has passed: no call starts (closed loop) or is due (open loop) later.
    After(Duration),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The calls' messages and method.
    pub requests: Requests,
    /// Metadata sent with every call.
    pub metadata: MetadataMap,
    /// Each call's deadline (sent as `grpc-timeout`, enforced here too).
    pub deadline: Option<Duration>,
    /// Calls in flight at most (the number of workers).
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
    /// Calls per second (open loop), or none (closed loop).
    pub rate: Option<f64>,
}

impl Plan {
    /// Checks the plan's bounds; the error says which and what is allowed.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency must be from 1 to {MAX_CONCURRENCY}, not {}",
                self.concurrency
            ));
        }
        match self.stop {
            Stop::Calls(0) => return Err("the number of calls must be at least 1".into()),
            Stop::After(duration) if duration.is_zero() => {
                return Err("the duration must be above zero".into());
            }
            _ => {}
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= MAX_RATE)
        {
            return Err(format!(
                "the rate must be above 0 and at most {MAX_RATE} calls/s, not {rate}"
            ));
        }
        Ok(())
    }
}

/// How far a run is, for a progress bar.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    done: Arc<AtomicU64>,
}

impl Progress {
    /// Calls finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

/// What every worker shares.
struct Shared {
    plan: Plan,
    /// The server and the method's (or REST route's) path, the same for every call.
    uri: Uri,
    /// gRPC's headers and the deadline (or REST's JSON content type) and the plan's
    /// metadata: the same for every call.
    headers: HeaderMap,
    start: Instant,
    end: Option<Instant>,
    next: AtomicU64,
    progress: Progress,
}

/// Where the load goes.
#[derive(Clone)]
pub struct Target {
    /// The server, `HOST:PORT`.
    pub authority: String,
    /// Keel's client TLS, or none for plaintext HTTP/2.
    pub tls: Option<ClientTls>,
    /// HTTP/2 connections to open; the workers are spread over them round robin.
    pub connections: usize,
}

/// Runs `plan` against `target`, reporting each finished call to `progress`. Fails on a bad
/// plan or when a connection cannot be opened; failed calls are counted in the report.
///
/// The connections are spread over one thread per core, each a current-thread runtime
/// that opens its connections and runs their workers: a connection, its workers and its
/// driver never wake each other across threads (the same shape as thread-per-core serving;
/// docs/BENCHMARKS.md, "Load generators").
pub async fn run(plan: Plan, target: Target, progress: Progress) -> Result<Report, String> {
    plan.check()?;
    if target.connections == 0 {
        return Err("at least one connection is needed".into());
    }
    let name = plan.requests.name();
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = plan.requests.path();
    let uri = Uri::try_from(format!("{scheme}://{}{path}", target.authority))
        .map_err(|error| format!("{}, {name}: {error}", target.authority))?;
    let load = Load {
        concurrency: plan.concurrency,
        connections: target.connections,
        rate: plan.rate,
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(target.connections);
    let mut lanes = Vec::with_capacity(threads);
    for index in 0..threads {
        lanes.push(Lane::spawn(index, threads, &target)?);
    }
    for lane in &mut lanes {
        lane.ready().await?;
    }

    let cpu_before = cpu_time();
    let start = Instant::now();
    let end = match plan.stop {
        Stop::After(duration) => Some(start + duration),
        Stop::Calls(_) => None,
    };
    let metadata = plan.metadata.clone().into_headers();
    let headers = match plan.requests.call() {
        Call::Grpc(_) => call_headers(&metadata, plan.deadline),
        Call::Rest { .. } => rest_headers(&metadata),
    };
    let shared = Arc::new(Shared {
        plan,
        uri,
        headers,
        start,
        end,
        next: AtomicU64::new(0),
        progress,
    });
    let mut record = Record::new();
    let mut results = Vec::with_capacity(lanes.len());
    for lane in &mut lanes {
        results.push(lane.go(shared.clone()));
    }
    for result in results {
        record.merge(
            result
                .await
                .map_err(|_| "a load thread ended early".to_owned())??,
        );
    }
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    tokio::task::spawn_blocking(move || lanes.into_iter().for_each(Lane::join))
        .await
        .map_err(|error| format!("a load thread failed: {error}"))?;
    Ok(Report::new(name, &record, load, cpu))
}

/// What a lane's thread sends back when its workers are done: their merged record.
type Done = oneshot::Sender<Result<Record, String>>;

/// One load thread: a current-thread runtime with connections `index`, `index + threads`,
/// ... and the workers that call over them.
struct Lane {
    thread: std::thread::JoinHandle<()>,
    ready: Option<oneshot::Receiver<Result<(), String>>>,
    go: Option<oneshot::Sender<(Arc<Shared>, Done)>>,
}

impl Lane {
    fn spawn(index: usize, threads: usize, target: &Target) -> Result<Self, String> {
        let (ready_tx, ready) = oneshot::channel();
        let (go, go_rx) = oneshot::channel::<(Arc<Shared>, Done)>();
        let target = target.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start a load thread's runtime: {error}"))?;
        let thread = std::thread::Builder::new()
            .name(format!("keel-bench-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut connections = Vec::new();
                    for _ in (index..target.connections).step_by(threads) {
                        match Connection::open(&target.authority, target.tls.as_ref()).await {
                            Ok(connection) => connections.push(connection),
                            Err(error) => {
                                let _ = ready_tx.send(Err(error));
                                return;
                            }
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    // No go: another thread could not connect, and the run is off.
                    let Ok((shared, done)) = go_rx.await else {
                        return;
                    };
                    // Worker w calls over connection w % connections, which is this
                    // thread's (w % connections) / threads-th.
                    let workers: Vec<_> = (0..shared.plan.concurrency)
                        .filter(|id| id % target.connections % threads == index)
                        .map(|id| {
                            let connection = &connections[id % target.connections / threads];
                            tokio::spawn(worker(id, shared.clone(), connection.clone()))
                        })
                        .collect();
                    let mut record = Record::new();
                    for worker in workers {
                        match worker.await {
                            Ok(worker_record) => record.merge(worker_record),
                            Err(error) => {
                                let _ = done.send(Err(format!("a worker failed: {error}")));
                                return;
                            }
                        }
                    }
                    let _ = done.send(Ok(record));
                });
            })
            .map_err(|error| format!("cannot start a load thread: {error}"))?;
        Ok(Self {
            thread,
            ready: Some(ready),
            go: Some(go),
        })
    }

    /// Waits until the thread's connections are open; the error says why one is not.
    async fn ready(&mut self) -> Result<(), String> {
        match self.ready.take() {
            Some(ready) => ready
                .await
                .map_err(|_| "a load thread ended early".to_owned())?,
            None => Ok(()),
        }
    }

    /// Starts the thread's workers; the receiver gets their merged record.
    fn go(&mut self, shared: Arc<Shared>) -> oneshot::Receiver<Result<Record, String>> {
        let (done, record) = oneshot::channel();
        if let Some(go) = self.go.take() {
            let _ = go.send((shared, done));
        }
        record
    }

    fn join(self) {
        drop(self.go);
        let _ = self.thread.join();
    }
}

async fn worker(worker_id: usize, shared: Arc<Shared>, connection: Connection) -> Record {
    let mut record = Record::new();
    let plan = &shared.plan;
    loop {
        let request_number = shared.next.fetch_add(1, Ordering::Relaxed);
        if let Stop::Calls(calls) = plan.stop
            && request_number >= calls
        {
            break;
        }
        let due = plan
            .rate
            .map(|rate| shared.start + Duration::from_secs_f64(request_number as f64 / rate));
        if let Some(end) = shared.end
            && due.unwrap_or_else(Instant::now) >= end
        {
            break;
        }
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let begin = due.unwrap_or_else(Instant::now);
        let context = Context {
            request_number,
            worker_id,
        };
        let result = match plan.requests.messages(context) {
            Ok(messages) => call(&connection, &shared, &messages).await,
            Err(error) => Err(Status::invalid_argument(error).into()),
        };
        let ended = Instant::now();
        record.record(ended - shared.start, ended - begin, result);
        shared.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    record
}

/// One call in the method's mode (the messages say how many go out; every answer is read),
/// or one REST call, within the plan's deadline.
async fn call(connection: &Connection, shared: &Shared, messages: &[Bytes]) -> Result<(), Failure> {
    let exchange = async {
        match shared.plan.requests.call() {
            Call::Grpc(_) => Ok(connection
                .call(&shared.uri, &shared.headers, messages)
                .await?),
            Call::Rest { method, .. } => {
                connection
                    .rest(method, &shared.uri, &shared.headers, messages)
                    .await
            }
        }
    };
    match shared.plan.deadline {
        Some(deadline) => tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer within the deadline of {}",
                    humantime::format_duration(deadline)
                ))
                .into())
            }),
        None => exchange.await,
    }
}

/// This process's CPU time (user + system, all threads) from `/proc/self/stat`, where
/// Linux counts it in ticks of 1/100 s; none elsewhere.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After "(comm) ", utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_cpu_time_is_read() {
        let before = cpu_time().expect("Linux has /proc/self/stat");
        let mut x = 0u64;
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_time().unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
