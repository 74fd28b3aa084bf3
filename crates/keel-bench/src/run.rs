//! The run: workers, each with a connection of its own (round robin over the channels), call
//! until the plan's count or duration is reached. Closed loop, each worker calls again as
//! soon as its call ends; open loop (a fixed rate), call N is due at `start + N / rate`, and
//! its latency counts from then, not from when a worker was free to send it, so a server
//! that stalls shows its stall in full (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::uri::PathAndQuery;
use keel_client::Channel;
use tonic::client::Grpc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::codec::RawCodec;
use crate::record::Record;
use crate::report::{Load, Report};
use crate::requests::Requests;
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
    path: PathAndQuery,
    start: Instant,
    end: Option<Instant>,
    next: AtomicU64,
    progress: Progress,
}

/// Runs `plan` over `channels` (one per connection), reporting each finished call to
/// `progress`. Fails only on a bad plan; failed calls are counted in the report.
pub async fn run(plan: Plan, channels: Vec<Channel>, progress: Progress) -> Result<Report, String> {
    plan.check()?;
    if channels.is_empty() {
        return Err("at least one connection is needed".into());
    }
    let method = plan.requests.method();
    let name = format!("{}/{}", method.parent_service().full_name(), method.name());
    let path = PathAndQuery::try_from(format!("/{name}"))
        .map_err(|error| format!("method {name}: {error}"))?;
    let load = Load {
        concurrency: plan.concurrency,
        connections: channels.len(),
        rate: plan.rate,
    };
    let cpu_before = cpu_time();
    let start = Instant::now();
    let end = match plan.stop {
        Stop::After(duration) => Some(start + duration),
        Stop::Calls(_) => None,
    };
    let shared = Arc::new(Shared {
        plan,
        path,
        start,
        end,
        next: AtomicU64::new(0),
        progress,
    });
    let workers: Vec<_> = (0..shared.plan.concurrency)
        .map(|id| {
            tokio::spawn(worker(
                id,
                shared.clone(),
                channels[id % channels.len()].clone(),
            ))
        })
        .collect();
    let mut record = Record::new();
    for worker in workers {
        match worker.await {
            Ok(worker_record) => record.merge(worker_record),
            Err(error) => return Err(format!("a worker failed: {error}")),
        }
    }
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Report::new(name, &record, load, cpu))
}

async fn worker(worker_id: usize, shared: Arc<Shared>, channel: Channel) -> Record {
    let mut grpc = Grpc::new(channel);
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
            Ok(messages) => call(&mut grpc, &shared, messages).await,
            Err(error) => Err(Status::invalid_argument(error)),
        };
        let ended = Instant::now();
        record.record(ended - shared.start, ended - begin, result);
        shared.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    record
}

/// One call in the method's mode; every response message is read, none decoded.
async fn call(
    grpc: &mut Grpc<Channel>,
    shared: &Shared,
    messages: Arc<[Bytes]>,
) -> Result<(), Status> {
    let plan = &shared.plan;
    let exchange = async {
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(format!("the connection failed: {error}")))?;
        let path = shared.path.clone();
        let method = plan.requests.method();
        let request = |message| prepare(plan, Request::new(message));
        let streamed = || prepare(plan, Request::new(stream::iter(messages.to_vec())));
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => {
                let message = messages.first().cloned().unwrap_or_default();
                grpc.unary(request(message), path, RawCodec).await?;
            }
            (false, true) => {
                let message = messages.first().cloned().unwrap_or_default();
                let mut responses = grpc
                    .server_streaming(request(message), path, RawCodec)
                    .await?
                    .into_inner();
                while responses.message().await?.is_some() {}
            }
            (true, false) => {
                grpc.client_streaming(streamed(), path, RawCodec).await?;
            }
            (true, true) => {
                let mut responses = grpc
                    .streaming(streamed(), path, RawCodec)
                    .await?
                    .into_inner();
                while responses.message().await?.is_some() {}
            }
        }
        Ok(())
    };
    match plan.deadline {
        Some(deadline) => tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer within the deadline of {}",
                    humantime::format_duration(deadline)
                )))
            }),
        None => exchange.await,
    }
}

/// A call's request with the plan's metadata and deadline.
fn prepare<T>(plan: &Plan, mut request: Request<T>) -> Request<T> {
    if !plan.metadata.is_empty() {
        *request.metadata_mut() = plan.metadata.clone();
    }
    if let Some(deadline) = plan.deadline {
        request.set_timeout(deadline);
    }
    request
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
