//! A Greeter client for `scripts/bench-client.sh`: makes unary `SayHello` calls through a
//! plain tonic `Channel` or a `keel::client::Channel` and reports its own CPU time per call.
//!
//! Usage: `greeter_client_bench --channel tonic|keel --target HOST:PORT [--calls N]
//! [--concurrency C] [--warmup W]`. Prints `calls=N cpu_us_per_call=X calls_per_s=Y`;
//! exits non-zero if any call fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;

/// The command line.
struct Args {
    channel: String,
    target: String,
    calls: usize,
    concurrency: usize,
    warmup: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        channel: String::new(),
        target: String::new(),
        calls: 10_000,
        concurrency: 1,
        warmup: 500,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| text.parse::<usize>().map_err(|e| format!("{text}: {e}"));
        match flag.as_str() {
            "--channel" => args.channel = value()?,
            "--target" => args.target = value()?,
            "--calls" => args.calls = number(value()?)?,
            "--concurrency" => args.concurrency = number(value()?)?.max(1),
            "--warmup" => args.warmup = number(value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.target.is_empty() || !matches!(args.channel.as_str(), "tonic" | "keel") {
        return Err(
            "usage: greeter_client_bench --channel tonic|keel --target HOST:PORT \
                    [--calls N] [--concurrency C] [--warmup W]"
                .into(),
        );
    }
    Ok(args)
}

/// This process's CPU time (user + system) from /proc, in microseconds.
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse().ok())
        .collect();
    // Clock ticks are 1/100 s on Linux.
    fields.iter().sum::<u64>() * 10_000
}

/// Makes `calls` calls, `concurrency` at a time.
async fn run<T>(client: GreeterClient<T>, calls: usize, concurrency: usize) -> Result<(), String>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut client, issued) = (client.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < calls {
                let request = HelloRequest {
                    name: "world".into(),
                };
                client
                    .say_hello(request)
                    .await
                    .map_err(|status| format!("a call failed: {status}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|error| error.to_string())??;
    }
    Ok(())
}

async fn bench(args: Args) -> Result<(), String> {
    let (elapsed, cpu) = match args.channel.as_str() {
        "tonic" => {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{}", args.target))
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| format!("connecting: {e}"))?;
            let client = GreeterClient::new(channel);
            run(client.clone(), args.warmup, args.concurrency).await?;
            let (started, cpu) = (Instant::now(), cpu_us());
            run(client, args.calls, args.concurrency).await?;
            (started.elapsed(), cpu_us() - cpu)
        }
        _ => {
            let channel = keel::client::Channel::new(&format!("dns:///{}", args.target))
                .map_err(|e| e.to_string())?;
            if !channel.ready(Duration::from_secs(10)).await {
                return Err(format!("{} is not reachable", args.target));
            }
            let client = GreeterClient::new(channel);
            run(client.clone(), args.warmup, args.concurrency).await?;
            let (started, cpu) = (Instant::now(), cpu_us());
            run(client, args.calls, args.concurrency).await?;
            (started.elapsed(), cpu_us() - cpu)
        }
    };
    println!(
        "calls={} cpu_us_per_call={:.3} calls_per_s={:.0}",
        args.calls,
        cpu as f64 / args.calls as f64,
        args.calls as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let outcome = match parse_args() {
        Ok(args) => bench(args).await,
        Err(error) => Err(error),
    };
    if let Err(error) = outcome {
        eprintln!("greeter_client_bench: {error}");
        std::process::exit(1);
    }
}
