//! Failures a client must be able to act on, over gRPC: a duplicate request while the first
//! is in flight is ABORTED with a short, jittered retry delay, and storage down is UNAVAILABLE with RetryInfo, never INTERNAL,
//! with the service recovering by itself when the database returns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb};
use futures_util::future::BoxFuture;
use keel::error::Details;
use payments::pb::v1::ProcessRequest;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::store::{Idempotent, Payment, PaymentLayer, PaymentRequest, Store, StoreError};
use tokio::sync::Notify;
use tonic::Code;
use tonic::transport::Channel;

async fn serve(store: Arc<dyn Store>) -> PaymentServiceClient<Channel> {
    PaymentServiceClient::new(common::api::serve(store, 0).await)
}

fn pay(key: &str, payer: &str, payee: &str) -> ProcessRequest {
    ProcessRequest {
        idempotency_key: key.into(),
        payer_account_id: payer.into(),
        payee_account_id: payee.into(),
        amount_minor: 10,
        currency: "EUR".into(),
        ..Default::default()
    }
}

/// A store whose payments say when they have started and wait to be let through, so a second
/// request can arrive while one is in flight.
struct GatedPayments {
    inner: Arc<dyn Store>,
    started: Notify,
    release: Notify,
}

impl PaymentLayer for GatedPayments {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    fn process_payment<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        Box::pin(async move {
            self.started.notify_one();
            self.release.notified().await;
            self.inner.process(request).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_key_in_flight_is_aborted_with_a_short_jittered_retry_delay_and_executes_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let payer = db.funded("EUR", 100).await;
    let payee = db.account("EUR").await;
    let gated = Arc::new(GatedPayments {
        inner: db.store.clone(),
        started: Notify::new(),
        release: Notify::new(),
    });
    let client = serve(gated.clone()).await;

    let first = tokio::spawn({
        let (mut client, request) = (client.clone(), pay("same", &payer, &payee));
        async move { client.process(request).await }
    });
    tokio::time::timeout(Duration::from_secs(10), gated.started.notified())
        .await
        .expect("the first payment reached the store");
    // Duplicates while it is in flight: ABORTED, retryable after 50 to 150 ms, not at once.
    let mut delays = Vec::new();
    for _ in 0..20 {
        let status = client
            .clone()
            .process(pay("same", &payer, &payee))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        let details = Details::from_status(&status);
        assert_eq!(details.reason(), Some("CONCURRENT_REQUEST"));
        let delay = details.retry_delay().expect("RetryInfo with a delay");
        assert!(
            (Duration::from_millis(50)..=Duration::from_millis(150)).contains(&delay),
            "retry delay {delay:?}"
        );
        delays.push(delay);
    }
    delays.dedup();
    assert!(delays.len() > 1, "the delay is jittered: {delays:?}");

    gated.release.notify_one();
    let first = first.await.unwrap().unwrap().into_inner();
    assert!(!first.replayed);
    // Retrying after completion replays the one execution.
    let again = tokio::spawn({
        let (mut client, request) = (client.clone(), pay("same", &payer, &payee));
        async move { client.process(request).await }
    });
    gated.release.notify_one();
    let again = again.await.unwrap().unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(db.balance(&payer).await, 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_is_unavailable_with_retry_info_and_recovers() {
    let (proxy, db) = common::proxy::postgres_behind_proxy().await;
    let payer = db.funded("EUR", 100).await;
    let payee = db.account("EUR").await;
    let mut client = serve(db.store.clone()).await;
    client.process(pay("before", &payer, &payee)).await.unwrap();

    proxy.stop().await;
    let status = client
        .process(pay("during", &payer, &payee))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = Details::from_status(&status);
    assert_eq!(details.reason(), Some("STORAGE_UNAVAILABLE"));
    assert_eq!(details.retry_delay(), Some(Duration::from_secs(1)));
    assert!(
        !status.message().contains("connect"),
        "no internals: {}",
        status.message()
    );

    proxy.restart();
    let mut recovered = None;
    for _ in 0..50 {
        match client.process(pay("during", &payer, &payee)).await {
            Ok(response) => {
                recovered = Some(response.into_inner());
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                // sleep: poll interval of a bounded poll on the condition
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        recovered.is_some(),
        "the service did not recover after the database returned"
    );
    assert_eq!(
        db.balance(&payer).await,
        80,
        "exactly the two payments moved money"
    );
}
