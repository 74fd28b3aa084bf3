//! `keel bench`: load-tests any gRPC method, or a REST route with `--rest`, with keel-bench's
//! engine. This file reads the flags, finds the method (reflection, a descriptor set or .proto
//! files), opens the connections, draws the progress bar and writes the report.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_bench::{Plan, Progress, Requests, Stop, Target, Template};
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::metadata::MetadataMap;

use crate::call::Failure;
use crate::call::args::add_header;
use crate::call::connect::connect;
use crate::call::reflection::{Reflection, split_method};
use crate::tls::client::{ClientFlags, ClientTlsArgs};

/// Load-tests one gRPC method on a server (like ghz), or one REST route with --rest, on
/// HTTP/2 connections of its own.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  keel bench 127.0.0.1:50051 helloworld.Greeter/SayHello -d '{\"name\":\"world\"}' -n 100000 -c 50
  keel bench 127.0.0.1:50051 helloworld.Greeter/SayHello -z 30s --rps 2000 -c 200
  keel bench 127.0.0.1:50051 payments.v1.PaymentService/Process --connections 4 -c 64 -z 1m \\
    -d '{\"idempotency_key\":\"k-{{newUUID}}\",\"payer_account_id\":\"alice\",\"payee_account_id\":\"bob\",\"amount_minor\":1,\"currency\":\"EUR\"}' \\
    -H 'authorization: Bearer TOKEN' --format json -o report.json
  keel bench 127.0.0.1:50051 grpc.testing.TestService/StreamingInputCall \\
    -d '[{\"payload\":{\"body\":\"AAE=\"}},{\"payload\":{\"body\":\"AgM=\"}}]' -n 1000
  keel bench --rest 'POST /v1/payments' 127.0.0.1:50051 -n 20000 -c 64 --connections 4 \\
    -d '{\"idempotencyKey\":\"k-{{newUUID}}\",\"payerAccountId\":\"alice\",\"payeeAccountId\":\"bob\",\"amountMinor\":\"1\",\"currency\":\"EUR\"}'

Load: closed loop by default: -c workers, each calling again as soon as its call ends.
With --rps the load is open loop: call N is due at N/rps seconds, and its latency counts
from then, even when every worker was still busy, so a stalled server shows its stall in
full (no coordinated omission). -c then bounds the calls in flight.

Data (-d) is proto3 JSON for the method's input: one object, or for client and bidi
streaming an array of objects sent as one stream. Placeholders are filled per call, as in
ghz: {{.RequestNumber}} {{.WorkerID}} {{.TimestampUnix}} {{.TimestampUnixMilli}}
{{.TimestampUnixNano}} {{.Timestamp}} {{newUUID}} {{randomInt MIN MAX}} {{randomString N}}.
They are text: quote them for strings (\"key\":\"k-{{.RequestNumber}}\").

Descriptors come from the server's reflection unless --protoset or --proto is given.

REST (--rest 'METHOD /PATH', no gRPC METHOD): each call is that HTTP request over the same
HTTP/2 connections, with the rendered -d text as its body (content-type: application/json;
no body without -d), e.g. a route keel-gateway serves beside the gRPC service. A call
succeeds on any 2xx status and is counted as OK; other answers are counted by their HTTP
status (\"HTTP 409\") with the start of their body as the error message.

Output: a summary (count, total, slowest, fastest, average, requests/s, histogram,
percentiles 10 to 99.9, status codes, errors, the generator's CPU per call); --format json
has everything plus latency per second; --format csv is latency per second; --format html
-o report.html is one self-contained page with the summary, a latency histogram and latency
and calls over time as charts.

Exit status: 0 when every call succeeded, 1 when some failed (the report says which) or the
server could not be reached, 2 for usage errors.")]
pub struct BenchArgs {
    /// Server address: HOST:PORT, http://HOST:PORT (plaintext h2c) or https://HOST:PORT (TLS)
    #[arg(value_name = "ADDR")]
    address: String,

    /// Method to call: pkg.Service/Method (or pkg.Service.Method)
    #[arg(value_name = "METHOD", required_unless_present = "rest")]
    method: Option<String>,

    /// Load a REST route instead of a gRPC method: 'METHOD /PATH', e.g. 'POST /v1/payments'
    /// (see REST below)
    #[arg(long, value_name = "'METHOD /PATH'", conflicts_with_all = ["method", "proto", "protoset"])]
    rest: Option<String>,

    /// Request JSON template (see Data below); `@FILE` reads FILE [default: {} for gRPC, no
    /// body for REST]
    #[arg(short = 'd', long = "data", value_name = "JSON|@FILE")]
    data: Option<String>,

    /// Request metadata `key: value` (repeatable); keys ending in -bin take base64 values
    #[arg(short = 'H', long = "header", value_name = "'KEY: VALUE'")]
    headers: Vec<String>,

    /// Calls in flight at most: the number of workers
    #[arg(short = 'c', long, value_name = "N", default_value_t = 50)]
    concurrency: usize,

    /// Calls to make in all [default: 200 when no --duration is given]
    #[arg(
        short = 'n',
        long = "total",
        value_name = "N",
        conflicts_with = "duration"
    )]
    total: Option<u64>,

    /// Run for this long instead of a count, e.g. 30s, 5m
    #[arg(short = 'z', long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Fixed rate in calls per second (open loop: latency counts from each call's due time)
    #[arg(long, value_name = "RATE")]
    rps: Option<f64>,

    /// Connections to spread the workers over
    #[arg(long, value_name = "N", default_value_t = 1)]
    connections: usize,

    /// Deadline of each call (sent as grpc-timeout, enforced here too; for REST, here only)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "20s")]
    deadline: Duration,

    /// Descriptors from this FileDescriptorSet (protoc -o / buf build -o) instead of reflection
    #[arg(long, value_name = "FILE", conflicts_with = "proto")]
    protoset: Option<PathBuf>,

    /// Descriptors compiled from this .proto file (repeatable) instead of reflection
    #[arg(long, value_name = "FILE")]
    proto: Vec<PathBuf>,

    /// Where --proto's files and their imports are looked up (repeatable; default: each
    /// --proto file's own directory)
    #[arg(short = 'I', long = "import-path", value_name = "DIR")]
    import_paths: Vec<PathBuf>,

    /// Report format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Write the report to FILE instead of stdout
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,

    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The summary a person reads
    Text,
    /// Everything, as one JSON object
    Json,
    /// Latency per second, one row each
    Csv,
    /// One self-contained page with the summary, a latency histogram and latency over time
    Html,
}

/// The most connections `--connections` may ask for.
const MAX_CONNECTIONS: usize = 1024;

/// Runs `keel bench`, reporting any failure on stderr, and returns the exit status.
pub async fn run(args: BenchArgs) -> ExitCode {
    match bench(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(failure) => {
            eprintln!("keel bench: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Runs the benchmark; `Ok(false)` when some calls failed.
async fn bench(args: BenchArgs) -> Result<bool, Failure> {
    let usage = Failure::Usage;
    let mut metadata = MetadataMap::new();
    for header in &args.headers {
        add_header(&mut metadata, header)?;
    }
    let data = match (&args.data, &args.rest) {
        (Some(data), _) => data.as_str(),
        (None, Some(_)) => "",
        (None, None) => "{}",
    };
    let template = match data.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|error| usage(format!("-d @{file}: {error}")))?
        }
        None => data.to_owned(),
    };
    let template = Template::parse(&template).map_err(|error| usage(format!("-d: {error}")))?;
    if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
        return Err(usage(format!(
            "--connections must be from 1 to {MAX_CONNECTIONS}, not {}",
            args.connections
        )));
    }
    let stop = match (args.total, args.duration) {
        (_, Some(duration)) => Stop::After(duration),
        (total, None) => Stop::Calls(total.unwrap_or(200)),
    };
    let tls = args.tls.flags();
    let (uri, client_tls) = tls
        .client_tls(&args.address, Duration::ZERO)
        .map_err(Failure::Usage)?;
    let target = Target {
        authority: uri
            .split_once("://")
            .map_or(uri.as_str(), |(_, rest)| rest)
            .to_owned(),
        tls: client_tls,
        connections: args.connections,
    };
    let requests = match &args.rest {
        Some(route) => {
            let (method, path) = rest_route(route)?;
            Requests::rest(method, path, template)
        }
        None => Requests::new(method(&args, &tls, &metadata).await?, template),
    }
    .map_err(|error| usage(format!("-d: {error}")))?;
    let plan = Plan {
        requests,
        metadata,
        deadline: Some(args.deadline),
        concurrency: args.concurrency,
        stop,
        rate: args.rps,
    };
    plan.check().map_err(usage)?;

    let progress = Progress::default();
    let bar = progress_bar(stop);
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                bar.set_position(match stop {
                    Stop::Calls(_) => progress.done(),
                    Stop::After(_) => bar.elapsed().as_millis() as u64,
                });
            }
        })
    });
    let report = keel_bench::run(plan, target, progress)
        .await
        .map_err(Failure::Other);
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;

    let text = match args.format {
        Format::Text => report.text(),
        Format::Json => report.json() + "\n",
        Format::Csv => report.csv(),
        Format::Html => report.html(),
    };
    match &args.output {
        Some(file) => std::fs::write(file, text)
            .map_err(|error| Failure::Other(format!("-o {}: {error}", file.display())))?,
        None => print!("{text}"),
    }
    Ok(report.failed() == 0)
}

/// `--rest 'POST /v1/payments'`: the HTTP method and the path.
fn rest_route(route: &str) -> Result<(http::Method, &str), Failure> {
    let usage = || {
        Failure::Usage(format!(
            "--rest `{route}`: write the HTTP method and the path, e.g. 'POST /v1/payments'"
        ))
    };
    let (method, path) = route.trim().split_once(' ').ok_or_else(usage)?;
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| usage())?;
    let path = path.trim();
    if !path.starts_with('/') {
        return Err(usage());
    }
    Ok((method, path))
}

/// The method, from the descriptors the flags name or from the server's reflection.
async fn method(
    args: &BenchArgs,
    tls: &ClientFlags,
    metadata: &MetadataMap,
) -> Result<MethodDescriptor, Failure> {
    let name = args.method.as_deref().unwrap_or_default();
    let pool = if let Some(file) = &args.protoset {
        let bytes = std::fs::read(file)
            .map_err(|error| Failure::Usage(format!("--protoset {}: {error}", file.display())))?;
        DescriptorPool::decode(bytes.as_slice()).map_err(|error| {
            Failure::Usage(format!(
                "--protoset {}: not a FileDescriptorSet: {error}",
                file.display()
            ))
        })?
    } else if !args.proto.is_empty() {
        // Without -I, each file's own directory, as ghz does.
        let imports = if args.import_paths.is_empty() {
            args.proto
                .iter()
                .map(|file| file.parent().map(PathBuf::from).unwrap_or_default())
                .map(|dir| {
                    if dir.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        dir
                    }
                })
                .collect()
        } else {
            args.import_paths.clone()
        };
        let set = protox::compile(&args.proto, &imports)
            .map_err(|error| Failure::Usage(format!("--proto: {error}")))?;
        DescriptorPool::from_file_descriptor_set(set)
            .map_err(|error| Failure::Usage(format!("--proto: {error}")))?
    } else {
        let channel = connect(&args.address, tls).await?;
        return Reflection::new(channel, metadata.clone())
            .method(name)
            .await;
    };
    let (service, name) = split_method(name).ok_or_else(|| {
        Failure::Usage(format!(
            "`{name}` is not a method name; write pkg.Service/Method"
        ))
    })?;
    let service = pool.get_service_by_name(service).ok_or_else(|| {
        let known: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        Failure::Usage(format!(
            "no service `{service}` in the descriptors; they have: {}",
            known.join(", ")
        ))
    })?;
    service.methods().find(|m| m.name() == name).ok_or_else(|| {
        let known: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        Failure::Usage(format!(
            "{} has no method `{name}`; it has: {}",
            service.full_name(),
            known.join(", ")
        ))
    })
}

/// A bar on stderr when it is a terminal: calls done of the total, or time of the duration.
fn progress_bar(stop: Stop) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (length, template) = match stop {
        Stop::Calls(calls) => (calls, "{bar:40} {pos}/{len} calls, {per_sec}, ETA {eta}"),
        Stop::After(duration) => (duration.as_millis() as u64, "{bar:40} {elapsed} of the run"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).ok()?);
    Some(bar)
}
