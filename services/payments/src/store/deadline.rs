//! Bounding every database operation in time, on the client's side.
//!
//! The database's own timeouts (`statement_timeout` on PostgreSQL, the busy timeout on SQLite)
//! end work the server is doing; they cannot help when the network goes silent, where a
//! client waits for an answer that never comes. So every operation also runs against client
//! deadlines: its statements (from asking for a connection) must be done within the
//! transaction timeout, and its COMMIT must answer within the commit timeout. A connection
//! whose operation did not finish — timed out, or dropped by its caller — is in an unknown
//! state (a statement or COMMIT may still be on the wire), so it is closed, never returned to
//! the pool.

use std::future::Future;
use std::time::Duration;

use sqlx::Database;
use sqlx::pool::{Pool, PoolConnection};
use tokio::time::Instant;

use super::config::StoreConfig;
use super::error::StoreError;

/// A database operation that got no answer in time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TimedOut {
    /// The statements (or getting a connection) took too long; nothing took effect.
    #[error(
        "the database did not answer within the transaction timeout ({0:?}); \
         nothing took effect"
    )]
    Transaction(Duration),
    /// COMMIT was sent and not answered: it may or may not have taken effect.
    #[error(
        "COMMIT got no answer within the commit timeout ({0:?}): whether it took effect is \
         unknown; retrying with the same idempotency key settles it"
    )]
    Commit(Duration),
    /// A payment waiting for group commit got no outcome in time; it may have been in a
    /// transaction that was committing.
    #[error(
        "the payment got no outcome within {0:?}: whether it took effect is unknown; \
         retrying with the same idempotency key settles it"
    )]
    Outcome(Duration),
}

impl From<TimedOut> for StoreError {
    fn from(timed_out: TimedOut) -> Self {
        Self::Unavailable(Box::new(timed_out))
    }
}

/// When one operation (with its conflict retries) must be over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Statements, and getting a connection, must be done by then.
    work: Instant,
    /// The last COMMIT must have answered by then.
    end: Instant,
    transaction_timeout: Duration,
    commit_timeout: Duration,
}

impl Deadlines {
    /// The deadlines of an operation starting now.
    pub(crate) fn start(config: &StoreConfig) -> Self {
        let work = Instant::now() + config.transaction_timeout;
        Self {
            work,
            end: work + config.commit_timeout,
            transaction_timeout: config.transaction_timeout,
            commit_timeout: config.commit_timeout,
        }
    }

    /// Runs `work` (statements) within the transaction deadline.
    pub(crate) async fn work<F: Future>(&self, work: F) -> Result<F::Output, TimedOut> {
        tokio::time::timeout_at(self.work, work)
            .await
            .map_err(|_| TimedOut::Transaction(self.transaction_timeout))
    }

    /// Runs `finish` (COMMIT or ROLLBACK) within the commit timeout, and the operation's end.
    pub(crate) async fn finish<F: Future>(&self, finish: F) -> Result<F::Output, TimedOut> {
        let deadline = self.end.min(Instant::now() + self.commit_timeout);
        tokio::time::timeout_at(deadline, finish)
            .await
            .map_err(|_| TimedOut::Commit(self.commit_timeout))
    }
}

/// A pooled connection lent to one operation. [`Lease::release`] returns it to the pool once
/// the operation is over; dropped without that (the operation timed out, failed mid-way or was
/// cancelled), it is closed instead, and the pool opens a fresh one when it needs one.
pub(crate) struct Lease<DB: Database> {
    connection: Option<PoolConnection<DB>>,
}

impl<DB: Database> Lease<DB> {
    /// A connection from `pool`, within the transaction deadline.
    pub(crate) async fn acquire(
        pool: &Pool<DB>,
        deadlines: &Deadlines,
    ) -> Result<Self, StoreError> {
        let connection = deadlines.work(pool.acquire()).await??;
        Ok(Self {
            connection: Some(connection),
        })
    }

    /// The connection.
    pub(crate) fn connection(&mut self) -> &mut DB::Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until released or dropped")
    }

    /// The operation is over and the connection in a known state: back to the pool.
    pub(crate) fn release(mut self) {
        drop(self.connection.take());
    }
}

impl<DB: Database> Drop for Lease<DB> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            // Out of the pool, then closed by dropping its socket: no goodbye to send to a
            // database that may not be listening.
            drop(connection.detach());
        }
    }
}
