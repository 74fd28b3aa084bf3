//! The concurrency invariant through the whole service: 32 concurrent gRPC clients make
//! random transfers among 20 accounts, retry requests (also after ABORTED) and reuse keys
//! with other parameters. Afterwards no money was created or lost, no balance is negative,
//! every idempotency key moved money at most once, and every balance is exactly what the
//! recorded payments imply — on SQLite and on PostgreSQL.

mod common;

use std::collections::HashMap;

use common::{TestDb, on_both_backends};
use payments::pb::v1::ProcessRequest;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use rand::{Rng, SeedableRng};
use tonic::Code;

const CLIENTS: usize = 32;
const ACCOUNTS: usize = 20;
const REQUESTS_PER_CLIENT: usize = 60;
const DEPOSIT: i64 = 1_000;

async fn transfers_conserve_money_and_execute_each_key_once(db: &TestDb) {
    let channel = common::api::serve(db.store.clone(), 0).await;

    let accounts = common::api::funded_accounts(&channel, ACCOUNTS, DEPOSIT).await;

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = PaymentServiceClient::new(channel.clone());
            let accounts = accounts.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                let mut outcomes: HashMap<Code, usize> = HashMap::new();
                for n in 0..REQUESTS_PER_CLIENT {
                    let payer = rng.random_range(0..ACCOUNTS);
                    let payee = (payer + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                    // Some keys are shared across clients, so they race on purpose.
                    let key = if rng.random_bool(0.2) {
                        format!("shared-{}", rng.random_range(0..40))
                    } else {
                        format!("c{c}-{n}")
                    };
                    let request = ProcessRequest {
                        idempotency_key: key,
                        payer_account_id: accounts[payer].clone(),
                        payee_account_id: accounts[payee].clone(),
                        amount_minor: rng.random_range(1..400),
                        currency: "EUR".into(),
                        ..Default::default()
                    };
                    // Send once, sometimes again (a client retry), retrying after ABORTED.
                    let sends = if rng.random_bool(0.3) { 2 } else { 1 };
                    for _ in 0..sends {
                        let mut attempts = 0;
                        loop {
                            let code = match client.process(request.clone()).await {
                                Ok(_) => Code::Ok,
                                Err(status) => status.code(),
                            };
                            attempts += 1;
                            if code == Code::Aborted && attempts < 20 {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                                continue;
                            }
                            *outcomes.entry(code).or_default() += 1;
                            break;
                        }
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes: HashMap<Code, usize> = HashMap::new();
    for client in clients {
        for (code, n) in client.await.unwrap() {
            *outcomes.entry(code).or_default() += n;
        }
    }
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
