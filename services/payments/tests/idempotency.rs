//! Idempotency under races and over time: concurrent requests with one key execute once, and
//! keys are forgotten only after the retention period.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb, error_of, on_both_backends, payment};
use payments::store::{StoreConfig, StoreError};

on_both_backends!(
    concurrent_requests_with_one_key_execute_once,
    concurrent_requests_with_one_key_and_different_parameters,
    concurrent_deposits_with_one_key_execute_once,
    keys_younger_than_the_retention_are_never_purged,
);

const RACERS: usize = 16;

async fn concurrent_requests_with_one_key_execute_once(db: &TestDb) {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let request = Arc::new(payment("race", &payer, &payee, 100));
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let (store, request) = (db.store.clone(), request.clone());
        tasks.push(tokio::spawn(async move { store.process(&request).await }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }

    let fresh = results.iter().filter(|result| !result.replayed).count();
    assert_eq!(fresh, 1, "exactly one request executed");
    assert!(
        results
            .iter()
            .all(|result| result.value == results[0].value),
        "every racer got the same payment"
    );
    assert_eq!(db.balance(&payer).await, 900);
    assert_eq!(db.i64("SELECT COUNT(*) FROM payments").await, 1);
    db.assert_ledger_consistent().await;
}

async fn concurrent_requests_with_one_key_and_different_parameters(db: &TestDb) {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let store = db.store.clone();
        let request = payment("race", &payer, &payee, if i % 2 == 0 { 10 } else { 20 });
        tasks.push(tokio::spawn(async move {
            (request.amount_minor, store.process(&request).await)
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }

    let winners: Vec<_> = outcomes
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .filter(|result| !result.replayed)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one request executed");
    let winner = &winners[0].value;
    for (amount, result) in &outcomes {
        match result {
            Ok(result) => {
                assert_eq!(
                    *amount, winner.amount_minor,
                    "only the winner's parameters succeed"
                );
                assert_eq!(&result.value, winner);
            }
            Err(StoreError::IdempotencyKeyReused { key }) => {
                assert_eq!(key, "race");
                assert_ne!(
                    *amount, winner.amount_minor,
                    "the winner's parameters replay"
                );
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(db.balance(&payer).await, 1_000 - winner.amount_minor);
    db.assert_ledger_consistent().await;
}

async fn concurrent_deposits_with_one_key_execute_once(db: &TestDb) {
    let account = db.account("USD").await;
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let (store, account) = (db.store.clone(), account.clone());
        tasks.push(tokio::spawn(async move {
            store.deposit(&account, 100, "race", None).await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let result = task.await.unwrap().unwrap();
        fresh += usize::from(!result.replayed);
        assert_eq!(result.value.balance_minor, 100);
    }
    assert_eq!(fresh, 1);
    assert_eq!(db.balance(&account).await, 100);
    db.assert_ledger_consistent().await;
}

async fn keys_younger_than_the_retention_are_never_purged(db: &TestDb) {
    // The default retention (24 h) protects a key however eager the caller.
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let request = payment("kept", &payer, &payee, 100);
    let original = db.store.process(&request).await.unwrap().value;
    assert_eq!(
        db.store
            .purge_idempotency_keys(Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    let replay = db.store.process(&request).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value, original);
}

/// With a zero retention (tests only), purging forgets keys older than asked, and a request
/// reusing a forgotten key executes anew.
async fn purge_forgets_old_keys(backend: Backend) {
    let db = TestDb::with_config(
        backend,
        StoreConfig::default().idempotency_retention(Duration::ZERO),
    )
    .await;
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let request = payment("old", &payer, &payee, 100);
    let original = db.store.process(&request).await.unwrap().value;

    assert_eq!(
        db.store
            .purge_idempotency_keys(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "nothing is an hour old"
    );
    // sleep: time passing is the behaviour: the keys become older than the 1 ms purge age
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = db
        .store
        .purge_idempotency_keys(Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(purged, 2, "the funding deposit's key and the payment's");

    let again = db.store.process(&request).await.unwrap();
    assert!(!again.replayed, "a forgotten key is a new request");
    assert_ne!(again.value.payment_id, original.payment_id);
    assert_eq!(db.balance(&payer).await, 800);
    let error = error_of(db.store.process(&payment("old", &payer, &payee, 5)).await);
    assert!(
        matches!(error, StoreError::IdempotencyKeyReused { .. }),
        "{error:?}"
    );
    db.assert_ledger_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purge_forgets_old_keys() {
    purge_forgets_old_keys(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_purge_forgets_old_keys() {
    purge_forgets_old_keys(Backend::Postgres).await;
}
