//! The database itself refuses records that break the ledger's invariants, whatever code
//! writes them: the last line of defence behind the store's own checks.

mod common;

use common::{Backend, TestDb, on_both_backends, payment};

on_both_backends!(database_enforces_the_invariants);

async fn database_enforces_the_invariants(db: &TestDb) {
    let payer = db.funded("USD", 1_000).await;
    let payee = db.account("USD").await;
    let paid = db
        .store
        .process(&payment("p", &payer, &payee, 100))
        .await
        .unwrap()
        .value;

    let mut refused = vec![
        format!("UPDATE accounts SET balance_minor = -1 WHERE account_id = '{payer}'"),
        "INSERT INTO accounts (account_id, currency, balance_minor, created_at_us) \
         VALUES ('x', 'usd', 0, 0)"
            .to_owned(),
        "INSERT INTO accounts (account_id, currency, balance_minor, created_at_us) \
         VALUES ('', 'USD', 0, 0)"
            .to_owned(),
        format!(
            "UPDATE payments SET refunded_minor = 101 WHERE payment_id = '{}'",
            paid.payment_id
        ),
        format!(
            "UPDATE payments SET refunded_minor = -1 WHERE payment_id = '{}'",
            paid.payment_id
        ),
        format!(
            "INSERT INTO payments (payment_id, idempotency_key, payer_account_id, \
             payee_account_id, amount_minor, currency, description, metadata, refunded_minor, \
             created_at_us) VALUES ('pay_zero', 'z', '{payer}', '{payee}', 0, 'USD', '', '{{}}', 0, 0)"
        ),
        format!(
            "INSERT INTO payments (payment_id, idempotency_key, payer_account_id, \
             payee_account_id, amount_minor, currency, description, metadata, refunded_minor, \
             created_at_us) VALUES ('pay_ghost', 'z', 'ghost', '{payee}', 5, 'USD', '', '{{}}', 0, 0)"
        ),
        "INSERT INTO ledger_entries (transfer_id, kind, account_id, currency, amount_minor, \
         created_at_us) VALUES ('t', 'payment', NULL, 'USD', 0, 0)"
            .to_owned(),
        "INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, resource_id, \
         created_at_us) VALUES ('payment', 'p', 'f', 'r', 0)"
            .to_owned(),
        "INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, resource_id, \
         created_at_us) VALUES ('transfer', 'q', 'f', 'r', 0)"
            .to_owned(),
    ];
    if db.backend == Backend::Sqlite {
        // STRICT tables: no REAL (or TEXT) sneaks into an integer column.
        refused.push(format!(
            "UPDATE accounts SET balance_minor = 1.5 WHERE account_id = '{payer}'"
        ));
        refused.push(format!(
            "UPDATE accounts SET balance_minor = 'lots' WHERE account_id = '{payer}'"
        ));
    }
    for statement in &refused {
        let outcome = db.execute(statement).await;
        assert!(outcome.is_err(), "accepted: {statement}");
    }
    assert_eq!(
        db.assert_ledger_consistent().await,
        1_000,
        "nothing changed"
    );
}
