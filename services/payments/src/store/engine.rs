//! Runs the ledger's operations on a backend: one transaction per operation, retried when the
//! database aborts it for a conflict, and the [`Store`] implementation every backend shares.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::{Database, Pool, Transaction};

use super::api::Store;
use super::batch_statements::BatchStatements;
use super::config::StoreConfig;
use super::deadline::{Deadlines, Lease};
use super::error::StoreError;
use super::group_commit::BatchStore;
use super::ledger;
use super::ledger::BatchOutcomes;
use super::model::{Account, Idempotent, ListPosition, Payment, PaymentRequest};
use super::records::{duration_us, now_us};
use super::statements::Statements;

/// What differs between databases once the statements are written: where connections come
/// from and how a write transaction starts.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database<Connection: BatchStatements>;
    /// `"sqlite"` or `"postgres"`.
    const NAME: &'static str;
    /// The statement starting a write transaction.
    const BEGIN: &'static str;
    /// Connections for write transactions.
    fn writer(&self) -> &Pool<Self::Db>;
    /// Connections for reads outside a transaction.
    fn reader(&self) -> &Pool<Self::Db>;
}

/// A [`Store`] on backend `B`.
pub(crate) struct Engine<B> {
    backend: B,
    config: StoreConfig,
}

impl<B: Backend> Engine<B> {
    pub(crate) fn new(backend: B, config: StoreConfig) -> Self {
        Self { backend, config }
    }
}

/// `transaction!(engine, |conn| operation)`: runs `operation` (a future using `conn`, the
/// transaction's connection) in a write transaction, committing on success and rolling back on
/// error, and runs it again while it fails with [`StoreError::Conflict`], up to the configured
/// number of retries. Bounded in time by [`Deadlines`]: a timeout fails with
/// [`StoreError::Unavailable`] and closes the connection.
macro_rules! transaction {
    ($engine:expr, |$conn:ident| $operation:expr) => {{
        let engine = $engine;
        let deadlines = Deadlines::start(&engine.config);
        retry_conflicts(engine.config.max_conflict_retries, move || async move {
            let mut lease = Lease::acquire(engine.backend.writer(), &deadlines).await?;
            let mut tx = deadlines
                .work(sqlx::Connection::begin_with(lease.connection(), B::BEGIN))
                .await??;
            let outcome = deadlines
                .work(async {
                    let $conn = &mut *tx;
                    $operation.await
                })
                .await?;
            let outcome = finish(tx, outcome, &deadlines).await?;
            lease.release();
            outcome
        })
    }};
}

/// `connection!(engine, |conn| operation)`: runs `operation` on a connection for reads,
/// within the transaction timeout.
macro_rules! connection {
    ($engine:expr, |$conn:ident| $operation:expr) => {{
        let engine = $engine;
        async move {
            let deadlines = Deadlines::start(&engine.config);
            let mut lease = Lease::acquire(engine.backend.reader(), &deadlines).await?;
            let outcome = deadlines
                .work(async {
                    let $conn = lease.connection();
                    $operation.await
                })
                .await?;
            lease.release();
            outcome
        }
    }};
}

/// Commits when the operation succeeded, rolls back when it failed, within the commit
/// timeout. The outer error ends the operation with the connection in an unknown state (it
/// must be closed): COMMIT not answering, or ROLLBACK not answering (then with the operation's
/// own error, which stands: nothing was committed).
async fn finish<DB: Database, T>(
    tx: Transaction<'_, DB>,
    outcome: Result<T, StoreError>,
    deadlines: &Deadlines,
) -> Result<Result<T, StoreError>, StoreError> {
    match outcome {
        Ok(value) => Ok(deadlines
            .finish(tx.commit())
            .await?
            .map(|()| value)
            .map_err(StoreError::from)),
        // A failed rollback leaves nothing behind: the transaction dies with its connection.
        Err(error) => match deadlines.finish(tx.rollback()).await {
            Ok(_) => Ok(Err(error)),
            Err(_) => Err(error),
        },
    }
}

/// Runs `attempt` until it does not fail with [`StoreError::Conflict`], at most
/// `1 + retries` times, waiting a few random milliseconds (growing) between attempts so the
/// transactions that collided do not collide again.
pub(crate) async fn retry_conflicts<T, F, Fut>(
    retries: u32,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut retried = 0;
    loop {
        match attempt().await {
            Err(StoreError::Conflict(error)) if retried < retries => {
                retried += 1;
                tracing::debug!(%error, retried, "transaction aborted by a conflict; retrying");
                let ceiling_ms = 1u64 << retried.min(6);
                tokio::time::sleep(Duration::from_millis(rand::random_range(1..=ceiling_ms))).await;
            }
            outcome => return outcome,
        }
    }
}

impl<B: Backend> Store for Engine<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }

    fn create_account<'a>(
        &'a self,
        account_id: Option<&'a str>,
        currency: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Account, StoreError>> {
        Box::pin(transaction!(self, |conn| ledger::create_account(
            conn, account_id, currency, owner
        )))
    }

    fn get_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Account, StoreError>> {
        Box::pin(connection!(self, |conn| async move {
            conn.account(account_id)
                .await?
                .ok_or_else(|| StoreError::AccountNotFound {
                    account_id: account_id.to_owned(),
                })
        }))
    }

    fn deposit<'a>(
        &'a self,
        account_id: &'a str,
        amount_minor: i64,
        idempotency_key: &'a str,
        caller: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Idempotent<Account>, StoreError>> {
        Box::pin(transaction!(self, |conn| ledger::deposit(
            conn,
            account_id,
            amount_minor,
            idempotency_key,
            caller
        )))
    }

    fn process<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        Box::pin(transaction!(self, |conn| ledger::process(conn, request)))
    }

    fn get_payment<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Payment, StoreError>> {
        Box::pin(connection!(self, |conn| async move {
            conn.payment(payment_id)
                .await?
                .ok_or_else(|| StoreError::PaymentNotFound {
                    payment_id: payment_id.to_owned(),
                })
        }))
    }

    fn list_payments<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a ListPosition>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Payment>, StoreError>> {
        Box::pin(connection!(self, |conn| async move {
            if conn.account(account_id).await?.is_none() {
                return Err(StoreError::AccountNotFound {
                    account_id: account_id.to_owned(),
                });
            }
            conn.payments_of(account_id, after, limit).await
        }))
    }

    fn refund<'a>(
        &'a self,
        payment_id: &'a str,
        amount_minor: i64,
        idempotency_key: &'a str,
        caller: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        Box::pin(transaction!(self, |conn| ledger::refund(
            conn,
            payment_id,
            amount_minor,
            idempotency_key,
            caller
        )))
    }

    fn purge_idempotency_keys(
        &self,
        older_than: Duration,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let age = older_than.max(self.config.idempotency_retention);
        Box::pin(transaction!(self, |conn| conn
            .purge_keys(now_us().saturating_sub(duration_us(age)))))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(connection!(self, |conn| conn.ping()))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.backend.writer().close().await;
            self.backend.reader().close().await;
        })
    }
}

impl<B: Backend> BatchStore for Engine<B> {
    fn process_batch<'a>(
        &'a self,
        requests: &'a [&'a PaymentRequest],
    ) -> BoxFuture<'a, Result<BatchOutcomes, StoreError>> {
        Box::pin(transaction!(self, |conn| ledger::process_batch(
            conn, requests
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn conflict() -> StoreError {
        StoreError::Conflict("serialization failure".into())
    }

    #[tokio::test]
    async fn conflicts_are_retried_until_success() {
        let attempts = AtomicU32::new(0);
        let outcome = retry_conflicts(5, || async {
            if attempts.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(conflict())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(outcome.unwrap(), 7);
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn conflicts_give_up_after_the_retries() {
        let attempts = AtomicU32::new(0);
        let outcome: Result<(), _> = retry_conflicts(2, || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err(conflict())
        })
        .await;
        assert!(
            matches!(outcome, Err(StoreError::Conflict(_))),
            "{outcome:?}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let attempts = AtomicU32::new(0);
        let outcome: Result<(), _> = retry_conflicts(5, || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Unavailable("down".into()))
        })
        .await;
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "an outage may have committed: no blind retry"
        );
    }
}
