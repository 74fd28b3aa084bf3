//! Payments: processing, replays, reading and listing, and every error they produce.

mod common;

use std::time::Duration;

use common::{TestDb, error_of, on_both_backends, payment};
use payments::store::{ListPosition, PaymentStatus, StoreError};

on_both_backends!(
    process_moves_money_through_balanced_entries,
    replay_returns_the_payment_as_first_recorded,
    key_reused_with_other_parameters,
    insufficient_funds_moves_nothing_and_consumes_no_key,
    currency_must_match_both_accounts,
    missing_payer_or_payee_is_account_not_found,
    missing_payment_is_payment_not_found,
    list_payments_of_an_account_in_creation_order,
    keys_are_scoped_per_operation,
    non_positive_amounts_never_reach_the_ledger,
);

async fn process_moves_money_through_balanced_entries(db: &TestDb) {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let mut request = payment("p1", &payer, &payee, 300);
    request.metadata.insert("customer".into(), "c-42".into());

    let processed = db.store.process(&request).await.unwrap();
    assert!(!processed.replayed);
    let paid = processed.value;
    assert!(paid.payment_id.starts_with("pay_"), "{}", paid.payment_id);
    assert_eq!(paid.idempotency_key, "p1");
    assert_eq!(paid.payer_account_id, payer);
    assert_eq!(paid.payee_account_id, payee);
    assert_eq!(paid.amount_minor, 300);
    assert_eq!(paid.currency, "USD");
    assert_eq!(paid.description, request.description);
    assert_eq!(paid.metadata, request.metadata);
    assert_eq!(paid.refunded_minor, 0);
    assert_eq!(paid.status(), PaymentStatus::Completed);

    assert_eq!(db.balance(&payer).await, 700);
    assert_eq!(db.balance(&payee).await, 300);
    assert_eq!(db.store.get_payment(&paid.payment_id).await.unwrap(), paid);
    let entries = db
        .pairs(&format!(
            "SELECT account_id, amount_minor FROM ledger_entries \
             WHERE transfer_id = '{}' ORDER BY amount_minor",
            paid.payment_id
        ))
        .await;
    assert_eq!(entries, [(payer, -300), (payee, 300)]);
    assert_eq!(db.assert_ledger_consistent().await, 1_000);
}

async fn replay_returns_the_payment_as_first_recorded(db: &TestDb) {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let request = payment("p1", &payer, &payee, 300);
    let original = db.store.process(&request).await.unwrap().value;

    let replay = db.store.process(&request).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(
        replay.value, original,
        "same id, amounts, metadata and created_at"
    );
    assert_eq!(db.balance(&payer).await, 700, "the replay moved nothing");

    // Still the original answer after a refund changed the payment.
    db.store
        .refund(&original.payment_id, 100, "r1", None)
        .await
        .unwrap();
    let later = db.store.process(&request).await.unwrap();
    assert!(later.replayed);
    assert_eq!(later.value, original);
    assert_eq!(
        db.store
            .get_payment(&original.payment_id)
            .await
            .unwrap()
            .refunded_minor,
        100,
        "reads show the payment as it stands"
    );
    assert_eq!(db.i64("SELECT COUNT(*) FROM payments").await, 1);
    db.assert_ledger_consistent().await;
}

async fn key_reused_with_other_parameters(db: &TestDb) {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let third = db.account("USD").await;
    let request = payment("k", &payer, &payee, 300);
    db.store.process(&request).await.unwrap();

    let mut changes = Vec::new();
    let mut other = request.clone();
    other.amount_minor = 301;
    changes.push(other);
    let mut other = request.clone();
    other.payee_account_id = third.clone();
    changes.push(other);
    let mut other = request.clone();
    other.description = "something else".into();
    changes.push(other);
    let mut other = request.clone();
    other.metadata.insert("extra".into(), "1".into());
    changes.push(other);
    for changed in &changes {
        let error = error_of(db.store.process(changed).await);
        assert!(
            matches!(&error, StoreError::IdempotencyKeyReused { key } if key == "k"),
            "{error:?}"
        );
    }
    assert_eq!(db.balance(&payer).await, 700);
    assert_eq!(db.balance(&third).await, 0);
    db.assert_ledger_consistent().await;
}

async fn insufficient_funds_moves_nothing_and_consumes_no_key(db: &TestDb) {
    let payer = db.funded("USD", 100).await;
    let payee = db.account("USD").await;
    let request = payment("big", &payer, &payee, 150);
    let error = error_of(db.store.process(&request).await);
    match &error {
        StoreError::InsufficientFunds {
            account_id,
            balance_minor,
            needed_minor,
        } => {
            assert_eq!(account_id, &payer);
            assert_eq!((*balance_minor, *needed_minor), (100, 150));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(db.balance(&payer).await, 100);
    assert_eq!(db.i64("SELECT COUNT(*) FROM payments").await, 0);

    // Fixed by a deposit, the same request with the same key goes through.
    db.store.deposit(&payer, 50, "top-up", None).await.unwrap();
    let processed = db.store.process(&request).await.unwrap();
    assert!(!processed.replayed);
    assert_eq!(db.balance(&payer).await, 0);
    assert_eq!(db.balance(&payee).await, 150);
    db.assert_ledger_consistent().await;
}

async fn currency_must_match_both_accounts(db: &TestDb) {
    let usd = db.funded("USD", 1_000).await;
    let eur = db.funded("EUR", 1_000).await;

    let error = error_of(db.store.process(&payment("a", &eur, &usd, 10)).await);
    assert!(
        matches!(
            &error,
            StoreError::CurrencyMismatch { account_id, account_currency, requested_currency }
                if *account_id == eur && account_currency == "EUR" && requested_currency == "USD"
        ),
        "payer first: {error:?}"
    );
    let error = error_of(db.store.process(&payment("b", &usd, &eur, 10)).await);
    assert!(
        matches!(&error, StoreError::CurrencyMismatch { account_id, .. } if *account_id == eur),
        "then payee: {error:?}"
    );
    let mut in_eur = payment("c", &usd, &usd, 10);
    in_eur.currency = "EUR".into();
    let error = error_of(db.store.process(&in_eur).await);
    assert!(
        matches!(&error, StoreError::CurrencyMismatch { account_id, .. } if *account_id == usd),
        "request currency: {error:?}"
    );
    assert_eq!(db.balance(&usd).await, 1_000);
    assert_eq!(db.balance(&eur).await, 1_000);
    db.assert_ledger_consistent().await;
}

async fn missing_payer_or_payee_is_account_not_found(db: &TestDb) {
    let account = db.funded("USD", 1_000).await;
    for (payer, payee, missing) in [
        ("ghost", account.as_str(), "ghost"),
        (account.as_str(), "phantom", "phantom"),
        ("ghost", "phantom", "ghost"),
    ] {
        let error = error_of(db.store.process(&payment("k", payer, payee, 10)).await);
        assert!(
            matches!(&error, StoreError::AccountNotFound { account_id } if account_id == missing),
            "{payer} -> {payee}: {error:?}"
        );
    }
    assert_eq!(db.balance(&account).await, 1_000);
}

async fn missing_payment_is_payment_not_found(db: &TestDb) {
    let error = error_of(db.store.get_payment("pay_nothing").await);
    assert!(
        matches!(&error, StoreError::PaymentNotFound { payment_id } if payment_id == "pay_nothing"),
        "{error:?}"
    );
}

async fn list_payments_of_an_account_in_creation_order(db: &TestDb) {
    let a = db.funded("USD", 1_000).await;
    let b = db.funded("USD", 1_000).await;
    let c = db.funded("USD", 1_000).await;
    let mut made = Vec::new();
    for (key, payer, payee) in [("1", &a, &b), ("2", &b, &c), ("3", &c, &a), ("4", &a, &c)] {
        made.push(
            db.store
                .process(&payment(key, payer, payee, 10))
                .await
                .unwrap()
                .value,
        );
        // sleep: time passing is the behaviour: distinct timestamps, so order is observable
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let listed = db.store.list_payments(&a, None, 100).await.unwrap();
    let want = [&made[0], &made[2], &made[3]];
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        want,
        "paid or received by a, oldest first"
    );
    let listed_b = db.store.list_payments(&b, None, 100).await.unwrap();
    assert_eq!(listed_b, [made[0].clone(), made[1].clone()]);

    // At most `limit`, from right after a position.
    let first = db.store.list_payments(&a, None, 2).await.unwrap();
    assert_eq!(first.iter().collect::<Vec<_>>(), want[..2]);
    let after = ListPosition::of(&first[1]);
    let rest = db.store.list_payments(&a, Some(&after), 2).await.unwrap();
    assert_eq!(rest.iter().collect::<Vec<_>>(), want[2..]);
    let last = ListPosition::of(&made[3]);
    assert!(
        db.store
            .list_payments(&a, Some(&last), 2)
            .await
            .unwrap()
            .is_empty()
    );

    let quiet = db.account("USD").await;
    assert!(
        db.store
            .list_payments(&quiet, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let error = error_of(db.store.list_payments("ghost", None, 100).await);
    assert!(
        matches!(error, StoreError::AccountNotFound { .. }),
        "{error:?}"
    );
}

async fn keys_are_scoped_per_operation(db: &TestDb) {
    let payer = db.account("USD").await;
    let payee = db.account("USD").await;
    let deposit = db.store.deposit(&payer, 500, "same", None).await.unwrap();
    assert!(!deposit.replayed);
    let paid = db
        .store
        .process(&payment("same", &payer, &payee, 200))
        .await
        .unwrap();
    assert!(
        !paid.replayed,
        "a deposit key does not make a payment a replay"
    );
    let refund = db
        .store
        .refund(&paid.value.payment_id, 50, "same", None)
        .await
        .unwrap();
    assert!(!refund.replayed, "nor a refund");
    assert_eq!(db.balance(&payer).await, 350);
    assert_eq!(db.balance(&payee).await, 150);
    db.assert_ledger_consistent().await;
}

async fn non_positive_amounts_never_reach_the_ledger(db: &TestDb) {
    // The service validates amounts; should a bug let one through, nothing moves.
    let payer = db.funded("USD", 1_000).await;
    let payee = db.funded("USD", 1_000).await;
    for amount in [0, -500, i64::MIN] {
        let error = error_of(
            db.store
                .process(&payment(&format!("k{amount}"), &payer, &payee, amount))
                .await,
        );
        assert!(
            matches!(error, StoreError::Internal(_)),
            "{amount}: {error:?}"
        );
        let error = error_of(
            db.store
                .deposit(&payer, amount, &format!("d{amount}"), None)
                .await,
        );
        assert!(
            matches!(error, StoreError::Internal(_)),
            "{amount}: {error:?}"
        );
    }
    assert_eq!(db.balance(&payer).await, 1_000);
    assert_eq!(db.balance(&payee).await, 1_000);
    db.assert_ledger_consistent().await;
}
