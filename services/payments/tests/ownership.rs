//! Account ownership over real gRPC, on both backends and through the Redis replay cache:
//! only an account's owner moves money out of it or reads it, anonymous callers keep the
//! accounts they created (the README's plaintext flow), and idempotency keys are per caller.
//!
//! The server is Keel's, with the payments services behind a test-only layer that puts the
//! identity a test header names into the request's extensions, where the TLS layer
//! (`PeerIdentity`) and token verification (`Claims`) put theirs.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::redis::TestRedis;
use common::{TestDb, on_both_backends};
use keel::error::Details;
use keel_core::identity::{Claims, PeerIdentity};
use payments::pb::v1::account_service_client::AccountServiceClient;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{
    CreateAccountRequest, DepositRequest, DepositResponse, GetAccountRequest, GetPaymentRequest,
    ListPaymentsRequest, ProcessBatchRequest, ProcessRequest, ProcessResponse, RefundRequest,
    process_result,
};
use payments::service::Payments;
use payments::store::{CachedStore, Store, StoreConfig};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The header naming a token subject, as if the caller had presented a verified token.
const SUBJECT_HEADER: &str = "x-test-subject";
/// The header naming a certificate's SPIFFE ID, as if the caller had presented it over mTLS.
const PEER_HEADER: &str = "x-test-spiffe-id";

/// Who a test request comes from.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// No token, no certificate.
    Anonymous,
    /// A verified token with this subject.
    Token(&'static str),
    /// A client certificate with this SPIFFE ID.
    Peer(&'static str),
}

const ALICE: Caller = Caller::Token("alice");
const BOB: Caller = Caller::Token("bob");
const CAROL: Caller = Caller::Peer("spiffe://keel.test/carol");

/// `message` as a request from `caller`.
fn from<T>(caller: Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let (name, value) = match caller {
        Caller::Anonymous => return request,
        Caller::Token(subject) => (SUBJECT_HEADER, subject),
        Caller::Peer(spiffe_id) => (PEER_HEADER, spiffe_id),
    };
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

/// A service behind the test identity layer: the headers above become the identities the
/// TLS and token layers would put in the extensions.
#[derive(Clone)]
struct WithIdentity<S>(S);

impl<S: NamedService> NamedService for WithIdentity<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for WithIdentity<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|value: &http::HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        let (subject, spiffe_id) = (header(SUBJECT_HEADER), header(PEER_HEADER));
        if let Some(subject) = subject {
            request.extensions_mut().insert(Arc::new(Claims::new(
                subject,
                "https://issuer.keel.test".into(),
                BTreeMap::new(),
            )));
        }
        if let Some(spiffe_id) = spiffe_id {
            let peer = PeerIdentity::new(Some(spiffe_id), Vec::new(), "CN=test".into());
            request.extensions_mut().insert(peer.shared());
        }
        self.0.call(request)
    }
}

/// Clients of both services on a Keel server serving `service` behind the identity layer.
struct Api {
    accounts: AccountServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
}

impl Api {
    async fn start(service: Payments) -> Self {
        let mut config = keel::config::ServerConfig::default();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        let server = keel::Server::builder(config)
            .add_service(WithIdentity(service.account_service()))
            .add_service(WithIdentity(service.payment_service()))
            .bind()
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        tokio::spawn(server.serve(std::future::pending()));
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            accounts: AccountServiceClient::new(channel.clone()),
            payments: PaymentServiceClient::new(channel),
        }
    }

    async fn open(&mut self, caller: Caller, account_id: &str) {
        let request = CreateAccountRequest {
            account_id: account_id.into(),
            currency: "EUR".into(),
        };
        self.accounts
            .create_account(from(caller, request))
            .await
            .unwrap();
    }

    async fn deposit(
        &mut self,
        caller: Caller,
        account_id: &str,
        amount_minor: i64,
        key: &str,
    ) -> DepositResponse {
        let request = DepositRequest {
            account_id: account_id.into(),
            amount_minor,
            idempotency_key: key.into(),
        };
        self.accounts
            .deposit(from(caller, request))
            .await
            .unwrap()
            .into_inner()
    }

    async fn pay(
        &mut self,
        caller: Caller,
        key: &str,
        payer: &str,
        payee: &str,
        amount_minor: i64,
    ) -> Result<ProcessResponse, Status> {
        self.payments
            .process(from(caller, payment(key, payer, payee, amount_minor)))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn payment(key: &str, payer: &str, payee: &str, amount_minor: i64) -> ProcessRequest {
    ProcessRequest {
        idempotency_key: key.into(),
        payer_account_id: payer.into(),
        payee_account_id: payee.into(),
        amount_minor,
        currency: "EUR".into(),
        ..Default::default()
    }
}

/// Checks that `status` is the refusal to let a non-owner touch `account_id`, and that it
/// does not tell whose the account is.
#[track_caller]
fn assert_not_owned(status: &Status, account_id: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let details = Details::from_status(status);
    assert_eq!(details.reason(), Some("ACCOUNT_NOT_OWNED"), "{status:?}");
    assert_eq!(details.domain(), Some(payments::service::DOMAIN));
    assert_eq!(
        details.metadata().get("account_id").map(String::as_str),
        Some(account_id)
    );
    assert_eq!(details.resource().unwrap().owner, "", "no owner named");
    let shown = format!("{} {:?}", status.message(), details.metadata());
    for name in ["alice", "bob", "carol"] {
        assert!(!shown.contains(name), "names an owner: {shown}");
    }
}

/// Opens Alice's account `a` (1,000 in it) and Bob's `b` (100), both through the API.
async fn alice_and_bob(api: &mut Api) {
    api.open(ALICE, "a").await;
    api.open(BOB, "b").await;
    api.deposit(ALICE, "a", 1_000, "fund-a").await;
    api.deposit(BOB, "b", 100, "fund-b").await;
}

async fn only_the_owner_debits_an_account(db: &TestDb) {
    let mut api = Api::start(Payments::new(db.store.clone(), 0)).await;
    alice_and_bob(&mut api).await;

    // Bob paying out of Alice's account, under any key, by any route: refused, nothing moves.
    let status = api.pay(BOB, "steal-1", "a", "b", 500).await.unwrap_err();
    assert_not_owned(&status, "a");
    // Refused before anything about the payer: not even whether it holds enough.
    let status = api
        .pay(BOB, "steal-2", "a", "b", 1_000_000)
        .await
        .unwrap_err();
    assert_not_owned(&status, "a");
    let batch = futures_util::stream::iter([ProcessBatchRequest {
        request: Some(payment("steal-3", "a", "b", 500)),
    }]);
    let summary = api
        .payments
        .process_batch(from(BOB, batch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.accepted, summary.rejected), (0, 1));
    match &summary.results[0].outcome {
        Some(process_result::Outcome::Error(error)) => {
            assert_eq!(error.code, Code::PermissionDenied as i32, "{error:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Nor may an anonymous caller, or a workload with a certificate.
    assert_not_owned(
        &api.pay(Caller::Anonymous, "anon", "a", "b", 1)
            .await
            .unwrap_err(),
        "a",
    );
    assert_not_owned(
        &api.pay(CAROL, "carol", "a", "b", 1).await.unwrap_err(),
        "a",
    );
    assert_eq!((db.balance("a").await, db.balance("b").await), (1_000, 100));
    assert_eq!(db.i64("SELECT COUNT(*) FROM payments").await, 0);
    assert_eq!(
        db.i64("SELECT COUNT(*) FROM idempotency_keys WHERE scope = 'payment'")
            .await,
        0,
        "a refused payment leaves no key behind"
    );

    // Alice may; money may go into Bob's account without him.
    let paid = api.pay(ALICE, "pay-1", "a", "b", 300).await.unwrap();
    assert!(!paid.replayed);
    assert_eq!((db.balance("a").await, db.balance("b").await), (700, 400));
    // And Bob may pay from his own.
    api.pay(BOB, "pay-2", "b", "a", 50).await.unwrap();
    assert_eq!((db.balance("a").await, db.balance("b").await), (750, 350));

    // The owner is what the identity says: a certificate's SPIFFE ID works as a token's subject.
    api.open(CAROL, "c").await;
    api.deposit(ALICE, "c", 10, "gift").await;
    api.pay(CAROL, "carol-pays", "c", "a", 10).await.unwrap();
    assert_not_owned(&api.pay(ALICE, "x", "c", "a", 1).await.unwrap_err(), "c");
    db.assert_ledger_consistent().await;
}

async fn anonymous_callers_keep_their_own_accounts(db: &TestDb) {
    let mut api = Api::start(Payments::new(db.store.clone(), 0)).await;
    alice_and_bob(&mut api).await;

    // The README's flow, with no identity at all, works as it always did.
    api.open(Caller::Anonymous, "anon-1").await;
    api.open(Caller::Anonymous, "anon-2").await;
    let deposited = api.deposit(Caller::Anonymous, "anon-1", 500, "dep-1").await;
    assert_eq!(deposited.account.unwrap().balance_minor, 500);
    api.pay(Caller::Anonymous, "pay-1", "anon-1", "anon-2", 200)
        .await
        .unwrap();
    let replay = api
        .pay(Caller::Anonymous, "pay-1", "anon-1", "anon-2", 200)
        .await
        .unwrap();
    assert!(replay.replayed);
    // Into an owned account too: crediting needs no ownership.
    api.pay(Caller::Anonymous, "pay-2", "anon-1", "a", 100)
        .await
        .unwrap();
    assert_eq!(
        (db.balance("anon-1").await, db.balance("anon-2").await),
        (200, 200)
    );
    assert_eq!(db.balance("a").await, 1_100);

    // An identified caller may not drain an account nobody owns: failing closed.
    assert_not_owned(
        &api.pay(ALICE, "take", "anon-1", "a", 1).await.unwrap_err(),
        "anon-1",
    );
    let status = api
        .accounts
        .get_account(from(
            ALICE,
            GetAccountRequest {
                account_id: "anon-1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_not_owned(&status, "anon-1");
    assert_eq!(db.balance("anon-1").await, 200);
    let account = api
        .accounts
        .get_account(from(
            Caller::Anonymous,
            GetAccountRequest {
                account_id: "anon-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!((account.balance_minor, account.owner.as_str()), (200, ""));
    db.assert_ledger_consistent().await;
}

async fn only_the_owner_reads_an_account(db: &TestDb) {
    let mut api = Api::start(Payments::new(db.store.clone(), 0)).await;
    alice_and_bob(&mut api).await;
    api.open(CAROL, "c").await;
    let paid = api.pay(ALICE, "pay", "a", "b", 300).await.unwrap();
    let payment_id = paid.payment.unwrap().payment_id;

    let get = |account_id: &str| GetAccountRequest {
        account_id: account_id.into(),
    };
    let mine = api
        .accounts
        .get_account(from(ALICE, get("a")))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!((mine.balance_minor, mine.owner.as_str()), (700, "alice"));
    for caller in [BOB, CAROL, Caller::Anonymous] {
        let status = api
            .accounts
            .get_account(from(caller, get("a")))
            .await
            .unwrap_err();
        assert_not_owned(&status, "a");
        let list = ListPaymentsRequest {
            account_id: "a".into(),
            ..Default::default()
        };
        let status = api
            .payments
            .list_payments(from(caller, list))
            .await
            .unwrap_err();
        assert_not_owned(&status, "a");
    }
    let list = ListPaymentsRequest {
        account_id: "a".into(),
        ..Default::default()
    };
    let page = api
        .payments
        .list_payments(from(ALICE, list))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.payments.len(), 1);

    // A payment is its payer's and its payee's to read, nobody else's.
    let get_payment = || GetPaymentRequest {
        payment_id: payment_id.clone(),
    };
    for caller in [ALICE, BOB] {
        api.payments
            .get_payment(from(caller, get_payment()))
            .await
            .unwrap();
    }
    let status = api
        .payments
        .get_payment(from(CAROL, get_payment()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        Details::from_status(&status).reason(),
        Some("PAYMENT_NOT_OWNED")
    );

    // Anyone may deposit into Alice's account, but only Alice sees it in the answer.
    let to_alice = api.deposit(BOB, "a", 5, "tip").await;
    assert!(to_alice.account.is_none(), "{to_alice:?}");
    let own = api.deposit(ALICE, "a", 5, "top-up").await;
    assert_eq!(own.account.unwrap().balance_minor, 710);
}

async fn refunds_come_from_the_payee_owner(db: &TestDb) {
    let mut api = Api::start(Payments::new(db.store.clone(), 0)).await;
    alice_and_bob(&mut api).await;
    let paid = api.pay(ALICE, "pay", "a", "b", 300).await.unwrap();
    let payment_id = paid.payment.unwrap().payment_id;
    let refund = |key: &str, amount_minor| RefundRequest {
        payment_id: payment_id.clone(),
        amount_minor,
        idempotency_key: key.into(),
    };

    // A refund takes money out of the payee's account: the payer may not start one.
    for (caller, key) in [(ALICE, "r-alice"), (Caller::Anonymous, "r-anon")] {
        let status = api
            .payments
            .refund(from(caller, refund(key, 100)))
            .await
            .unwrap_err();
        assert_not_owned(&status, "b");
    }
    // Not even to learn how much is refundable.
    let status = api
        .payments
        .refund(from(ALICE, refund("r-too-much", 1_000)))
        .await
        .unwrap_err();
    assert_not_owned(&status, "b");
    assert_eq!((db.balance("a").await, db.balance("b").await), (700, 400));

    let refunded = api
        .payments
        .refund(from(BOB, refund("r-bob", 100)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refunded.payment.unwrap().refunded_minor, 100);
    assert_eq!((db.balance("a").await, db.balance("b").await), (800, 300));
    db.assert_ledger_consistent().await;
}

/// Another caller's request under a key Alice used executes as its own: it neither replays
/// Alice's result nor is refused for reusing her key.
async fn idempotency_keys_are_per_caller(db: &TestDb) {
    let mut api = Api::start(Payments::new(db.store.clone(), 0)).await;
    alice_and_bob(&mut api).await;
    let original = api.pay(ALICE, "k", "a", "b", 300).await.unwrap();
    let original_id = original.payment.as_ref().unwrap().payment_id.clone();

    // Bob sends Alice's very request: not her payment back, but a debit he may not make.
    let status = api.pay(BOB, "k", "a", "b", 300).await.unwrap_err();
    assert_not_owned(&status, "a");
    // Under the same key, from his own account: a payment of his own, not a reused key.
    let bobs = api.pay(BOB, "k", "b", "a", 30).await.unwrap();
    assert!(!bobs.replayed);
    assert_ne!(bobs.payment.unwrap().payment_id, original_id);
    // Alice's key still replays hers.
    let replay = api.pay(ALICE, "k", "a", "b", 300).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.payment, original.payment);
    assert_eq!((db.balance("a").await, db.balance("b").await), (730, 370));

    // Deposits too: Bob's deposit under Alice's key is a deposit of its own.
    let first = api.deposit(ALICE, "a", 10, "d").await;
    assert!(!first.replayed);
    let again = api.deposit(BOB, "a", 10, "d").await;
    assert!(!again.replayed, "another caller's key is not a replay");
    assert!(
        again.account.is_none(),
        "and shows Bob nothing of Alice's account"
    );
    assert_eq!(db.balance("a").await, 750);
    db.assert_ledger_consistent().await;
}

/// The same rules when each payment has a transaction of its own (no group commit).
async fn single_payment_transactions_check_ownership_too(db: &TestDb) {
    let store = payments::store::open_with(&db.url, StoreConfig::default().batch_size(1))
        .await
        .unwrap();
    let mut api = Api::start(Payments::new(store.clone(), 0)).await;
    alice_and_bob(&mut api).await;
    let status = api.pay(BOB, "steal", "a", "b", 10).await.unwrap_err();
    assert_not_owned(&status, "a");
    api.pay(ALICE, "pay", "a", "b", 10).await.unwrap();
    assert_eq!((db.balance("a").await, db.balance("b").await), (990, 110));
    db.assert_ledger_consistent().await;
    store.close().await;
}

/// A caller who may not debit an account spends nothing of its owner's rate limit.
async fn a_refused_caller_spends_nothing_of_the_owners_rate_limit(db: &TestDb) {
    let mut api = Api::start(Payments::new(db.store.clone(), 1)).await;
    alice_and_bob(&mut api).await;
    for n in 0..3 {
        let status = api
            .pay(BOB, &format!("steal-{n}"), "a", "b", 10)
            .await
            .unwrap_err();
        assert_not_owned(&status, "a");
    }
    // One payment a second for payer `a`, and Bob's attempts did not use it up.
    api.pay(ALICE, "pay", "a", "b", 10).await.unwrap();
    assert_eq!((db.balance("a").await, db.balance("b").await), (990, 110));
}

/// Through the Redis replay cache: a replay from Redis is only ever the same caller's.
async fn cached_replays_are_per_caller(db: &TestDb) {
    let redis = TestRedis::new();
    let cached: Arc<dyn Store> = Arc::new(CachedStore::new(
        db.store.clone(),
        redis.handle(),
        Duration::from_secs(24 * 3600),
    ));
    let mut api = Api::start(Payments::new(cached, 0)).await;
    alice_and_bob(&mut api).await;
    api.open(Caller::Anonymous, "anon").await;
    let original = api.pay(ALICE, "k", "a", "b", 300).await.unwrap();
    assert_eq!(redis.keys().len(), 1, "{:?}", redis.keys());

    let status = api.pay(BOB, "k", "a", "b", 300).await.unwrap_err();
    assert_not_owned(&status, "a");
    let status = api
        .pay(Caller::Anonymous, "k", "a", "b", 300)
        .await
        .unwrap_err();
    assert_not_owned(&status, "a");
    let replay = api.pay(ALICE, "k", "a", "b", 300).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.payment, original.payment);

    // Bob's own payment under the key gets an entry of its own, beside Alice's.
    api.pay(BOB, "k", "b", "anon", 30).await.unwrap();
    let bobs = api.pay(BOB, "k", "b", "anon", 30).await.unwrap();
    assert!(bobs.replayed);
    assert_eq!(redis.keys().len(), 2, "{:?}", redis.keys());
    assert_eq!((db.balance("a").await, db.balance("b").await), (700, 370));
    db.assert_ledger_consistent().await;
}

on_both_backends!(
    only_the_owner_debits_an_account,
    anonymous_callers_keep_their_own_accounts,
    only_the_owner_reads_an_account,
    refunds_come_from_the_payee_owner,
    idempotency_keys_are_per_caller,
    single_payment_transactions_check_ownership_too,
    a_refused_caller_spends_nothing_of_the_owners_rate_limit,
    cached_replays_are_per_caller,
);

/// Rows written before accounts had owners: their accounts are unowned (anonymous callers
/// keep using them, identified ones cannot drain them) and their keys are the anonymous
/// caller's.
async fn rows_from_before_ownership(backend: common::Backend) {
    let db = TestDb::upgraded(
        backend,
        1,
        &[
            "INSERT INTO accounts (account_id, currency, balance_minor, created_at_us) \
             VALUES ('old-1', 'EUR', 0, 1), ('old-2', 'EUR', 0, 1)",
            "INSERT INTO idempotency_keys \
             (scope, idempotency_key, fingerprint, resource_id, created_at_us) \
             VALUES ('payment', 'old-key', 'recorded-before', 'pay_old', 1)",
        ],
    )
    .await;
    let mut api = Api::start(Payments::new(db.store.clone(), 0)).await;
    api.deposit(Caller::Anonymous, "old-1", 100, "dep").await;
    api.pay(Caller::Anonymous, "pay", "old-1", "old-2", 40)
        .await
        .unwrap();
    assert_not_owned(
        &api.pay(ALICE, "take", "old-1", "old-2", 1)
            .await
            .unwrap_err(),
        "old-1",
    );
    // The old key is the anonymous caller's: found (and used with other parameters)...
    let status = api
        .pay(Caller::Anonymous, "old-key", "old-1", "old-2", 1)
        .await
        .unwrap_err();
    assert_eq!(
        Details::from_status(&status).reason(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    // ...while Alice's request under the same key is her own.
    api.open(ALICE, "a").await;
    api.deposit(ALICE, "a", 10, "fund").await;
    api.pay(ALICE, "old-key", "a", "old-2", 1).await.unwrap();
    assert_eq!(
        (db.balance("old-1").await, db.balance("old-2").await),
        (60, 41)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_from_before_ownership() {
    rows_from_before_ownership(common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_from_before_ownership() {
    rows_from_before_ownership(common::Backend::Postgres).await;
}
