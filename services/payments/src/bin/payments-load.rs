//! `payments-load`: a closed-loop gRPC load generator for `PaymentService/Process`, the
//! measuring half of `scripts/bench-payments.sh` (see docs/BENCHMARKS.md).
//!
//! It creates and funds its own accounts, keeps a fixed number of `Process` calls in flight
//! (each worker sends its next payment as soon as the previous one answers), records the
//! latency of every successful call in an HDR histogram, and finally checks that the balances
//! still add up to the deposits: a benchmark that lost money would measure nothing.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use payments::load::accounts;
use payments::pb::v1::ProcessRequest;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// Closed-loop load generator for payments.v1 PaymentService/Process.
///
/// Creates --accounts accounts (each funded by one Deposit of --deposit), then runs
/// --concurrency workers spread over --connections HTTP/2 connections. Each worker sends
/// Process calls one after another, each with a fresh idempotency key, a random payer and a
/// different random payee, and an amount of 1..=--max-amount minor units (small enough that no
/// account runs dry). Calls completing during --warmup are not measured; calls completing
/// during the following --duration are; failed calls are counted by gRPC code over the whole
/// run, warm-up included. Afterwards the balances of the accounts are read back and must sum
/// to the deposits, with none negative.
///
/// Exit status: 0 when every call succeeded and the balances add up, 1 when a call failed or
/// the balance check did not hold, 2 when setup failed (server unreachable, bad arguments).
#[derive(Debug, Parser)]
#[command(
    name = "payments-load",
    version,
    after_help = "Examples:\n  \
    payments-load --target http://127.0.0.1:50051\n  \
    payments-load --target http://127.0.0.1:50051 --concurrency 256 --duration 30 --json"
)]
struct Cli {
    /// The payments server's gRPC endpoint
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    target: String,
    /// Calls kept in flight (closed loop: one worker per call)
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the workers share (worker i uses connection i mod N)
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Accounts created for the run; payers and payees are drawn among them
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Deposit into each account, in minor units
    #[arg(long, default_value_t = 1_000_000_000)]
    deposit: i64,
    /// Largest payment, in minor units (amounts are uniform in 1..=MAX)
    #[arg(long, default_value_t = 100)]
    max_amount: i64,
    /// ISO 4217 currency of the accounts and payments
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// Warm-up before measuring, in seconds (calls are sent but not measured)
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    warmup: f64,
    /// Measured period, in seconds
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    duration: f64,
    /// Deadline of each call, in seconds
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,
    /// Label for the backend in the output (informative; the server decides the backend)
    #[arg(long, default_value = "unknown")]
    backend: String,
    /// Prefix of account ids and idempotency keys [default: random]
    #[arg(long)]
    run_id: Option<String>,
    /// Print the summary as one JSON line instead of text
    #[arg(long)]
    json: bool,
}

/// What one worker saw.
struct WorkerReport {
    /// Latency of each successful call completed in the measured period, in microseconds.
    latency_us: Histogram<u64>,
    /// Calls sent over the whole run (warm-up included), successful or not.
    sent: u64,
    /// Failed calls over the whole run (warm-up included), by gRPC code name.
    errors: BTreeMap<String, u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("payments-load: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("payments-load: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the benchmark; `Ok(false)` when a call failed or the balances do not add up.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    if cli.concurrency == 0 || cli.connections == 0 || cli.accounts < 2 {
        bail!("--concurrency and --connections must be at least 1, --accounts at least 2");
    }
    if cli.max_amount < 1 || cli.deposit < 1 {
        bail!("--max-amount and --deposit must be positive");
    }
    let run_id = cli
        .run_id
        .clone()
        .unwrap_or_else(|| format!("load{:08x}", rand::rng().random::<u32>()));
    let channels = connect(&cli).await?;
    let accounts = create_accounts(&cli, &channels[0], &run_id).await?;

    let warmup = Duration::from_secs_f64(cli.warmup);
    let measured = Duration::from_secs_f64(cli.duration);
    let timeout = Duration::from_secs_f64(cli.timeout);
    let start = Instant::now();
    let (measure_from, measure_until) = (start + warmup, start + warmup + measured);
    let workers: Vec<_> = (0..cli.concurrency)
        .map(|worker| {
            let client = PaymentServiceClient::new(channels[worker % channels.len()].clone());
            let load = Load {
                accounts: accounts.clone(),
                currency: cli.currency.clone(),
                max_amount: cli.max_amount,
                key_prefix: format!("{run_id}-w{worker}"),
                timeout,
                measure_from,
                measure_until,
            };
            tokio::spawn(load.run(client))
        })
        .collect();
    let mut latency_us = new_histogram();
    let (mut sent, mut errors) = (0, BTreeMap::<String, u64>::new());
    for worker in workers {
        let report = worker.await.context("a worker panicked")?;
        latency_us.add(&report.latency_us)?;
        sent += report.sent;
        for (code, count) in report.errors {
            *errors.entry(code).or_default() += count;
        }
    }

    let balance_error = check_balances(&cli, &channels[0], &accounts).await?;
    let summary = Summary {
        backend: &cli.backend,
        concurrency: cli.concurrency,
        connections: cli.connections,
        measured_s: measured.as_secs_f64(),
        latency_us: &latency_us,
        sent,
        errors: &errors,
        balances_ok: balance_error.is_none(),
    };
    if cli.json {
        println!("{}", summary.json());
    } else {
        println!("{}", summary.text());
    }
    if let Some(message) = &balance_error {
        eprintln!("payments-load: balance check failed: {message}");
    }
    Ok(errors.is_empty() && balance_error.is_none())
}

/// Opens `--connections` HTTP/2 connections to the target.
async fn connect(cli: &Cli) -> anyhow::Result<Vec<Channel>> {
    let endpoint = accounts::endpoint(&cli.target)
        .with_context(|| format!("invalid --target {:?}", cli.target))?;
    let mut channels = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", cli.target))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Creates and funds the run's accounts; returns their ids.
async fn create_accounts(
    cli: &Cli,
    channel: &Channel,
    run_id: &str,
) -> anyhow::Result<Vec<String>> {
    let funded: Vec<(String, i64)> = (0..cli.accounts)
        .map(|i| (format!("{run_id}-acct{i}"), cli.deposit))
        .collect();
    accounts::open_accounts(channel, &funded, &cli.currency).await?;
    Ok(funded.into_iter().map(|(id, _)| id).collect())
}

/// One worker's share of the load.
struct Load {
    accounts: Vec<String>,
    currency: String,
    max_amount: i64,
    key_prefix: String,
    timeout: Duration,
    measure_from: Instant,
    measure_until: Instant,
}

impl Load {
    /// Sends payments one after another until the measured period is over.
    async fn run(self, mut client: PaymentServiceClient<Channel>) -> WorkerReport {
        let mut report = WorkerReport {
            latency_us: new_histogram(),
            sent: 0,
            errors: BTreeMap::new(),
        };
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let n = self.accounts.len();
        while Instant::now() < self.measure_until {
            let payer = rng.random_range(0..n);
            // Uniform over the other n - 1 accounts.
            let payee = (payer + rng.random_range(1..n)) % n;
            let mut request = tonic::Request::new(ProcessRequest {
                idempotency_key: format!("{}-{}", self.key_prefix, report.sent),
                payer_account_id: self.accounts[payer].clone(),
                payee_account_id: self.accounts[payee].clone(),
                amount_minor: rng.random_range(1..=self.max_amount),
                currency: self.currency.clone(),
                description: "payments-load".to_owned(),
                metadata: Default::default(),
            });
            request.set_timeout(self.timeout);
            report.sent += 1;
            let sent_at = Instant::now();
            let outcome = client.process(request).await;
            let done_at = Instant::now();
            match outcome {
                Ok(_) if done_at >= self.measure_from && done_at <= self.measure_until => {
                    let micros = (done_at - sent_at).as_micros();
                    report
                        .latency_us
                        .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                }
                Ok(_) => {}
                Err(status) => {
                    *report
                        .errors
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                }
            }
        }
        report
    }
}

/// Reads every account back: `None` when the balances sum to the deposits and none is
/// negative, otherwise what is wrong.
async fn check_balances(
    cli: &Cli,
    channel: &Channel,
    accounts: &[String],
) -> anyhow::Result<Option<String>> {
    let mut total: i128 = 0;
    for id in accounts {
        let balance = accounts::balance(channel, id).await?;
        if balance < 0 {
            return Ok(Some(format!("{id} has a negative balance {balance}")));
        }
        total += i128::from(balance);
    }
    let expected = i128::from(cli.deposit) * accounts.len() as i128;
    Ok((total != expected).then(|| format!("balances sum to {total}, deposits to {expected}")))
}

/// A histogram of microseconds from 1 µs to 10 min with three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// The run's result.
struct Summary<'a> {
    backend: &'a str,
    concurrency: usize,
    connections: usize,
    measured_s: f64,
    latency_us: &'a Histogram<u64>,
    sent: u64,
    errors: &'a BTreeMap<String, u64>,
    balances_ok: bool,
}

impl Summary<'_> {
    fn requests(&self) -> u64 {
        self.latency_us.len()
    }

    fn rps(&self) -> f64 {
        self.requests() as f64 / self.measured_s
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "duration_s": self.measured_s,
            "requests": self.requests(),
            "rps": (self.rps() * 10.0).round() / 10.0,
            "p50_ms": round3(self.ms(0.50)),
            "p90_ms": round3(self.ms(0.90)),
            "p99_ms": round3(self.ms(0.99)),
            "max_ms": round3(self.latency_us.max() as f64 / 1000.0),
            "errors": self.errors,
            "sent_total": self.sent,
            "client_cpu_s": client_cpu_seconds(),
            "balances_ok": self.balances_ok,
        })
    }

    fn text(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            let parts: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.join(",")
        };
        format!(
            "{}: concurrency {} over {} connections: {} requests in {:.1} s = {:.0} req/s; \
             latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; errors {}; \
             balances {}",
            self.backend,
            self.concurrency,
            self.connections,
            self.requests(),
            self.measured_s,
            self.rps(),
            self.ms(0.50),
            self.ms(0.90),
            self.ms(0.99),
            self.latency_us.max() as f64 / 1000.0,
            errors,
            if self.balances_ok { "ok" } else { "WRONG" },
        )
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`, assuming the
/// usual 100 clock ticks per second; `None` where that file cannot be read.
fn client_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
