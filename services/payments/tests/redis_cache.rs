//! The replay fast path in Redis (`CachedStore`), on the real test Redis and both backends: a
//! replay served from Redis is byte for byte the store's own replay and touches no database;
//! other parameters under a cached key still get IDEMPOTENCY_KEY_REUSED from the store; and a
//! missing, foreign or unreachable cache falls through to the store.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::redis::TestRedis;
use common::{TestDb, on_both_backends};
use futures_util::future::BoxFuture;
use keel::error::Details;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{ProcessRequest, ProcessResponse, RefundRequest};
use payments::redis_conn::Redis;
use payments::service::Payments;
use payments::store::{
    CachedStore, EXPIRY_MARGIN, Idempotent, Payment, PaymentLayer, PaymentRequest, Store,
    StoreError,
};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A store that counts the payments that reached it.
struct Counting {
    inner: Arc<dyn Store>,
    processed: AtomicUsize,
}

impl PaymentLayer for Counting {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    fn process_payment<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        self.processed.fetch_add(1, Ordering::SeqCst);
        self.inner.process(request)
    }
}

/// The service over `CachedStore(Counting(db))`, and the counter.
async fn serve_cached(db: &TestDb, redis: Redis) -> (PaymentServiceClient<Channel>, Arc<Counting>) {
    let counting = Arc::new(Counting {
        inner: db.store.clone(),
        processed: AtomicUsize::new(0),
    });
    let cached = Arc::new(CachedStore::new(counting.clone(), redis, RETENTION));
    let channel = common::api::serve_payments(Payments::new(cached, 0)).await;
    (PaymentServiceClient::new(channel), counting)
}

/// The service straight on the database, as without Redis.
async fn serve_plain(db: &TestDb) -> PaymentServiceClient<Channel> {
    PaymentServiceClient::new(common::api::serve(db.store.clone(), 0).await)
}

fn request(key: &str, payer: &str, payee: &str, amount_minor: i64) -> ProcessRequest {
    ProcessRequest {
        idempotency_key: key.to_owned(),
        payer_account_id: payer.to_owned(),
        payee_account_id: payee.to_owned(),
        amount_minor,
        currency: "USD".to_owned(),
        description: "books".to_owned(),
        // One entry: prost encodes a map in its HashMap's (random) order, so with more, two
        // equal responses could encode differently.
        metadata: HashMap::from([("order".to_owned(), key.to_owned())]),
    }
}

async fn process(
    client: &mut PaymentServiceClient<Channel>,
    request: &ProcessRequest,
) -> ProcessResponse {
    client.process(request.clone()).await.unwrap().into_inner()
}

async fn a_cached_replay_is_the_stores_replay_and_skips_the_database(db: &TestDb) {
    let redis = TestRedis::new();
    let (alice, bob) = (db.funded("USD", 1_000).await, db.account("USD").await);
    let (mut cached, counting) = serve_cached(db, redis.handle()).await;
    let mut plain = serve_plain(db).await;
    let pay = request("k1", &alice, &bob, 300);

    let first = process(&mut cached, &pay).await;
    assert!(!first.replayed);
    assert_eq!(counting.processed.load(Ordering::SeqCst), 1);
    assert_eq!(
        redis.keys(),
        vec![format!("{}idem:payment:k1", redis.prefix)]
    );
    // A refund since does not show in replays, from the store or from the cache.
    plain
        .refund(RefundRequest {
            payment_id: first.payment.as_ref().unwrap().payment_id.clone(),
            amount_minor: 100,
            idempotency_key: "r1".into(),
        })
        .await
        .unwrap();

    let from_cache = process(&mut cached, &pay).await;
    assert_eq!(
        counting.processed.load(Ordering::SeqCst),
        1,
        "the replay reached the database"
    );
    let from_store = process(&mut plain, &pay).await;
    assert!(from_cache.replayed && from_store.replayed);
    assert_eq!(from_cache, from_store);
    assert_eq!(
        from_cache.encode_to_vec(),
        from_store.encode_to_vec(),
        "byte for byte"
    );
    assert_eq!(from_cache.payment, first.payment);
    // Money moved once: 300 out, 100 back.
    assert_eq!(db.balance(&alice).await, 800);
    assert_eq!(db.balance(&bob).await, 200);
    db.assert_ledger_consistent().await;
}

async fn other_parameters_under_a_cached_key_are_refused_by_the_store(db: &TestDb) {
    let redis = TestRedis::new();
    let (alice, bob) = (db.funded("USD", 1_000).await, db.account("USD").await);
    let (mut cached, counting) = serve_cached(db, redis.handle()).await;
    process(&mut cached, &request("k1", &alice, &bob, 300)).await;

    for other in [
        request("k1", &alice, &bob, 301),
        ProcessRequest {
            description: "other".into(),
            ..request("k1", &alice, &bob, 300)
        },
        ProcessRequest {
            metadata: HashMap::new(),
            ..request("k1", &alice, &bob, 300)
        },
        request("k1", &bob, &alice, 300),
    ] {
        let status = cached.process(other.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{other:?}: {status:?}"
        );
        assert_eq!(
            Details::from_status(&status).reason(),
            Some("IDEMPOTENCY_KEY_REUSED")
        );
    }
    assert_eq!(
        counting.processed.load(Ordering::SeqCst),
        5,
        "each reuse went to the store"
    );
    assert_eq!(db.balance(&alice).await, 700);
}

async fn entries_expire_before_the_stores_key(db: &TestDb) {
    let redis = TestRedis::new();
    let (alice, bob) = (db.funded("USD", 1_000).await, db.account("USD").await);
    let (mut cached, _) = serve_cached(db, redis.handle()).await;
    process(&mut cached, &request("k1", &alice, &bob, 300)).await;
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("{}idem:payment:k1", redis.prefix))
        .query(&mut redis.connection())
        .unwrap();
    let most = (RETENTION - EXPIRY_MARGIN).as_millis() as i64;
    assert!(ttl_ms <= most && ttl_ms > most - 10_000, "ttl {ttl_ms} ms");

    // A retention shorter than the margin caches nothing.
    let counting: Arc<dyn Store> = db.store.clone();
    let short = CachedStore::new(counting, redis.handle(), EXPIRY_MARGIN);
    short
        .process(&common::payment("k2", &alice, &bob, 1))
        .await
        .unwrap();
    assert_eq!(redis.keys().len(), 1, "{:?}", redis.keys());
}

async fn a_foreign_entry_falls_through_to_the_store(db: &TestDb) {
    let redis = TestRedis::new();
    let (alice, bob) = (db.funded("USD", 1_000).await, db.account("USD").await);
    let (mut cached, counting) = serve_cached(db, redis.handle()).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}idem:payment:k1", redis.prefix))
        .arg("not json")
        .query(&mut redis.connection())
        .unwrap();
    let first = process(&mut cached, &request("k1", &alice, &bob, 300)).await;
    assert!(!first.replayed, "executed by the store");
    assert_eq!(counting.processed.load(Ordering::SeqCst), 1);
    // ... and the store's answer replaced the garbage.
    let again = process(&mut cached, &request("k1", &alice, &bob, 300)).await;
    assert!(again.replayed);
    assert_eq!(counting.processed.load(Ordering::SeqCst), 1);
    assert_eq!(db.balance(&alice).await, 700);
}

async fn an_unreachable_redis_falls_through_to_the_store(db: &TestDb) {
    let (alice, bob) = (db.funded("USD", 1_000).await, db.account("USD").await);
    let redis = Redis::open("redis://127.0.0.1:1", "keel-test-none:").unwrap();
    let (mut cached, counting) = serve_cached(db, redis).await;
    let pay = request("k1", &alice, &bob, 300);
    let started = std::time::Instant::now();
    let first = process(&mut cached, &pay).await;
    let again = process(&mut cached, &pay).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.payment, again.payment);
    assert_eq!(counting.processed.load(Ordering::SeqCst), 2);
    assert_eq!(db.balance(&alice).await, 700);
}

on_both_backends!(
    a_cached_replay_is_the_stores_replay_and_skips_the_database,
    other_parameters_under_a_cached_key_are_refused_by_the_store,
    entries_expire_before_the_stores_key,
    a_foreign_entry_falls_through_to_the_store,
    an_unreachable_redis_falls_through_to_the_store,
);
