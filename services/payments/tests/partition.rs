//! Acceptance: PostgreSQL cut off by a network partition (a blackholing proxy: nothing
//! forwarded, no socket closed) under payment load. The service, assembled as the binary
//! assembles it, must answer every call within its configured timeouts (UNAVAILABLE with
//! RetryInfo while the database is unreachable), report itself unready on `/readyz` (503,
//! naming the database) and NOT_SERVING over grpc.health.v1, and recover by itself when the
//! partition heals; afterwards no money was created or lost and no idempotency key has two
//! payments, once every in-doubt call has been retried with its key.
//!
//! The timeouts are short (1 s each) so the test takes seconds; the partition lasts 10 s, five
//! times the longest a call may take (a write: transaction + commit timeout, 2 s) and 40
//! readiness intervals, which exceeds every timeout several times as a 30 s partition against
//! the 5 s defaults would.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::app::RunningApp;
use common::proxy::{Proxy, postgres_addr, via_port};
use common::{Backend, TestDb};
use keel::health::pb::HealthCheckRequest;
use keel::health::pb::health_check_response::ServingStatus;
use keel::health::pb::health_client::HealthClient;
use payments::pb::v1::account_service_client::AccountServiceClient;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{CreateAccountRequest, DepositRequest, GetAccountRequest, ProcessRequest};
use payments::store::{StoreConfig, StoreError};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const CLIENTS: usize = 8;
const ACCOUNTS: usize = 6;
const DEPOSIT: i64 = 10_000_000;
/// Each of the statement, transaction and commit timeouts.
const DB_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a write may take: transaction + commit timeout.
const WRITE_BOUND: Duration = Duration::from_secs(2);
const READINESS_INTERVAL: Duration = Duration::from_millis(250);
const READINESS_TIMEOUT: Duration = Duration::from_millis(500);
const PARTITION: Duration = Duration::from_secs(10);
/// Scheduling slack on a shared two-core machine, on top of a configured bound.
const SLACK: Duration = Duration::from_millis(1500);

/// One call a client made.
#[derive(Debug)]
struct Call {
    request: ProcessRequest,
    code: Code,
    elapsed: Duration,
    /// For OK: the payment id; otherwise the reason and whether RetryInfo came.
    payment_id: Option<String>,
    reason: Option<String>,
    retry_delay: Option<Duration>,
    /// The call started after the partition healed.
    after_heal: bool,
}

/// The clients' shared view of the test's phases.
#[derive(Default)]
struct Phases {
    stop: AtomicBool,
    healed: AtomicBool,
    ok: AtomicUsize,
    /// Clients that got OK for a call started after the heal.
    recovered: AtomicUsize,
}

async fn process(
    client: &mut PaymentServiceClient<Channel>,
    request: &ProcessRequest,
    after_heal: bool,
) -> Call {
    let started = Instant::now();
    let outcome = client.process(within_deadline(request.clone())).await;
    let elapsed = started.elapsed();
    match outcome {
        Ok(response) => Call {
            request: request.clone(),
            code: Code::Ok,
            elapsed,
            payment_id: Some(response.into_inner().payment.unwrap().payment_id),
            reason: None,
            retry_delay: None,
            after_heal,
        },
        Err(status) => {
            let details = keel::error::Details::from_status(&status);
            Call {
                request: request.clone(),
                code: status.code(),
                elapsed,
                payment_id: None,
                reason: details.reason().map(str::to_owned),
                retry_delay: details.retry_delay(),
                after_heal,
            }
        }
    }
}

/// One client: random payments under fresh keys until told to stop.
async fn client(
    id: usize,
    channel: Channel,
    accounts: Vec<String>,
    phases: Arc<Phases>,
) -> Vec<Call> {
    let mut client = PaymentServiceClient::new(channel);
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
    let mut calls = Vec::new();
    let mut recovered = false;
    for n in 0.. {
        if phases.stop.load(Ordering::SeqCst) {
            break;
        }
        let payer = rng.random_range(0..accounts.len());
        let payee = (payer + rng.random_range(1..accounts.len())) % accounts.len();
        let request = ProcessRequest {
            idempotency_key: format!("c{id}-{n}"),
            payer_account_id: accounts[payer].clone(),
            payee_account_id: accounts[payee].clone(),
            amount_minor: rng.random_range(1..100),
            currency: "EUR".into(),
            ..Default::default()
        };
        let after_heal = phases.healed.load(Ordering::SeqCst);
        let call = process(&mut client, &request, after_heal).await;
        if call.code == Code::Ok {
            phases.ok.fetch_add(1, Ordering::SeqCst);
            if after_heal && !recovered {
                recovered = true;
                phases.recovered.fetch_add(1, Ordering::SeqCst);
            }
        }
        calls.push(call);
    }
    calls
}

/// Polls `condition` (bounded) for at most `limit`.
async fn wait_until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    keel_test_support::eventually(what, limit, condition).await;
}

/// `message` as a call with a deadline far beyond any bound of the service: a hang shows as
/// DEADLINE_EXCEEDED.
fn within_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(30));
    request
}

/// UNAVAILABLE with RetryInfo, within `bound`.
#[track_caller]
fn assert_unavailable(status: &tonic::Status, elapsed: Duration, bound: Duration) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = keel::error::Details::from_status(status);
    assert!(details.retry_delay().is_some(), "no RetryInfo: {status:?}");
    assert!(elapsed <= bound + SLACK, "answered after {elapsed:?}");
}

async fn health_status(channel: &Channel, service: &str) -> i32 {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    HealthClient::new(channel.clone())
        .check(request)
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_database_fails_fast_reports_unready_and_recovers() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = Proxy::start(postgres_addr().await);
    let mut config = common::app::config(&via_port(&db.url, proxy.port()));
    config.database_statement_timeout = DB_TIMEOUT;
    config.database_transaction_timeout = DB_TIMEOUT;
    config.database_commit_timeout = DB_TIMEOUT;
    config.readiness_check_interval = READINESS_INTERVAL;
    config.readiness_check_timeout = READINESS_TIMEOUT;
    let app = RunningApp::start(config).await;
    let channel = app.channel().await;
    let (code, body) = app.readyz().await;
    assert_eq!((code, &body["status"]), (200, &"serving".into()), "{body}");
    let accounts = common::api::funded_accounts(&channel, ACCOUNTS, DEPOSIT).await;
    let spare = AccountServiceClient::new(channel.clone())
        .create_account(CreateAccountRequest {
            account_id: "spare".into(),
            currency: "EUR".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .account_id;

    let phases = Arc::new(Phases::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client(
                id,
                channel.clone(),
                accounts.clone(),
                phases.clone(),
            ))
        })
        .collect();
    wait_until("payments flow", Duration::from_secs(10), || {
        phases.ok.load(Ordering::SeqCst) >= 50
    })
    .await;

    // The partition.
    proxy.blackhole();
    let partitioned = Instant::now();
    let (_, body) = app
        .wait_readyz(READINESS_INTERVAL + READINESS_TIMEOUT + SLACK, |code, _| {
            code == 503
        })
        .await;
    let unready_after = partitioned.elapsed();
    assert_eq!(body["status"], "not_serving", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "failing", "{body}");
    assert_eq!(body["checks"]["database"]["impact"], "critical", "{body}");
    assert!(
        body["checks"]["database"]["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{body}"
    );
    for service in [
        "",
        "payments.v1.PaymentService",
        "payments.v1.AccountService",
    ] {
        assert_eq!(
            health_status(&channel, service).await,
            ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    // Deposits (one transaction each, no group commit) and reads fail as fast.
    let mut accounts_client = AccountServiceClient::new(channel.clone());
    let deposit = DepositRequest {
        account_id: spare.clone(),
        amount_minor: 500,
        idempotency_key: "spare-deposit".into(),
    };
    let started = Instant::now();
    let status = accounts_client
        .deposit(within_deadline(deposit.clone()))
        .await
        .unwrap_err();
    let deposit_elapsed = started.elapsed();
    assert_unavailable(&status, deposit_elapsed, WRITE_BOUND);
    let started = Instant::now();
    let read = GetAccountRequest {
        account_id: spare.clone(),
    };
    let status = accounts_client
        .get_account(within_deadline(read))
        .await
        .unwrap_err();
    assert_unavailable(&status, started.elapsed(), DB_TIMEOUT);
    // sleep: the partition lasting is the behaviour: unready for all of it
    tokio::time::sleep_until(partitioned + PARTITION).await;
    let (code, body) = app.readyz().await;
    assert_eq!(
        code, 503,
        "unready for as long as the partition lasts: {body}"
    );

    // The heal.
    proxy.heal();
    phases.healed.store(true, Ordering::SeqCst);
    let healed = Instant::now();
    let (_, body) = app
        .wait_readyz(READINESS_INTERVAL + READINESS_TIMEOUT + SLACK, |code, _| {
            code == 200
        })
        .await;
    let ready_after = healed.elapsed();
    assert_eq!(body["status"], "serving", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "passing", "{body}");
    assert_eq!(
        health_status(&channel, "payments.v1.PaymentService").await,
        ServingStatus::Serving as i32
    );
    wait_until("every client pays again", WRITE_BOUND + SLACK * 2, || {
        phases.recovered.load(Ordering::SeqCst) == CLIENTS
    })
    .await;
    phases.stop.store(true, Ordering::SeqCst);
    let mut calls = Vec::new();
    let mut unavailable_per_client = Vec::new();
    for client in clients {
        let made = client.await.unwrap();
        unavailable_per_client.push(made.iter().filter(|c| c.code == Code::Unavailable).count());
        calls.extend(made);
    }

    // Every call answered in time, OK or UNAVAILABLE with RetryInfo.
    let slowest = calls.iter().map(|call| call.elapsed).max().unwrap();
    let unavailable: Vec<&Call> = calls
        .iter()
        .filter(|c| c.code == Code::Unavailable)
        .collect();
    println!(
        "{} calls, {} UNAVAILABLE; slowest answer {slowest:?}; /readyz 503 after {unready_after:?}, \
         200 again {ready_after:?} after the heal",
        calls.len(),
        unavailable.len()
    );
    for call in &calls {
        assert!(
            matches!(call.code, Code::Ok | Code::Unavailable),
            "{:?} for {}: {:?}",
            call.code,
            call.request.idempotency_key,
            call.reason
        );
        assert!(
            call.elapsed <= WRITE_BOUND + SLACK,
            "{} took {:?}",
            call.request.idempotency_key,
            call.elapsed
        );
    }
    for call in &unavailable {
        assert_eq!(
            call.reason.as_deref(),
            Some("STORAGE_UNAVAILABLE"),
            "{call:?}"
        );
        assert!(
            call.retry_delay.is_some(),
            "UNAVAILABLE without RetryInfo: {call:?}"
        );
    }
    assert!(
        unavailable_per_client.iter().all(|n| *n >= 3),
        "every client hit the partition several times: {unavailable_per_client:?}"
    );
    assert!(
        calls.iter().all(|c| !c.after_heal || c.code == Code::Ok),
        "calls started after the heal succeed"
    );

    // In-doubt calls settled by retrying with their keys: each gets its one payment.
    let mut payment_of: HashMap<String, String> = HashMap::new();
    for call in calls.iter().filter(|c| c.code == Code::Ok) {
        payment_of.insert(
            call.request.idempotency_key.clone(),
            call.payment_id.clone().unwrap(),
        );
    }
    let mut client = PaymentServiceClient::new(channel.clone());
    let mut replayed = 0;
    for call in &unavailable {
        let response = client
            .process(call.request.clone())
            .await
            .unwrap_or_else(|status| {
                panic!("retrying {}: {status:?}", call.request.idempotency_key)
            })
            .into_inner();
        replayed += usize::from(response.replayed);
        payment_of.insert(
            call.request.idempotency_key.clone(),
            response.payment.unwrap().payment_id,
        );
    }
    println!(
        "{} UNAVAILABLE calls retried: {replayed} had been committed (replayed), the rest ran now",
        unavailable.len()
    );

    let deposited = AccountServiceClient::new(channel.clone())
        .deposit(deposit)
        .await
        .unwrap()
        .into_inner();
    assert!(
        !deposited.replayed,
        "a deposit that timed out took no effect"
    );
    assert_eq!(deposited.account.unwrap().balance_minor, 500);

    let listed = common::api::assert_balances_follow_payments(&channel, &accounts, DEPOSIT).await;
    let by_key: BTreeMap<&str, &str> = listed
        .values()
        .map(|payment| {
            (
                payment.idempotency_key.as_str(),
                payment.payment_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed.len(),
        payment_of.len(),
        "every key has exactly one payment"
    );
    for (key, payment_id) in &payment_of {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(&payment_id.as_str()),
            "{key}"
        );
    }
    db.assert_ledger_consistent().await;
    app.stop().await;
}

/// A batch whose COMMIT is carried out but never answered: every payment in flight fails with
/// UNAVAILABLE within the write bound, and retrying each with its key returns the payment the
/// database did commit (replayed) or makes it now; none is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_commit_fails_its_batch_in_time_and_the_keys_settle_it() {
    let config = StoreConfig::default()
        .statement_timeout(DB_TIMEOUT)
        .transaction_timeout(DB_TIMEOUT)
        .commit_timeout(DB_TIMEOUT);
    let (proxy, db) = common::proxy::postgres_behind_proxy_with(config).await;
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let requests: Vec<_> = (0..6)
        .map(|n| common::payment(&format!("in-doubt-{n}"), &payer, &payee, 10))
        .collect();

    proxy.blackhole_after_commit();
    let started = Instant::now();
    let outcomes = futures_util::future::join_all(requests.iter().map(|request| {
        let store = db.store.clone();
        async move { (store.process(request).await, started.elapsed()) }
    }))
    .await;
    assert!(
        proxy.is_blackholed(),
        "a COMMIT went out and tripped the proxy"
    );
    for (outcome, elapsed) in &outcomes {
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
        assert!(
            *elapsed <= WRITE_BOUND + SLACK,
            "answered after {elapsed:?}"
        );
    }
    let messages: Vec<String> = outcomes
        .iter()
        .filter_map(|(outcome, _)| outcome.as_ref().err().map(causes))
        .collect();
    assert!(
        messages
            .iter()
            .any(|message| message.contains("COMMIT got no answer")),
        "an in-doubt commit says so: {messages:?}"
    );

    proxy.heal();
    let mut replayed = 0;
    for request in &requests {
        let settled = db.store.process(request).await.unwrap();
        replayed += usize::from(settled.replayed);
    }
    assert!(replayed >= 1, "the unanswered COMMIT was carried out");
    assert_eq!(
        db.i64("SELECT COUNT(*) FROM payments").await,
        requests.len() as i64,
        "one payment per key"
    );
    assert_eq!(db.balance(&payer).await, 1_000 - 10 * requests.len() as i64);
    db.assert_ledger_consistent().await;
}

/// An error and its sources, joined by ": ".
fn causes(error: &StoreError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
