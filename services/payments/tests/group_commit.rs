//! Group commit: payments arriving together are committed in one transaction, and each still
//! gets the outcome it would get alone, in queue order.
//!
//! The tests run on a current-thread runtime on purpose: `join_all` then queues every payment
//! before the committer runs, so they form one batch in the order given, and the expected
//! outcome of each is known.

mod common;

use common::{Backend, TestDb, error_of, payment};
use futures_util::future::join_all;
use payments::store::{Idempotent, Payment, PaymentRequest, StoreConfig, StoreError};

type Outcome = Result<Idempotent<Payment>, StoreError>;

async fn submit_together(db: &TestDb, requests: &[PaymentRequest]) -> Vec<Outcome> {
    join_all(requests.iter().map(|request| db.store.process(request))).await
}

#[tokio::test]
async fn sqlite_each_payment_of_a_batch_gets_its_own_outcome() {
    each_payment_of_a_batch_gets_its_own_outcome(&TestDb::new(Backend::Sqlite).await).await;
}

#[tokio::test]
async fn postgres_each_payment_of_a_batch_gets_its_own_outcome() {
    each_payment_of_a_batch_gets_its_own_outcome(&TestDb::new(Backend::Postgres).await).await;
}

async fn each_payment_of_a_batch_gets_its_own_outcome(db: &TestDb) {
    let payer = db.funded("USD", 100).await;
    let payee = db.account("USD").await;
    let euro = db.account("EUR").await;
    let early_payer = db.funded("USD", 50).await;
    let earlier = db
        .store
        .process(&payment("earlier", &early_payer, &payee, 20))
        .await
        .unwrap()
        .value;

    let mut requests: Vec<PaymentRequest> = (0..10)
        .map(|i| payment(&format!("p{i}"), &payer, &payee, 30))
        .collect();
    requests.push(payment("to-euro", &payer, &euro, 1));
    requests.push(payment("nobody-pays", "no-such-account", &payee, 1));
    requests.push(payment("earlier", &early_payer, &payee, 20));
    requests.push(payment("earlier", &early_payer, &payee, 21));
    requests.push(payment("twice", &early_payer, &payee, 5));
    requests.push(payment("twice", &early_payer, &payee, 5));
    let outcomes = submit_together(db, &requests).await;
    let mut outcomes = outcomes.into_iter();

    // Queue order: the first three of 30 fit in the payer's 100, the other seven do not.
    let mut fresh = Vec::new();
    for i in 0..10 {
        let outcome = outcomes.next().unwrap();
        if i < 3 {
            let paid = outcome.unwrap();
            assert!(!paid.replayed);
            fresh.push(paid.value);
        } else {
            match error_of(outcome) {
                StoreError::InsufficientFunds {
                    account_id,
                    balance_minor,
                    needed_minor,
                } => {
                    assert_eq!(account_id, payer);
                    assert_eq!((balance_minor, needed_minor), (10, 30), "p{i}");
                }
                other => panic!("p{i}: {other:?}"),
            }
        }
    }
    assert!(matches!(
        error_of(outcomes.next().unwrap()),
        StoreError::CurrencyMismatch { account_id, .. } if account_id == euro
    ));
    assert!(matches!(
        error_of(outcomes.next().unwrap()),
        StoreError::AccountNotFound { account_id } if account_id == "no-such-account"
    ));
    let replayed = outcomes.next().unwrap().unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.value, earlier, "a replay is the original record");
    assert!(matches!(
        error_of(outcomes.next().unwrap()),
        StoreError::IdempotencyKeyReused { key } if key == "earlier"
    ));
    let first = outcomes.next().unwrap().unwrap();
    let second = outcomes.next().unwrap().unwrap();
    assert!(
        !first.replayed && second.replayed,
        "a key twice in the queue executes once"
    );
    assert_eq!(first.value, second.value);

    // One transaction: the payments committed together carry its one timestamp.
    assert!(
        fresh
            .iter()
            .all(|paid| paid.created_at == first.value.created_at),
        "the payments queued together were not committed together"
    );

    assert_eq!(db.balance(&payer).await, 10);
    assert_eq!(db.balance(&payee).await, 20 + 90 + 5);
    assert_eq!(db.balance(&early_payer).await, 50 - 20 - 5);
    assert_eq!(db.balance(&euro).await, 0);
    assert_eq!(db.assert_ledger_consistent().await, 100 + 50);

    // A refused payment left no key behind: it can be made once the money is there.
    db.store.deposit(&payer, 20, "top-up", None).await.unwrap();
    let retried = db.store.process(&requests[3]).await.unwrap();
    assert!(!retried.replayed);
    assert_eq!(db.balance(&payer).await, 0);
}

#[tokio::test]
async fn sqlite_awkward_text_survives_a_batch_exactly() {
    awkward_text_survives_a_batch_exactly(&TestDb::new(Backend::Sqlite).await).await;
}

#[tokio::test]
async fn postgres_awkward_text_survives_a_batch_exactly() {
    awkward_text_survives_a_batch_exactly(&TestDb::new(Backend::Postgres).await).await;
}

/// A batch's rows travel to the database as arrays (PostgreSQL) or one JSON document
/// (SQLite): text that quoting, escaping or a JSON path could mangle must come back as sent,
/// from the batch's answer and from a later read.
async fn awkward_text_survives_a_batch_exactly(db: &TestDb) {
    let payer = db.funded("USD", 100).await;
    let payee = db.account("USD").await;
    let awkward = [
        "quote \" and 'apostrophe'",
        "back\\slash \\u0041 and $[0] and ->> 0",
        "new\nline\ttab\r",
        "é, 支付, 🦀, U+2028 \u{2028} here",
        "{\"looks\": [\"like\", \"json\"]}",
        "",
    ];
    let requests: Vec<PaymentRequest> = awkward
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut request = payment(&format!("{text}#{i}"), &payer, &payee, 1);
            request.description = (*text).to_owned();
            request.metadata = [(format!("{text}!"), (*text).to_owned())].into();
            request
        })
        .collect();
    let outcomes = submit_together(db, &requests).await;
    for (request, outcome) in requests.iter().zip(outcomes) {
        let paid = outcome.unwrap().value;
        let read = db.store.get_payment(&paid.payment_id).await.unwrap();
        for payment in [&paid, &read] {
            assert_eq!(payment.idempotency_key, request.idempotency_key);
            assert_eq!(payment.description, request.description);
            assert_eq!(payment.metadata, request.metadata);
        }
    }
    // Replays find every key again, which the batch looks up as it wrote them.
    for outcome in submit_together(db, &requests).await {
        assert!(outcome.unwrap().replayed);
    }
    assert_eq!(db.balance(&payee).await, awkward.len() as i64);
    db.assert_ledger_consistent().await;
}

/// PostgreSQL refuses NUL in text: the statement inserting the batch fails. The batch is then
/// processed one payment per transaction, so only the payment at fault fails.
#[tokio::test]
async fn postgres_an_internal_error_fails_only_its_own_payment() {
    let db = TestDb::new(Backend::Postgres).await;
    let payer = db.funded("USD", 100).await;
    let payee = db.account("USD").await;
    let mut requests: Vec<PaymentRequest> = (0..5)
        .map(|i| payment(&format!("k{i}"), &payer, &payee, 10))
        .collect();
    requests[2].description = "nul \0 inside".to_owned();
    let outcomes = submit_together(&db, &requests).await;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        if i == 2 {
            assert!(matches!(error_of(outcome), StoreError::Internal(_)), "k2");
        } else {
            assert!(!outcome.unwrap().replayed, "k{i}");
        }
    }
    assert_eq!(db.balance(&payer).await, 60);
    assert_eq!(db.balance(&payee).await, 40);
    db.assert_ledger_consistent().await;
}

#[tokio::test]
async fn postgres_with_group_commit_off_payments_commit_one_by_one() {
    let db = TestDb::with_config(Backend::Postgres, StoreConfig::default().batch_size(1)).await;
    let payer = db.funded("USD", 100).await;
    let payee = db.account("USD").await;
    let requests: Vec<PaymentRequest> = (0..4)
        .map(|i| payment(&format!("k{i}"), &payer, &payee, 10))
        .collect();
    let outcomes = submit_together(&db, &requests).await;
    let created: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap().value.created_at)
        .collect();
    assert!(
        created.windows(2).all(|pair| pair[0] != pair[1]),
        "one transaction per payment, each with its own time: {created:?}"
    );
    assert_eq!(db.balance(&payer).await, 60);
    db.assert_ledger_consistent().await;
}
