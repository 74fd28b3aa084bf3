//! The PostgreSQL backend: a connection pool by URL, migrations from `migrations/postgres`.
//!
//! Concurrency: transactions run at PostgreSQL's default READ COMMITTED isolation and lock the
//! rows they change with `SELECT ... FOR UPDATE`, always in the same order (the payment, then
//! the accounts by ascending id; see `ledger.rs`). Chosen over SERIALIZABLE with retries
//! because transfers between a few hot accounts are this service's normal load: under
//! SERIALIZABLE they abort each other and burn work on retries, while ordered row locks make
//! them queue, never deadlock, and see every committed balance. Serialization failures and
//! deadlocks (which only a foreign transaction on the same tables could cause) are still
//! retried, then reported as [`StoreError::Conflict`].
//!
//! Timeouts: every session runs with `statement_timeout` ([`StoreConfig::statement_timeout`])
//! and `idle_in_transaction_session_timeout` ([`StoreConfig::transaction_timeout`]), so the
//! server ends a stuck statement and rolls back a transaction whose client went away, freeing
//! their row locks; the client's own deadlines are in `deadline.rs`. Migrations run on a
//! connection of their own without a statement timeout, as a long migration, or waiting for
//! another instance's, is legitimate.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::config::StoreConfig;
use super::engine::{Backend, Engine};
use super::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A PostgreSQL database.
pub(crate) struct Postgres {
    pool: PgPool,
}

impl Backend for Postgres {
    type Db = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    const BEGIN: &'static str = "BEGIN";

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

/// Connects to `url` (`postgres://` or `postgresql://`) and applies pending migrations.
pub(crate) async fn open(url: &str, config: StoreConfig) -> Result<Engine<Postgres>, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|error| StoreError::Config(format!("PostgreSQL URL: {error}")))?
        .application_name("payments")
        .options([
            ("statement_timeout", milliseconds(config.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                milliseconds(config.transaction_timeout),
            ),
        ]);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await?;
    // Out of the pool for good, so its session settings never serve an operation.
    let mut migrating = pool.acquire().await?.detach();
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut migrating)
        .await?;
    MIGRATOR.run(&mut migrating).await?;
    let _ = migrating.close().await;
    Ok(Engine::new(Postgres { pool }, config))
}

/// A duration as PostgreSQL's integer milliseconds, at least 1 (0 would turn a timeout off).
fn milliseconds(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}
