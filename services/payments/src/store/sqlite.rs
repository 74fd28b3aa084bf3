//! The SQLite backend: one database file (WAL mode), migrations from `migrations/sqlite`.
//!
//! SQLite allows one writer at a time. Writes go through a pool of exactly one connection, so
//! concurrent operations of this process queue for it in order instead of polling the file
//! lock, and every write transaction starts with `BEGIN IMMEDIATE`, taking the write lock at
//! once: a transaction that read first and locked later could fail with SQLITE_BUSY mid-way
//! when another process wrote in between. Another process holding the lock is waited for up to
//! [`StoreConfig::statement_timeout`] (SQLite's busy timeout), then the operation fails with
//! [`StoreError::Unavailable`].
//! Reads run on their own pool of read-only connections, which WAL lets proceed while a write
//! is in progress.
//!
//! Durability: `synchronous = FULL`, so a committed payment survives a power cut, not only a
//! crash of the process.
//!
//! WAL checkpoints: the writer copies the WAL back into the database file once the WAL holds
//! [`WRITER_CHECKPOINT_PAGES`], inside the commit that crossed it. SQLite's default, 1,000
//! pages, copied a hot page (an account's, an index's right edge) ten times as often: 5,161
//! payments/s against 6,033 at 64 in flight (`scripts/bench-payments.sh`, 5 s runs). A
//! checkpointing task beside the writer (PASSIVE, every 0.2, 1 or 3 s) measured the same as
//! this within noise over 10 s runs, so there is none.

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::config::StoreConfig;
use super::engine::{Backend, Engine};
use super::error::StoreError;

/// WAL pages (4 KiB each) past which a commit checkpoints: 40 MiB of WAL at most, in normal
/// operation.
const WRITER_CHECKPOINT_PAGES: u32 = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A SQLite database file.
pub(crate) struct Sqlite {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl Backend for Sqlite {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = "sqlite";
    const BEGIN: &'static str = "BEGIN IMMEDIATE";

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

/// Opens (creating if need be, with its directory) the database file `url` names
/// (`sqlite://path/to/file.db`, `sqlite:///absolute/path.db`) and applies pending migrations.
pub(crate) async fn open(url: &str, config: StoreConfig) -> Result<Engine<Sqlite>, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| StoreError::Config(format!("SQLite URL: {error}")))?
        .busy_timeout(config.statement_timeout)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Full);
    let path = options.get_filename().to_owned();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if in_memory || path.as_os_str().is_empty() {
        return Err(StoreError::Config(format!(
            "SQLite URL {url:?} names no file; the store needs one (readers and the writer \
             share it)"
        )));
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Config(format!(
                "cannot create data directory {}: {error}",
                dir.display()
            ))
        })?;
    }

    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(
            options
                .clone()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string()),
        )
        .await?;
    MIGRATOR.run(&writer).await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options.read_only(true))
        .await?;
    Ok(Engine::new(Sqlite { writer, reader }, config))
}
