//! Storage that is down, locked or closed fails with `StoreError::Unavailable` (never
//! `Internal`), moves no money, and the store recovers by itself when the database returns.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDb, error_of, on_both_backends, payment};
use payments::store::{self, StoreConfig, StoreError};
use sqlx::Connection;

on_both_backends!(ping_answers, closed_store_is_unavailable);

async fn ping_answers(db: &TestDb) {
    db.store.ping().await.unwrap();
    assert_eq!(
        db.store.backend(),
        format!("{:?}", db.backend).to_lowercase()
    );
}

async fn closed_store_is_unavailable(db: &TestDb) {
    let account = db.funded("USD", 100).await;
    db.store.close().await;
    let error = error_of(db.store.get_account(&account).await);
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let error = error_of(db.store.deposit(&account, 1, "after-close", None).await);
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn unsupported_urls_are_config_errors() {
    for url in [
        "mysql://user:secret@host/db",
        "sqlite::memory:",
        "ledger.db",
    ] {
        let error = error_of(store::open(url).await);
        assert!(matches!(&error, StoreError::Config(_)), "{url}: {error:?}");
        assert!(
            !error.to_string().contains("secret"),
            "the password stays out: {error}"
        );
    }
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable_at_open() {
    // Port 1 on loopback: nothing listens, connections are refused.
    let config = StoreConfig::default().acquire_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let error =
        error_of(store::open_with("postgres://postgres@127.0.0.1:1/payments", config).await);
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_and_recovers_by_itself() {
    let (proxy, db) = common::proxy::postgres_behind_proxy().await;
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    db.store
        .process(&payment("before", &payer, &payee, 100))
        .await
        .unwrap();

    proxy.stop().await;
    let request = payment("during", &payer, &payee, 100);
    let error = error_of(db.store.process(&request).await);
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "write: {error:?}"
    );
    let error = error_of(db.store.get_account(&payer).await);
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "read: {error:?}"
    );
    let error = error_of(db.store.ping().await);
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "ping: {error:?}"
    );
    assert_eq!(
        db.i64("SELECT COUNT(*) FROM payments").await,
        1,
        "nothing moved during the outage"
    );

    proxy.restart();
    db.store.ping().await.unwrap();
    let retried = db.store.process(&request).await.unwrap();
    assert!(
        !retried.replayed,
        "the request failed before, so it executes now"
    );
    assert_eq!(db.balance(&payer).await, 800);
    db.assert_ledger_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_is_unavailable() {
    let config = StoreConfig::default().statement_timeout(Duration::from_millis(200));
    let db = TestDb::with_config(Backend::Sqlite, config).await;
    let account = db.funded("USD", 100).await;

    // Another process takes the database's write lock and keeps it.
    let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let error = error_of(db.store.deposit(&account, 50, "while-locked", None).await);
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert_eq!(
        db.balance(&account).await,
        100,
        "reads go on meanwhile (WAL)"
    );

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let deposit = db
        .store
        .deposit(&account, 50, "while-locked", None)
        .await
        .unwrap();
    assert!(!deposit.replayed);
    assert_eq!(deposit.value.balance_minor, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stuck_behind_a_lock_is_ended_by_the_database() {
    let config = StoreConfig::default().statement_timeout(Duration::from_millis(200));
    let db = TestDb::with_config(Backend::Postgres, config).await;
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;

    // Another client locks the payer's row and keeps it.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE")
        .bind(&payer)
        .execute(&mut other)
        .await
        .unwrap();

    let started = Instant::now();
    let error = error_of(
        db.store
            .process(&payment("locked", &payer, &payee, 100))
            .await,
    );
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        format!("{error:?}").contains("57014"),
        "PostgreSQL's statement_timeout ended it: {error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up after {:?}",
        started.elapsed()
    );

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let paid = db
        .store
        .process(&payment("locked", &payer, &payee, 100))
        .await
        .unwrap();
    assert!(!paid.replayed, "the timed-out attempt took no effect");
    assert_eq!(db.balance(&payer).await, 900);
}
