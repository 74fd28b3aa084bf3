//! The concurrency invariant through the whole service: 32 concurrent gRPC clients make
//! random transfers among 20 accounts, retry requests (also after ABORTED) and reuse keys
//! with other parameters. Afterwards no money was created or lost, no balance is negative,
//! every idempotency key moved money at most once, and every balance is exactly what the
//! recorded payments imply — on SQLite and on PostgreSQL.

mod common;

use common::api::Mix;
use common::{TestDb, on_both_backends};
use tonic::Code;

const CLIENTS: usize = 32;
const ACCOUNTS: usize = 20;
const REQUESTS_PER_CLIENT: usize = 60;
const DEPOSIT: i64 = 1_000;

async fn transfers_conserve_money_and_execute_each_key_once(db: &TestDb) {
    let channel = common::api::serve(db.store.clone(), 0).await;

    let accounts = common::api::funded_accounts(&channel, ACCOUNTS, DEPOSIT).await;

    let mix = Mix {
        clients: CLIENTS,
        requests_per_client: REQUESTS_PER_CLIENT,
        shared_keys: 40,
        max_amount: 400,
        resend: 0.3,
    };
    let outcomes = common::api::drive_payments(&channel, &accounts, mix)
        .await
        .codes;
    // Only business outcomes: no INTERNAL, no UNAVAILABLE, nothing unexpected.
    for code in outcomes.keys() {
        assert!(
            matches!(code, Code::Ok | Code::FailedPrecondition | Code::Aborted),
            "unexpected {code:?}: {outcomes:?}"
        );
    }
    assert!(
        outcomes[&Code::Ok] > CLIENTS * REQUESTS_PER_CLIENT / 2,
        "too few payments went through: {outcomes:?}"
    );

    common::api::assert_balances_follow_payments(&channel, &accounts, DEPOSIT).await;
    db.assert_ledger_consistent().await;
}

on_both_backends!(transfers_conserve_money_and_execute_each_key_once);
