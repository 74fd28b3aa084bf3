//! `payments-devices`: a fleet of simulated devices paying over MQTT through `keel bridge`,
//! and the check that the payments service ended up with exactly the money the outcomes say.
//!
//! This file is the shell: flags, the order of the run (accounts, subscription, connections,
//! publishing, waiting for outcomes, ledger check), progress and the summary, exit codes.
//! The pieces are `payments::load`.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use payments::load::{
    self, Broker, Devices, Event, LedgerCheck, Plan, PlanSettings, Subscription, Tally, Topics,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Simulated devices paying over MQTT: the load and correctness check of `keel bridge`.
///
/// Each of --devices devices connects to the broker as an MQTT 5 client of its own (client id
/// = device id, a session the broker keeps 5 minutes while the device is away) and
/// publishes payment requests with QoS 1 on
/// `{--topic-prefix}/{device}`: the proto3 JSON of a payments.v1 ProcessRequest whose
/// `idempotencyKey` is a request id unique to the run. Each publish carries a random W3C
/// `traceparent` user property and, as MQTT 5 correlation data, the key the bridge will use:
/// `{device}:{request id}`. The bridge must route those topics to
/// payments.v1.PaymentService/Process with the key `device+field:idempotency_key` and publish
/// each outcome on `{--response-prefix}/{device}`, as its default payments route does.
///
/// The run, in order:
///
/// 1. Setup, over gRPC at --target (no credentials: the accounts belong to the anonymous
///    caller, as the bridge's calls do): one payer account per device, funded with exactly
///    what its payments meant to succeed need, and one empty payee account.
/// 2. Subscribe to `{--response-prefix}/+` (QoS 1), before anything is published.
/// 3. Publish --requests requests, at --rate publishes per second over all devices, in turn.
///    --resend of them are published a second time, same payload and key, right after or a
///    little later (up to 2 × --devices publishes later). --insufficient of them ask for more
///    than their payer will ever hold: they must come back FAILED_PRECONDITION with reason
///    INSUFFICIENT_FUNDS and move nothing. --malformed extra payloads are not JSON at all: the
///    bridge dead-letters them and answers nothing, so they are only counted.
/// 4. Wait, at most --wait seconds after the last publish, until every request the broker
///    acknowledged (PUBACK) has an outcome.
/// 5. Check the ledger: every OK outcome is one payment under its key, of the requested amount,
///    with the payment id the outcome named; no payment exists for any other request; every
///    payer holds its funding minus its OK payments, the payee the sum of them all.
///
/// Connections ride out a broker that goes away (a restart): a device or the response
/// subscription whose connection is lost connects again to its session, the device publishes
/// again what the broker had not acknowledged, and the broker sends the responses it kept.
/// A publish counts as acknowledged only once its PUBACK came. A broker that comes back
/// without the sessions has lost what they held: the run fails.
///
/// The summary reports publishes, resends, acknowledgements, outcomes by code (unique keys;
/// a resend answered again counts as a duplicate), missing outcomes, lost and resumed
/// connections, the timing (outcomes per second from the first publish to the last first
/// outcome; latency from a request's first publish to its first outcome, p50/p90/p99/max),
/// and the ledger check.
/// A progress line is shown on stderr while it runs, when stderr is a terminal.
///
/// Exit status: 0 when every acknowledged request has its outcome, the outcomes are exactly
/// the OKs and INSUFFICIENT_FUNDS refusals planned, and the ledger matches to the minor unit;
/// 1 otherwise, each reason said; 2 for bad arguments or a failed setup (payments or the
/// broker unreachable, an account that exists already).
#[derive(Debug, Parser)]
#[command(
    name = "payments-devices",
    version,
    after_help = "Examples:\n  \
    # payments on :50051, mosquitto on :1883, `keel bridge` between them (its default route)\n  \
    payments-devices\n  \
    # a bigger fleet, as fast as it goes, one JSON line for a script or a test\n  \
    payments-devices --devices 200 --requests 20000 --rate 0 --json\n  \
    # business refusals, resends and garbage mixed in\n  \
    payments-devices --insufficient 25 --resend 0.2 --malformed 10\n  \
    # a bridge configured with other topics\n  \
    payments-devices --topic-prefix shop/pay --response-prefix shop/paid"
)]
struct Cli {
    /// The MQTT broker the devices and the bridge use (mqtt://HOST:PORT; no TLS)
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", value_name = "URL")]
    mqtt: String,
    /// The payments server's gRPC endpoint, for the setup and the ledger check
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    target: String,
    /// Simulated devices, each an MQTT connection of its own (at most 1000)
    #[arg(long, default_value_t = 10, value_name = "N")]
    devices: usize,
    /// Payment requests in all, spread over the devices in turn
    #[arg(long, default_value_t = 1000, value_name = "N")]
    requests: usize,
    /// Publishes per second over all devices, resends and malformed ones included
    /// (0: as fast as the broker takes them)
    #[arg(long, default_value_t = 500.0, value_name = "PER_SECOND")]
    rate: f64,
    /// Fraction of the requests published a second time, same payload and key
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    resend: f64,
    /// Amount of each payment meant to succeed, in minor units
    #[arg(long, default_value_t = 1, value_name = "MINOR_UNITS")]
    amount: i64,
    /// ISO 4217 currency of the accounts and payments
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// Prefix of the run's device, account and request ids, so runs never collide
    /// [default: random]
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Longest wait for outcomes after the last publish, in seconds
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    wait: f64,
    /// Requests that ask for more than their payer holds: they must come back
    /// FAILED_PRECONDITION (INSUFFICIENT_FUNDS) and move no money
    #[arg(long, default_value_t = 0, value_name = "N")]
    insufficient: usize,
    /// Extra payloads that are not JSON: the bridge dead-letters them, nothing answers
    #[arg(long, default_value_t = 0, value_name = "N")]
    malformed: usize,
    /// Requests are published on {PREFIX}/{device}
    #[arg(long, default_value = "payment/request", value_name = "PREFIX")]
    topic_prefix: String,
    /// Outcomes are expected on {PREFIX}/{device}
    #[arg(long, default_value = "payment/response", value_name = "PREFIX")]
    response_prefix: String,
    /// Print the summary as one JSON line instead of text
    #[arg(long)]
    json: bool,
}

/// The run's settings, checked.
struct Settings {
    plan: PlanSettings,
    broker: Broker,
    target: String,
    topics: Topics,
    rate: f64,
    wait: Duration,
    json: bool,
}

impl Cli {
    /// Checks every flag; the error names the flag and what it takes.
    fn settings(self) -> Result<Settings, String> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(format!(
                "--rate {}: publishes per second, 0 or more (0: as fast as possible)",
                self.rate
            ));
        }
        if !self.wait.is_finite() || !(0.0..=86_400.0).contains(&self.wait) {
            return Err(format!("--wait {}: seconds, 0 to 86400", self.wait));
        }
        let plan = PlanSettings {
            run_id: self
                .run_id
                .unwrap_or_else(|| format!("dev{:08x}", rand::rng().random::<u32>())),
            devices: self.devices,
            requests: self.requests,
            resend: self.resend,
            amount: self.amount,
            currency: self.currency,
            insufficient: self.insufficient,
            malformed: self.malformed,
        };
        Ok(Settings {
            plan,
            broker: Broker::parse(&self.mqtt)?,
            target: self.target,
            topics: Topics::new(&self.topic_prefix, &self.response_prefix)?,
            rate: self.rate,
            wait: Duration::from_secs_f64(self.wait),
            json: self.json,
        })
    }
}

/// How long the subscription and the connections may take to come up.
const SETUP_LIMIT: Duration = Duration::from_secs(15);
/// How long closing the connections may take.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);
/// Events buffered between the connections and the tally.
const EVENTS: usize = 4096;

fn main() -> ExitCode {
    let settings = match Cli::parse().settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("payments-devices: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("payments-devices: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("payments-devices: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the simulation; `Ok(false)` when the run or the ledger check failed, `Err` when the
/// setup did.
async fn run(settings: Settings) -> anyhow::Result<bool> {
    let plan = Arc::new(Plan::new(&settings.plan, &mut rand::rng()).map_err(|e| anyhow!(e))?);
    let run_id = plan.run_id.clone();
    let channel = load::accounts::endpoint(&settings.target)
        .with_context(|| format!("invalid --target {:?}", settings.target))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to payments at {}", settings.target))?;
    load::accounts::open_accounts(&channel, &plan.accounts(), &plan.currency)
        .await
        .with_context(|| format!("cannot set up the run's accounts (is run id {run_id:?} new?)"))?;

    let (events, mut receiver) = mpsc::channel(EVENTS);
    let mut tally = Tally::new(plan.clone());
    let subscription = Subscription::start(
        &settings.broker,
        &format!("{run_id}-responses"),
        &settings.topics.response_filter(),
        &events,
    );
    let deadline = Instant::now() + SETUP_LIMIT;
    until(&mut receiver, &mut tally, deadline, |tally| {
        tally.subscribed().map_err(str::to_owned)
    })
    .await
    .with_context(|| {
        format!(
            "cannot subscribe to {} at {}",
            settings.topics.response_filter(),
            settings.broker
        )
    })?;
    let ids: Vec<String> = plan.devices.iter().map(|d| d.id.clone()).collect();
    let devices = Arc::new(Devices::connect(&settings.broker, &ids, &events));
    let connected = until(&mut receiver, &mut tally, deadline, |tally| {
        match tally.first_lost() {
            Some((device, error)) => Err(format!("{device}: {error}")),
            None => Ok(tally.connected() == ids.len()),
        }
    })
    .await;
    connected.with_context(|| format!("cannot connect the devices to {}", settings.broker))?;

    let started = Instant::now();
    let publisher = tokio::spawn(load::publish_plan(
        plan.clone(),
        devices.clone(),
        settings.topics.clone(),
        settings.rate,
        settings.wait.max(Duration::from_secs(1)),
        events,
    ));
    let published_in = collect(&mut receiver, &mut tally, &plan, settings.wait).await;
    let elapsed = started.elapsed();
    // Publishing is over unless the connections all ended first; then it is stopped here.
    publisher.abort();
    let _ = publisher.await;
    // What still arrives while closing is too late for the tally, and must not hold up the
    // connections' tasks.
    tokio::spawn(async move { while receiver.recv().await.is_some() {} });
    if let Some(devices) = Arc::into_inner(devices) {
        devices.disconnect(CLOSE_LIMIT).await;
    }
    subscription.disconnect(CLOSE_LIMIT).await;

    let ledger = load::check_ledger(&channel, &plan.accounts(), &tally.expected_payments()).await;
    let mut reasons = tally.failures();
    let ledger = match ledger {
        Ok(check) => {
            reasons.extend(check.problems.iter().map(|p| format!("ledger: {p}")));
            Some(check)
        }
        Err(error) => {
            reasons.push(format!(
                "the ledger check could not run: {:#}",
                anyhow!(error)
            ));
            None
        }
    };
    let summary = Summary {
        plan: &plan,
        tally: &tally,
        ledger: ledger.as_ref(),
        reasons: &reasons,
        published_in,
        elapsed,
    };
    if settings.json {
        println!("{}", summary.json());
    } else {
        println!("{}", summary.text());
    }
    for reason in &reasons {
        eprintln!("payments-devices: {reason}");
    }
    Ok(reasons.is_empty())
}

/// Feeds events to the tally until `ready` says so (`Ok(true)`) or fails, or `deadline`.
async fn until(
    receiver: &mut mpsc::Receiver<Event>,
    tally: &mut Tally,
    deadline: Instant,
    ready: impl Fn(&Tally) -> Result<bool, String>,
) -> anyhow::Result<()> {
    loop {
        match ready(tally) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => bail!(error),
        }
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(event)) => tally.handle(event),
            Ok(None) => bail!("the connections' tasks ended"),
            Err(_) => bail!("no answer within {SETUP_LIMIT:?}"),
        }
    }
}

/// Feeds events to the tally until it is complete, or `wait` after publishing ended; shows
/// progress on a terminal. Returns how long publishing took.
async fn collect(
    receiver: &mut mpsc::Receiver<Event>,
    tally: &mut Tally,
    plan: &Plan,
    wait: Duration,
) -> Duration {
    let started = Instant::now();
    let mut published_in = Duration::ZERO;
    let mut deadline: Option<Instant> = None;
    let progress = Progress::new(plan.sends.len());
    let mut redraw = tokio::time::interval(Duration::from_millis(200));
    while !tally.complete() {
        let until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = receiver.recv() => match event {
                Some(event) => {
                    tally.handle(event);
                    if deadline.is_none() && tally.publishing_done() {
                        published_in = started.elapsed();
                        deadline = Some(Instant::now() + wait);
                    }
                }
                None => break,
            },
            _ = redraw.tick(), if progress.shown() => progress.draw(tally),
            () = until_deadline => break,
        }
    }
    progress.clear();
    published_in
}

/// The progress line on stderr, when stderr is a terminal.
struct Progress {
    sends: usize,
    terminal: bool,
}

impl Progress {
    fn new(sends: usize) -> Self {
        Self {
            sends,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn shown(&self) -> bool {
        self.terminal
    }

    fn draw(&self, tally: &Tally) {
        let counts = tally.counts();
        let published = counts.published + counts.resent + counts.malformed;
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[2Kpublished {published}/{}, acked {}, outcomes {}",
            self.sends,
            counts.acknowledged,
            counts.outcomes
        );
    }

    fn clear(&self) {
        if self.terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// The run's result.
struct Summary<'a> {
    plan: &'a Plan,
    tally: &'a Tally,
    ledger: Option<&'a LedgerCheck>,
    reasons: &'a [String],
    published_in: Duration,
    elapsed: Duration,
}

impl Summary<'_> {
    fn json(&self) -> serde_json::Value {
        let counts = self.tally.counts();
        let (ok, refused) = self.plan.expected();
        serde_json::json!({
            "run_id": self.plan.run_id,
            "devices": self.plan.devices.len(),
            "requests": self.plan.requests.len(),
            "published": counts.published,
            "resent": counts.resent,
            "malformed": counts.malformed,
            "acknowledged": counts.acknowledged,
            "pubacks": counts.pubacks,
            "no_subscribers": counts.no_subscribers,
            "disconnects": counts.disconnects,
            "subscriber_disconnects": counts.subscriber_disconnects,
            "unacknowledged": self.tally.unacknowledged(),
            "outcomes": counts.outcomes,
            "duplicates": counts.duplicates,
            "codes": self.tally.codes(),
            "expected": {"OK": ok, "FAILED_PRECONDITION": refused},
            "missing": self.tally.missing(),
            "ledger": self.ledger.map(|check| serde_json::json!({
                "ok": check.problems.is_empty(),
                "payments": check.payments,
                "problems": check.problems,
            })),
            "timing": self.tally.timings().map(|t| serde_json::json!({
                "outcomes_per_s": round3(t.outcomes_per_s),
                "p50_ms": round3(t.p50_ms),
                "p90_ms": round3(t.p90_ms),
                "p99_ms": round3(t.p99_ms),
                "max_ms": round3(t.max_ms),
            })),
            "publish_s": round3(self.published_in.as_secs_f64()),
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "ok": self.reasons.is_empty(),
            "reasons": self.reasons,
        })
    }

    fn text(&self) -> String {
        let counts = self.tally.counts();
        let (ok, refused) = self.plan.expected();
        let codes: Vec<String> = self
            .tally
            .codes()
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let ledger = match self.ledger {
            Some(check) if check.problems.is_empty() => {
                format!("{} payments, balances exact", check.payments)
            }
            Some(check) => format!(
                "{} payments, {} problems",
                check.payments,
                check.problems.len()
            ),
            None => "not checked".to_owned(),
        };
        let timing = match self.tally.timings() {
            Some(t) => format!(
                "{:.0} outcomes/s; publish to outcome p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, \
                 max {:.1} ms",
                t.outcomes_per_s, t.p50_ms, t.p90_ms, t.p99_ms, t.max_ms
            ),
            None => "no outcomes".to_owned(),
        };
        format!(
            "run {}: {} devices, {} requests ({ok} to succeed, {refused} to overdraw)\n\
             published {} requests, {} resends, {} malformed in {:.1} s; acknowledged {} \
             requests ({} PUBACKs, {} unacknowledged publishes)\n\
             connections lost and resumed: {} of devices, {} of the response subscription\n\
             outcomes for {} requests, {} duplicates: {}; missing {}\n\
             timing: {timing}\n\
             ledger: {ledger}\n\
             result: {}",
            self.plan.run_id,
            self.plan.devices.len(),
            self.plan.requests.len(),
            counts.published,
            counts.resent,
            counts.malformed,
            self.published_in.as_secs_f64(),
            counts.acknowledged,
            counts.pubacks,
            self.tally.unacknowledged(),
            counts.disconnects,
            counts.subscriber_disconnects,
            counts.outcomes,
            counts.duplicates,
            if codes.is_empty() {
                "none".to_owned()
            } else {
                codes.join(", ")
            },
            self.tally.missing(),
            if self.reasons.is_empty() {
                "OK"
            } else {
                "FAILED"
            },
        )
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
