//! Accounts and deposits: opening, reading, crediting, and every error they produce.

mod common;

use common::{TestDb, error_of, on_both_backends};
use payments::store::StoreError;

on_both_backends!(
    create_account_with_or_without_an_id,
    duplicate_account_is_account_exists,
    missing_account_is_account_not_found,
    deposit_credits_through_balanced_entries,
    deposit_replay_returns_the_original_answer,
    deposit_key_reused_with_other_parameters,
    deposit_to_missing_account_consumes_no_key,
    deposit_past_the_largest_balance_is_refused,
);

async fn create_account_with_or_without_an_id(db: &TestDb) {
    let named = db
        .store
        .create_account(Some("alice"), "USD", None)
        .await
        .unwrap();
    assert_eq!(named.account_id, "alice");
    assert_eq!(named.currency, "USD");
    assert_eq!(named.balance_minor, 0);
    assert_eq!(
        db.store.get_account("alice").await.unwrap(),
        named,
        "reads back identical"
    );

    let generated = db.store.create_account(None, "EUR", None).await.unwrap();
    assert!(
        generated.account_id.starts_with("acct_"),
        "{}",
        generated.account_id
    );
    let other = db.store.create_account(None, "EUR", None).await.unwrap();
    assert_ne!(generated.account_id, other.account_id);
    assert_eq!(
        db.store.get_account(&generated.account_id).await.unwrap(),
        generated
    );
}

async fn duplicate_account_is_account_exists(db: &TestDb) {
    let first = db
        .store
        .create_account(Some("bob"), "USD", None)
        .await
        .unwrap();
    let error = error_of(db.store.create_account(Some("bob"), "EUR", None).await);
    assert!(
        matches!(&error, StoreError::AccountExists { account_id } if account_id == "bob"),
        "{error:?}"
    );
    assert_eq!(
        db.store.get_account("bob").await.unwrap(),
        first,
        "the first one stays"
    );
}

async fn missing_account_is_account_not_found(db: &TestDb) {
    let error = error_of(db.store.get_account("nobody").await);
    assert!(
        matches!(&error, StoreError::AccountNotFound { account_id } if account_id == "nobody"),
        "{error:?}"
    );
}

async fn deposit_credits_through_balanced_entries(db: &TestDb) {
    let account = db.account("USD").await;
    let first = db.store.deposit(&account, 500, "d1", None).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.value.balance_minor, 500);
    assert_eq!(first.value.account_id, account);
    let second = db.store.deposit(&account, 250, "d2", None).await.unwrap();
    assert_eq!(second.value.balance_minor, 750);
    assert_eq!(db.balance(&account).await, 750);

    let entries = db.i64("SELECT COUNT(*) FROM ledger_entries").await;
    assert_eq!(entries, 4, "a credit and a world debit per deposit");
    assert_eq!(db.assert_ledger_consistent().await, 750);
}

async fn deposit_replay_returns_the_original_answer(db: &TestDb) {
    let account = db.account("USD").await;
    let original = db.store.deposit(&account, 100, "once", None).await.unwrap();
    db.store.deposit(&account, 50, "other", None).await.unwrap();

    let replay = db.store.deposit(&account, 100, "once", None).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(
        replay.value, original.value,
        "the account as right after the original deposit"
    );
    assert_eq!(db.balance(&account).await, 150, "the replay moved nothing");
    assert_eq!(db.assert_ledger_consistent().await, 150);
}

async fn deposit_key_reused_with_other_parameters(db: &TestDb) {
    let account = db.account("USD").await;
    let other = db.account("USD").await;
    db.store.deposit(&account, 100, "k", None).await.unwrap();

    for (target, amount) in [(&account, 101), (&other, 100)] {
        let error = error_of(db.store.deposit(target, amount, "k", None).await);
        assert!(
            matches!(&error, StoreError::IdempotencyKeyReused { key } if key == "k"),
            "{error:?}"
        );
    }
    assert_eq!(db.balance(&account).await, 100);
    assert_eq!(db.balance(&other).await, 0);
    db.assert_ledger_consistent().await;
}

async fn deposit_to_missing_account_consumes_no_key(db: &TestDb) {
    let error = error_of(db.store.deposit("ghost", 100, "k", None).await);
    assert!(
        matches!(&error, StoreError::AccountNotFound { account_id } if account_id == "ghost"),
        "{error:?}"
    );
    assert_eq!(db.i64("SELECT COUNT(*) FROM idempotency_keys").await, 0);

    // The failed request left no trace: once the account exists, the same key works.
    db.store
        .create_account(Some("ghost"), "USD", None)
        .await
        .unwrap();
    let deposit = db.store.deposit("ghost", 100, "k", None).await.unwrap();
    assert!(!deposit.replayed);
    assert_eq!(deposit.value.balance_minor, 100);
}

async fn deposit_past_the_largest_balance_is_refused(db: &TestDb) {
    let account = db.account("USD").await;
    db.store
        .deposit(&account, i64::MAX, "max", None)
        .await
        .unwrap();
    let error = error_of(db.store.deposit(&account, 1, "one-more", None).await);
    assert!(
        matches!(&error, StoreError::BalanceOverflow { account_id } if *account_id == account),
        "{error:?}"
    );
    assert_eq!(db.balance(&account).await, i64::MAX);
    assert_eq!(db.i64("SELECT COUNT(*) FROM deposits").await, 1);
}
