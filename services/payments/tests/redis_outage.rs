//! Acceptance: killing the service's Redis connections mid-run changes no balance and loses no
//! payment. Concurrent clients make transfers with retries and duplicate keys through the
//! service with Redis on (limiter and replay cache), while the test cuts every connection the
//! service has to Redis, again and again. Afterwards: every OK payment is recorded, no key
//! moved money twice, balances are what the payments imply and add up to the deposits, and no
//! client saw anything but business outcomes — on SQLite and on PostgreSQL. And Redis cut off
//! shows as a degraded service, not an unready one.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::api::{Mix, MixOutcome};
use common::app::RunningApp;
use common::proxy::Proxy;
use common::redis::TestRedis;
use common::{Backend, TestDb, on_both_backends};
use keel::health::pb::HealthCheckRequest;
use keel::health::pb::health_check_response::ServingStatus;
use keel::health::pb::health_client::HealthClient;
use payments::limit::Limiter;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{GetPaymentRequest, ProcessRequest};
use payments::service::Payments;
use payments::store::CachedStore;
use tonic::Code;

const CLIENTS: usize = 12;
const ACCOUNTS: usize = 20;
const REQUESTS_PER_CLIENT: usize = 30;
const DEPOSIT: i64 = 1_000;

async fn killing_redis_mid_run_changes_no_balance_and_loses_no_payment(db: &TestDb) {
    let redis = Arc::new(TestRedis::with_user());
    let cached = Arc::new(CachedStore::new(
        db.store.clone(),
        redis.handle(),
        Duration::from_secs(24 * 3600),
    ));
    // A rate no test payer reaches: the limiter runs (in Redis) on every payment, never trips.
    let service = Payments::new(cached, 0).limiter(Limiter::redis(redis.handle(), 100_000));
    let channel = common::api::serve_payments(service).await;
    let accounts = common::api::funded_accounts(&channel, ACCOUNTS, DEPOSIT).await;

    // The outage: cut every connection the service has to Redis, every 50 ms.
    let running = Arc::new(AtomicBool::new(true));
    let killer = tokio::spawn({
        let (redis, running) = (redis.clone(), running.clone());
        async move {
            let mut killed = 0;
            while running.load(Ordering::SeqCst) {
                // sleep: the outage's cadence: connections are cut every 50 ms
                tokio::time::sleep(Duration::from_millis(50)).await;
                let redis = redis.clone();
                killed += tokio::task::spawn_blocking(move || redis.kill_connections())
                    .await
                    .unwrap();
            }
            killed
        }
    });

    let mix = Mix {
        clients: CLIENTS,
        requests_per_client: REQUESTS_PER_CLIENT,
        shared_keys: 20,
        max_amount: 300,
        resend: 0.5,
    };
    let MixOutcome {
        codes: outcomes,
        accepted,
    } = common::api::drive_payments(&channel, &accounts, mix).await;
    running.store(false, Ordering::SeqCst);
    let killed = killer.await.unwrap();
    assert!(
        killed > 0,
        "the test never cut a service connection to Redis"
    );
    eprintln!("cut {killed} service connections to Redis; outcomes {outcomes:?}");

    // The outage was invisible: only business outcomes.
    for code in outcomes.keys() {
        assert!(
            matches!(code, Code::Ok | Code::FailedPrecondition | Code::Aborted),
            "unexpected {code:?}: {outcomes:?}"
        );
    }
    assert!(
        outcomes[&Code::Ok] > CLIENTS * REQUESTS_PER_CLIENT / 2,
        "too few payments went through: {outcomes:?}"
    );

    // No lost payment: every OK is recorded as answered, and one key meant one payment.
    let mut payment_client = PaymentServiceClient::new(channel.clone());
    let mut payment_of_key: HashMap<&str, &str> = HashMap::new();
    for (key, payment_id, amount_minor) in &accepted {
        let first = *payment_of_key.entry(key).or_insert(payment_id);
        assert_eq!(first, payment_id, "key {key} answered with two payments");
        let recorded = payment_client
            .get_payment(GetPaymentRequest {
                payment_id: payment_id.clone(),
            })
            .await
            .unwrap_or_else(|status| panic!("OK payment {payment_id} lost: {status:?}"))
            .into_inner()
            .payment
            .unwrap();
        assert_eq!(
            (&recorded.idempotency_key, recorded.amount_minor),
            (key, *amount_minor)
        );
    }

    // Every payment, once, from the listings; balances follow from them.
    let listed = common::api::assert_balances_follow_payments(&channel, &accounts, DEPOSIT).await;
    assert_eq!(
        listed.len(),
        payment_of_key.len(),
        "payments nobody was told OK for"
    );
    db.assert_ledger_consistent().await;

    // Redis is back: the service reconnected by itself and caches again.
    let request = ProcessRequest {
        idempotency_key: "after".into(),
        payer_account_id: accounts[0].clone(),
        payee_account_id: accounts[1].clone(),
        amount_minor: 1,
        currency: "EUR".into(),
        ..Default::default()
    };
    payment_client.process(request).await.unwrap();
    let cached_key = format!("{}idem:payment:after", redis.prefix);
    assert!(redis.keys().contains(&cached_key), "{:?}", redis.keys());
}

on_both_backends!(killing_redis_mid_run_changes_no_balance_and_loses_no_payment);

/// Redis cut off by a partition degrades the service, it does not take it out: `/readyz` stays
/// 200 with status `degraded` naming Redis, health stays SERVING, payments go on; when Redis
/// is reachable again, readiness says so by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_shows_as_degraded_not_unready() {
    let db = TestDb::new(Backend::Sqlite).await;
    let redis = TestRedis::new();
    let redis_addr = tokio::net::lookup_host(redis.url.trim_start_matches("redis://"))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(redis_addr);
    let mut config = common::app::config(&db.url);
    config.redis_url = format!("redis://127.0.0.1:{}", proxy.port());
    config.redis_key_prefix = redis.prefix.clone();
    config.redis_command_timeout = Duration::from_millis(100);
    config.readiness_check_interval = Duration::from_millis(100);
    let app = RunningApp::start(config).await;
    let (code, body) = app.readyz().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "serving", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "passing", "{body}");
    let channel = app.channel().await;
    let accounts = common::api::funded_accounts(&channel, 2, DEPOSIT).await;

    proxy.blackhole();
    let limit = Duration::from_secs(5);
    let (code, body) = app
        .wait_readyz(limit, |_, body| body["status"] != "serving")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "failing", "{body}");
    assert_eq!(body["checks"]["redis"]["impact"], "degraded", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "passing", "{body}");
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let request = ProcessRequest {
        idempotency_key: "while-degraded".into(),
        payer_account_id: accounts[0].clone(),
        payee_account_id: accounts[1].clone(),
        amount_minor: 1,
        currency: "EUR".into(),
        ..Default::default()
    };
    PaymentServiceClient::new(channel.clone())
        .process(request)
        .await
        .unwrap();

    proxy.heal();
    let (code, body) = app
        .wait_readyz(limit, |_, body| body["status"] == "serving")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "passing", "{body}");
    app.stop().await;
}
