//! The ledger stays exact under concurrency: 32 tasks make thousands of random transfers,
//! retries, concurrent duplicates, reused keys and refunds among 20 accounts; afterwards money
//! is conserved, no balance is negative, the ledger balances, and each idempotency key moved
//! money exactly once. Set `PAYMENTS_TEST_SEED` to replay a run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use common::{Backend, TestDb, payment};
use payments::store::{Idempotent, Payment, PaymentRequest, Store, StoreError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: usize = 20;
const TASKS: u64 = 32;
const OPERATIONS: u64 = 3_000;
/// Each account gets two deposits of this.
const DEPOSIT: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_random_transfers_keep_the_ledger_exact() {
    random_transfers_keep_the_ledger_exact(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_random_transfers_keep_the_ledger_exact() {
    random_transfers_keep_the_ledger_exact(Backend::Postgres).await;
}

/// What the clients saw.
#[derive(Default)]
struct Observed {
    /// Every payment request sent, for retries and key reuse.
    sent: Vec<PaymentRequest>,
    /// Per payment key: the payment ids of the successful answers, and whether each was fresh.
    answers: HashMap<String, Vec<(String, bool)>>,
    /// Payments and refunds that executed (fresh answers), in no particular order.
    executed_payments: Vec<Payment>,
    executed_refunds: Vec<(Payment, i64)>,
    /// How often each outcome happened, to show the run exercised every path.
    outcomes: BTreeMap<&'static str, u64>,
}

impl Observed {
    fn count(&mut self, outcome: &'static str) {
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    fn payment_outcome(
        &mut self,
        request: &PaymentRequest,
        result: Result<Idempotent<Payment>, StoreError>,
    ) {
        match result {
            Ok(answer) => {
                self.count(if answer.replayed {
                    "payment replayed"
                } else {
                    "payment executed"
                });
                if !answer.replayed {
                    self.executed_payments.push(answer.value.clone());
                }
                self.answers
                    .entry(request.idempotency_key.clone())
                    .or_default()
                    .push((answer.value.payment_id, !answer.replayed));
            }
            Err(StoreError::InsufficientFunds { .. }) => self.count("insufficient funds"),
            Err(StoreError::IdempotencyKeyReused { .. }) => self.count("key reused"),
            Err(other) => panic!("unexpected error for {request:?}: {other:?}"),
        }
    }

    fn refund_outcome(&mut self, amount: i64, result: Result<Idempotent<Payment>, StoreError>) {
        match result {
            Ok(answer) if answer.replayed => self.count("refund replayed"),
            Ok(answer) => {
                self.count("refund executed");
                self.executed_refunds.push((answer.value, amount));
            }
            Err(StoreError::InsufficientFunds { .. }) => self.count("refund insufficient funds"),
            Err(StoreError::RefundExceedsPayment { .. }) => self.count("refund exceeds payment"),
            Err(other) => panic!("unexpected refund error: {other:?}"),
        }
    }
}

async fn random_transfers_keep_the_ledger_exact(backend: Backend) {
    let seed = std::env::var("PAYMENTS_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("PAYMENTS_TEST_SEED={seed}");
    let started = std::time::Instant::now();

    let db = TestDb::new(backend).await;
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let account = db.account("USD").await;
        for n in 0..2 {
            db.store
                .deposit(&account, DEPOSIT, &format!("fund-{account}-{n}"), None)
                .await
                .unwrap();
        }
        accounts.push(account);
    }
    let accounts = Arc::new(accounts);
    let observed = Arc::new(Mutex::new(Observed::default()));

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, accounts, observed) = (db.store.clone(), accounts.clone(), observed.clone());
        let operations = OPERATIONS / TASKS + u64::from(task < OPERATIONS % TASKS);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ task);
            for i in 0..operations {
                client_step(
                    &*store,
                    &accounts,
                    &observed,
                    &mut rng,
                    &format!("t{task}-{i}"),
                )
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();

    let observed = Arc::try_unwrap(observed)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    println!("{backend:?}: {:?} in {elapsed:?}", observed.outcomes);
    for outcome in [
        "payment executed",
        "payment replayed",
        "insufficient funds",
        "key reused",
        "refund executed",
        "refund replayed",
    ] {
        assert!(
            observed.outcomes.get(outcome).is_some_and(|n| *n > 0),
            "no {outcome:?} in this run"
        );
    }

    // Money is conserved, nothing is negative, every transfer is two balanced entries.
    let total = db.assert_ledger_consistent().await;
    assert_eq!(total, ACCOUNTS as i64 * 2 * DEPOSIT);

    // Each key moved money once: one payment per key in the database...
    let duplicated = db
        .pairs("SELECT idempotency_key, COUNT(*) FROM payments GROUP BY idempotency_key HAVING COUNT(*) > 1")
        .await;
    assert!(
        duplicated.is_empty(),
        "keys with several payments: {duplicated:?}"
    );
    // ...as the clients saw it: at most one executed answer per key, every answer the same...
    for (key, answers) in &observed.answers {
        let executed = answers.iter().filter(|(_, fresh)| *fresh).count();
        assert!(executed <= 1, "key {key} executed {executed} times");
        assert!(
            answers.iter().all(|(id, _)| *id == answers[0].0),
            "key {key}: {answers:?}"
        );
    }
    let payments = db.i64("SELECT COUNT(*) FROM payments").await;
    assert_eq!(payments, observed.executed_payments.len() as i64);
    let refunds = db.i64("SELECT COUNT(*) FROM refunds").await;
    assert_eq!(refunds, observed.executed_refunds.len() as i64);
    // ...and replaying what the clients saw executed gives exactly the stored balances.
    let mut expected: HashMap<&str, i64> = accounts
        .iter()
        .map(|account| (account.as_str(), 2 * DEPOSIT))
        .collect();
    for paid in &observed.executed_payments {
        *expected.get_mut(paid.payer_account_id.as_str()).unwrap() -= paid.amount_minor;
        *expected.get_mut(paid.payee_account_id.as_str()).unwrap() += paid.amount_minor;
    }
    for (refunded, amount) in &observed.executed_refunds {
        *expected
            .get_mut(refunded.payee_account_id.as_str())
            .unwrap() -= amount;
        *expected
            .get_mut(refunded.payer_account_id.as_str())
            .unwrap() += amount;
    }
    for account in accounts.iter() {
        assert_eq!(
            db.balance(account).await,
            expected[account.as_str()],
            "balance of {account}"
        );
    }
}

/// One client action, chosen at random.
async fn client_step(
    store: &dyn Store,
    accounts: &[String],
    observed: &Mutex<Observed>,
    rng: &mut StdRng,
    key: &str,
) {
    let new_request = |rng: &mut StdRng| {
        let payer = rng.random_range(0..accounts.len());
        let payee = (payer + rng.random_range(1..accounts.len())) % accounts.len();
        payment(
            key,
            &accounts[payer],
            &accounts[payee],
            rng.random_range(1..=3_000),
        )
    };
    let earlier = |rng: &mut StdRng| {
        let observed = observed.lock().unwrap();
        (!observed.sent.is_empty())
            .then(|| observed.sent[rng.random_range(0..observed.sent.len())].clone())
    };
    let executed = |rng: &mut StdRng| {
        let observed = observed.lock().unwrap();
        let executed = &observed.executed_payments;
        (!executed.is_empty()).then(|| executed[rng.random_range(0..executed.len())].clone())
    };

    match rng.random_range(0..100) {
        // A retry of an earlier request, unchanged.
        0..15 => {
            if let Some(request) = earlier(rng) {
                let result = store.process(&request).await;
                observed.lock().unwrap().payment_outcome(&request, result);
                return;
            }
        }
        // An earlier key with other parameters.
        15..25 => {
            if let Some(mut request) = earlier(rng) {
                request.amount_minor += 1;
                let result = store.process(&request).await;
                observed.lock().unwrap().payment_outcome(&request, result);
                return;
            }
        }
        // The same new request twice at once, as a client retrying after a timeout.
        25..35 => {
            let request = new_request(rng);
            observed.lock().unwrap().sent.push(request.clone());
            let (first, second) = tokio::join!(store.process(&request), store.process(&request));
            let mut observed = observed.lock().unwrap();
            observed.payment_outcome(&request, first);
            observed.payment_outcome(&request, second);
            return;
        }
        // A partial refund, sometimes sent twice at once.
        35..45 => {
            if let Some(paid) = executed(rng) {
                let amount = rng.random_range(1..=(paid.amount_minor + 1) / 2);
                let refund_key = format!("refund-{key}");
                if rng.random_bool(0.3) {
                    let (first, second) = tokio::join!(
                        store.refund(&paid.payment_id, amount, &refund_key, None),
                        store.refund(&paid.payment_id, amount, &refund_key, None)
                    );
                    let mut observed = observed.lock().unwrap();
                    observed.refund_outcome(amount, first);
                    observed.refund_outcome(amount, second);
                } else {
                    let result = store
                        .refund(&paid.payment_id, amount, &refund_key, None)
                        .await;
                    observed.lock().unwrap().refund_outcome(amount, result);
                }
                return;
            }
        }
        _ => {}
    }
    // A new transfer.
    let request = new_request(rng);
    observed.lock().unwrap().sent.push(request.clone());
    let result = store.process(&request).await;
    observed.lock().unwrap().payment_outcome(&request, result);
}
