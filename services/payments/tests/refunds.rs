//! Refunds: partial and full, never past the payment, idempotent, paid by the payee.

mod common;

use common::{TestDb, error_of, on_both_backends, payment};
use payments::store::{Payment, PaymentStatus, StoreError};

on_both_backends!(
    partial_refunds_up_to_the_amount,
    refund_replay_returns_the_payment_as_right_after_it,
    refund_key_reused_with_other_parameters,
    refund_of_missing_payment_is_payment_not_found,
    refund_needs_the_payee_to_hold_the_money,
);

/// A payment of 100 from a payer funded with 1,000 to an empty payee.
async fn paid(db: &TestDb) -> Payment {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    db.store
        .process(&payment("p", &payer, &payee, 100))
        .await
        .unwrap()
        .value
}

async fn partial_refunds_up_to_the_amount(db: &TestDb) {
    let paid = paid(db).await;
    let (payer, payee) = (&paid.payer_account_id, &paid.payee_account_id);

    let first = db
        .store
        .refund(&paid.payment_id, 30, "r1", None)
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.value.refunded_minor, 30);
    assert_eq!(first.value.status(), PaymentStatus::PartiallyRefunded);
    assert_eq!(
        Payment {
            refunded_minor: 0,
            ..first.value.clone()
        },
        paid,
        "nothing else about the payment changes"
    );
    assert_eq!(
        (db.balance(payer).await, db.balance(payee).await),
        (930, 70)
    );

    let second = db
        .store
        .refund(&paid.payment_id, 70, "r2", None)
        .await
        .unwrap();
    assert_eq!(second.value.refunded_minor, 100);
    assert_eq!(second.value.status(), PaymentStatus::Refunded);
    assert_eq!(
        (db.balance(payer).await, db.balance(payee).await),
        (1_000, 0)
    );

    let error = error_of(db.store.refund(&paid.payment_id, 1, "r3", None).await);
    match &error {
        StoreError::RefundExceedsPayment {
            payment_id,
            amount_minor,
            refunded_minor,
            requested_minor,
        } => {
            assert_eq!(payment_id, &paid.payment_id);
            assert_eq!(
                (*amount_minor, *refunded_minor, *requested_minor),
                (100, 100, 1)
            );
        }
        other => panic!("{other:?}"),
    }
    // Overflowing the refunded total is the same error, not a wrap.
    let error = error_of(
        db.store
            .refund(&paid.payment_id, i64::MAX, "r4", None)
            .await,
    );
    assert!(
        matches!(error, StoreError::RefundExceedsPayment { .. }),
        "{error:?}"
    );
    assert_eq!(
        db.store.get_payment(&paid.payment_id).await.unwrap(),
        second.value
    );
    assert_eq!(db.assert_ledger_consistent().await, 1_000);
}

async fn refund_replay_returns_the_payment_as_right_after_it(db: &TestDb) {
    let paid = paid(db).await;
    let first = db
        .store
        .refund(&paid.payment_id, 30, "r1", None)
        .await
        .unwrap();
    db.store
        .refund(&paid.payment_id, 20, "r2", None)
        .await
        .unwrap();

    let replay = db
        .store
        .refund(&paid.payment_id, 30, "r1", None)
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(
        replay.value, first.value,
        "refunded 30, as the original answer said"
    );
    assert_eq!(
        db.store
            .get_payment(&paid.payment_id)
            .await
            .unwrap()
            .refunded_minor,
        50
    );
    assert_eq!(
        db.balance(&paid.payee_account_id).await,
        50,
        "the replay moved nothing"
    );
    db.assert_ledger_consistent().await;
}

async fn refund_key_reused_with_other_parameters(db: &TestDb) {
    let paid = paid(db).await;
    db.store
        .refund(&paid.payment_id, 30, "r1", None)
        .await
        .unwrap();
    let error = error_of(db.store.refund(&paid.payment_id, 31, "r1", None).await);
    assert!(
        matches!(&error, StoreError::IdempotencyKeyReused { key } if key == "r1"),
        "{error:?}"
    );
    assert_eq!(
        db.store
            .get_payment(&paid.payment_id)
            .await
            .unwrap()
            .refunded_minor,
        30
    );
}

async fn refund_of_missing_payment_is_payment_not_found(db: &TestDb) {
    let error = error_of(db.store.refund("pay_nothing", 10, "r", None).await);
    assert!(
        matches!(&error, StoreError::PaymentNotFound { payment_id } if payment_id == "pay_nothing"),
        "{error:?}"
    );
    assert_eq!(
        db.i64("SELECT COUNT(*) FROM idempotency_keys WHERE scope = 'refund'")
            .await,
        0
    );
}

async fn refund_needs_the_payee_to_hold_the_money(db: &TestDb) {
    let paid = paid(db).await;
    let elsewhere = db.account("USD").await;
    db.store
        .process(&payment("spend", &paid.payee_account_id, &elsewhere, 80))
        .await
        .unwrap();

    let error = error_of(db.store.refund(&paid.payment_id, 50, "r", None).await);
    match &error {
        StoreError::InsufficientFunds {
            account_id,
            balance_minor,
            needed_minor,
        } => {
            assert_eq!(account_id, &paid.payee_account_id);
            assert_eq!((*balance_minor, *needed_minor), (20, 50));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        db.store
            .get_payment(&paid.payment_id)
            .await
            .unwrap()
            .refunded_minor,
        0
    );
    let within = db
        .store
        .refund(&paid.payment_id, 20, "r-small", None)
        .await
        .unwrap();
    assert_eq!(within.value.refunded_minor, 20);
    db.assert_ledger_consistent().await;
}
