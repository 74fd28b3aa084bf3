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

use std::str::FromStr;

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
        .application_name("payments");
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(Engine::new(Postgres { pool }, config))
}
