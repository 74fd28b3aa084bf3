//! The embedded log: one SQLite file in WAL mode with `synchronous = FULL`, for a bridge on
//! one machine with nothing else installed.
//!
//! Appends are group-committed by one task: requests waiting together share a transaction
//! and its one fsync, and each hears back only after that commit. A record's key is unique in
//! the table, which is the deduplication; records stay at least `dedupe_window` and until
//! every consumer is past them. A consumer is a named cursor, `done_through`, below the oldest
//! record it has not finished; it is written at most every `cursor_flush_interval`, so a crash
//! repeats at most that much finished work (which the target's idempotency keys make
//! harmless).

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Appended, DeadLetter, Delivery, LogError, LogReader, LogWriter};
use crate::record::Record;

/// Where the embedded log lives and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The SQLite file, created with its directory if missing.
    pub path: PathBuf,
    /// How long a key is remembered after its record was appended, so a device's resend is
    /// recognised: at least as long as devices retry. Default 24 h.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Most appends committed in one transaction. Default 256.
    pub max_batch: usize,
    /// Appends waiting for the committing task, beyond which `append` waits. Default 4096.
    pub queue: usize,
    /// How often a reader looks for records appended by another process (records appended
    /// through the same [`EmbeddedLog`] wake it at once). Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most time between a record being done and its consumer's cursor being written.
    /// Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub cursor_flush_interval: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/bridge-log.db"),
            dedupe_window: Duration::from_secs(24 * 3600),
            max_batch: 256,
            queue: 4096,
            poll_interval: Duration::from_millis(100),
            cursor_flush_interval: Duration::from_millis(50),
        }
    }
}

/// How often the committing task deletes records every consumer is past and whose
/// deduplication window has closed.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        device TEXT NOT NULL,
        route TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT NOT NULL,
        appended_ms INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        device TEXT NOT NULL,
        route TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS cursors (
        consumer TEXT PRIMARY KEY,
        done_through INTEGER NOT NULL
    )",
];

/// An open embedded log, from which writers and readers are made.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    pool: SqlitePool,
    config: EmbeddedConfig,
    appended: Arc<Notify>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log file.
    pub async fn open(config: EmbeddedConfig) -> Result<Self, LogError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| {
                LogError::Refused(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // A local file: no point pinging a connection before each use (sqlx's default),
        // which would cost a round trip to the connection's thread per query.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|error| {
                LogError::Refused(format!("cannot open {}: {error}", config.path.display()))
            })?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(unavailable)?;
        }
        Ok(Self {
            pool,
            config,
            appended: Arc::new(Notify::new()),
        })
    }

    /// A writer, with its own committing task (which ends when the writer and its clones
    /// are dropped).
    pub fn writer(&self) -> EmbeddedWriter {
        let (sender, receiver) = mpsc::channel(self.config.queue.max(1));
        tokio::spawn(commit_appends(self.clone(), receiver));
        EmbeddedWriter {
            appends: sender,
            pool: self.pool.clone(),
        }
    }

    /// The reader of consumer `consumer`, starting after its cursor (at the first record for
    /// a new consumer).
    pub async fn reader(&self, consumer: &str) -> Result<EmbeddedReader, LogError> {
        let done_through: i64 =
            sqlx::query_scalar("SELECT done_through FROM cursors WHERE consumer = ?")
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
                .unwrap_or(0);
        Ok(EmbeddedReader {
            log: self.clone(),
            consumer: consumer.to_owned(),
            next_seq: done_through + 1,
            outstanding: BTreeSet::new(),
            done_through,
            persisted: done_through,
            last_flush: Instant::now(),
        })
    }

    /// Every dead letter, oldest first (for tools and tests).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, LogError> {
        let rows = sqlx::query(
            "SELECT key, device, route, payload, headers, reason, detail
             FROM dead_letters ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    record: record_from(row)?,
                    reason: row.get("reason"),
                    detail: row.get("detail"),
                })
            })
            .collect()
    }
}

/// Appends to an [`EmbeddedLog`].
#[derive(Debug, Clone)]
pub struct EmbeddedWriter {
    appends: mpsc::Sender<PendingAppend>,
    pool: SqlitePool,
}

type PendingAppend = (Record, oneshot::Sender<Result<Appended, LogError>>);

impl LogWriter for EmbeddedWriter {
    async fn append(&self, record: Record) -> Result<Appended, LogError> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send((record, reply))
            .await
            .map_err(|_| LogError::Unavailable("the log's committing task stopped".into()))?;
        answer
            .await
            .map_err(|_| LogError::Unavailable("the log's committing task stopped".into()))?
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), LogError> {
        let DeadLetter {
            record,
            reason,
            detail,
        } = letter;
        sqlx::query(
            "INSERT INTO dead_letters (key, device, route, payload, headers, reason, detail, at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&record.key)
        .bind(&record.device)
        .bind(&record.route)
        .bind(record.payload.as_ref())
        .bind(headers_json(&record.headers))
        .bind(reason)
        .bind(detail)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn check(&self) -> Result<(), LogError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

/// The committing task: takes the appends waiting together (up to `max_batch`), stores them
/// in one transaction, then answers each.
async fn commit_appends(log: EmbeddedLog, mut appends: mpsc::Receiver<PendingAppend>) {
    let mut batch = Vec::with_capacity(log.config.max_batch);
    let mut last_prune = Instant::now();
    while appends.recv_many(&mut batch, log.config.max_batch).await > 0 {
        let records: Vec<&Record> = batch.iter().map(|(record, _)| record).collect();
        match insert(&log.pool, &records).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                log.appended.notify_waiters();
            }
            Err(error) => {
                tracing::warn!(%error, records = batch.len(), "embedded log: append failed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_INTERVAL {
            last_prune = Instant::now();
            if let Err(error) = prune(&log).await {
                tracing::warn!(%error, "embedded log: pruning failed");
            }
        }
    }
}

/// Rows per `INSERT`: six variables each, far below SQLite's limit of 32,766.
const ROWS_PER_INSERT: usize = 1_000;

/// Stores `records` at once: one multi-row `INSERT ... RETURNING` per [`ROWS_PER_INSERT`]
/// (one statement is atomic on its own; more share a transaction). Each statement is a round
/// trip to the connection's thread, so a statement per record would cost a thread handoff per
/// record (docs/ARCHITECTURE.md).
async fn insert(pool: &SqlitePool, records: &[&Record]) -> Result<Vec<Appended>, LogError> {
    let appended_ms = now_ms();
    let mut stored = HashSet::with_capacity(records.len());
    if records.len() <= ROWS_PER_INSERT {
        let mut connection = pool.acquire().await.map_err(unavailable)?;
        stored.extend(insert_rows(&mut connection, records, appended_ms).await?);
    } else {
        let mut transaction = pool.begin().await.map_err(unavailable)?;
        for chunk in records.chunks(ROWS_PER_INSERT) {
            stored.extend(insert_rows(&mut transaction, chunk, appended_ms).await?);
        }
        transaction.commit().await.map_err(unavailable)?;
    }
    // A key returned was stored by its first record in the batch; a later record with the
    // same key, in this batch or before it, is a duplicate.
    Ok(records
        .iter()
        .map(|record| {
            if stored.remove(&record.key) {
                Appended::Stored
            } else {
                Appended::Duplicate
            }
        })
        .collect())
}

/// Inserts `records` in one statement; the keys actually stored (not already there).
async fn insert_rows(
    connection: &mut SqliteConnection,
    records: &[&Record],
    appended_ms: i64,
) -> Result<Vec<String>, LogError> {
    let mut query = QueryBuilder::<Sqlite>::new(
        "INSERT INTO records (key, device, route, payload, headers, appended_ms) ",
    );
    query.push_values(records, |mut row, record| {
        row.push_bind(record.key.as_str())
            .push_bind(record.device.as_str())
            .push_bind(record.route.as_str())
            .push_bind(record.payload.as_ref())
            .push_bind(headers_json(&record.headers))
            .push_bind(appended_ms);
    });
    query.push(" ON CONFLICT (key) DO NOTHING RETURNING key");
    query
        .build_query_scalar::<String>()
        .fetch_all(connection)
        .await
        .map_err(unavailable)
}

/// Deletes the records every consumer is past and whose keys no longer need remembering.
async fn prune(log: &EmbeddedLog) -> Result<(), LogError> {
    let window_ms = i64::try_from(log.config.dedupe_window.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "DELETE FROM records
         WHERE seq <= (SELECT COALESCE(MIN(done_through), 0) FROM cursors) AND appended_ms < ?",
    )
    .bind(now_ms().saturating_sub(window_ms))
    .execute(&log.pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// One consumer of an [`EmbeddedLog`].
#[derive(Debug)]
pub struct EmbeddedReader {
    log: EmbeddedLog,
    consumer: String,
    /// The first record not yet handed out.
    next_seq: i64,
    /// Records handed out and not yet done.
    outstanding: BTreeSet<i64>,
    /// Every record at or below this one is done.
    done_through: i64,
    /// The cursor as last written.
    persisted: i64,
    last_flush: Instant,
}

impl EmbeddedReader {
    async fn flush(&mut self) -> Result<(), LogError> {
        self.last_flush = Instant::now();
        if self.done_through == self.persisted {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO cursors (consumer, done_through) VALUES (?, ?)
             ON CONFLICT (consumer) DO UPDATE SET done_through = excluded.done_through",
        )
        .bind(&self.consumer)
        .bind(self.done_through)
        .execute(&self.log.pool)
        .await
        .map_err(unavailable)?;
        self.persisted = self.done_through;
        Ok(())
    }
}

impl LogReader for EmbeddedReader {
    type Token = i64;

    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery<i64>>, LogError> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the query, so an append committed meanwhile is not missed.
            let appended = self.log.appended.clone();
            let notified = appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let rows = sqlx::query(
                "SELECT seq, key, device, route, payload, headers FROM records
                 WHERE seq >= ? ORDER BY seq LIMIT ?",
            )
            .bind(self.next_seq)
            .bind(limit)
            .fetch_all(&self.log.pool)
            .await
            .map_err(unavailable)?;
            if !rows.is_empty() {
                let mut deliveries = Vec::with_capacity(rows.len());
                for row in &rows {
                    let seq: i64 = row.get("seq");
                    self.outstanding.insert(seq);
                    self.next_seq = seq + 1;
                    deliveries.push(Delivery {
                        record: record_from(row)?,
                        token: seq,
                    });
                }
                return Ok(deliveries);
            }
            self.flush().await?;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let pause = (deadline - now).min(self.log.config.poll_interval);
            let _ = tokio::time::timeout(pause, notified).await;
        }
    }

    async fn done(&mut self, seq: i64) -> Result<(), LogError> {
        self.outstanding.remove(&seq);
        self.done_through = match self.outstanding.first() {
            Some(oldest) => oldest - 1,
            None => self.next_seq - 1,
        };
        if self.last_flush.elapsed() >= self.log.config.cursor_flush_interval {
            self.flush().await?;
        }
        Ok(())
    }

    async fn lag(&mut self) -> Result<Option<u64>, LogError> {
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM records")
            .fetch_one(&self.log.pool)
            .await
            .map_err(unavailable)?;
        Ok(Some(u64::try_from(last - (self.next_seq - 1)).unwrap_or(0)))
    }
}

fn record_from(row: &sqlx::sqlite::SqliteRow) -> Result<Record, LogError> {
    let headers: String = row.get("headers");
    let payload: Vec<u8> = row.get("payload");
    Ok(Record {
        device: row.get("device"),
        key: row.get("key"),
        route: row.get("route"),
        payload: Bytes::from(payload),
        headers: serde_json::from_str(&headers).map_err(|error| {
            LogError::Refused(format!("a stored record's headers do not parse: {error}"))
        })?,
    })
}

fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("string pairs always serialize")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn unavailable(error: sqlx::Error) -> LogError {
    LogError::Unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_test_support::Dir;

    /// Long enough for any append in these tests; a wait that ends empty fails them.
    const WAIT: Duration = Duration::from_secs(10);

    fn record(device: &str, key: &str) -> Record {
        Record {
            device: device.into(),
            key: key.into(),
            route: "pay".into(),
            payload: Bytes::from(key.as_bytes().to_vec()),
            headers: vec![("traceparent".into(), format!("tp-{key}"))],
        }
    }

    async fn open(dir: &std::path::Path) -> EmbeddedLog {
        EmbeddedLog::open(EmbeddedConfig {
            path: dir.join("log.db"),
            cursor_flush_interval: Duration::ZERO,
            ..EmbeddedConfig::default()
        })
        .await
        .expect("the log opens")
    }

    #[tokio::test]
    async fn appends_are_read_in_order_and_duplicates_are_not_stored() {
        let dir = Dir::new();
        let log = open(dir.path()).await;
        let writer = log.writer();
        for key in ["a", "b", "c"] {
            assert_eq!(
                writer.append(record("d1", key)).await.unwrap(),
                Appended::Stored
            );
        }
        assert_eq!(
            writer.append(record("d1", "b")).await.unwrap(),
            Appended::Duplicate
        );
        let mut reader = log.reader("deliver").await.unwrap();
        assert_eq!(reader.lag().await.unwrap(), Some(3));
        let batch = reader.next(10, WAIT).await.unwrap();
        let keys: Vec<_> = batch.iter().map(|d| d.record.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(batch[0].record, record("d1", "a"));
        assert_eq!(reader.lag().await.unwrap(), Some(0));
    }

    #[tokio::test]
    async fn one_batch_stores_the_first_of_each_key_and_counts_the_rest_as_duplicates() {
        let dir = Dir::new();
        let log = open(dir.path()).await;
        insert(&log.pool, &[&record("d1", "old")]).await.unwrap();
        let batch = [
            record("d1", "a"),
            record("d2", "old"),
            record("d1", "a"),
            record("d2", "b"),
        ];
        let outcomes = insert(&log.pool, &batch.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        use Appended::{Duplicate, Stored};
        assert_eq!(outcomes, [Stored, Duplicate, Duplicate, Stored]);
        // Over ROWS_PER_INSERT records: several statements in one transaction.
        let many: Vec<Record> = (0..ROWS_PER_INSERT + 5)
            .map(|i| record("d3", &format!("k{}", i % (ROWS_PER_INSERT + 1))))
            .collect();
        let outcomes = insert(&log.pool, &many.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let stored = outcomes.iter().filter(|o| **o == Stored).count();
        assert_eq!(stored, ROWS_PER_INSERT + 1);
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
            .fetch_one(&log.pool)
            .await
            .unwrap();
        assert_eq!(rows, 3 + ROWS_PER_INSERT as i64 + 1);
    }

    #[tokio::test]
    async fn a_new_reader_resumes_after_the_oldest_record_not_done() {
        let dir = Dir::new();
        let log = open(dir.path()).await;
        let writer = log.writer();
        for key in ["a", "b", "c", "d"] {
            writer.append(record("d1", key)).await.unwrap();
        }
        let mut reader = log.reader("deliver").await.unwrap();
        let batch = reader.next(4, WAIT).await.unwrap();
        let tokens: Vec<i64> = batch.iter().map(|d| d.token).collect();
        // a, c and d are done; b is not: a restart hands out b, c and d again.
        for token in [tokens[0], tokens[2], tokens[3]] {
            reader.done(token).await.unwrap();
        }
        drop(reader);
        let mut again = log.reader("deliver").await.unwrap();
        let keys: Vec<_> = again
            .next(10, WAIT)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.record.key)
            .collect();
        assert_eq!(keys, ["b", "c", "d"]);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_an_append() {
        let dir = Dir::new();
        let log = open(dir.path()).await;
        let mut reader = log.reader("deliver").await.unwrap();
        let waiting = tokio::spawn(async move { reader.next(10, WAIT).await });
        let writer = log.writer();
        writer.append(record("d2", "x")).await.unwrap();
        let batch = waiting.await.unwrap().unwrap();
        assert_eq!(batch[0].record.key, "x");
    }

    #[tokio::test]
    async fn dead_letters_keep_the_record_and_the_reason() {
        let dir = Dir::new();
        let log = open(dir.path()).await;
        let writer = log.writer();
        let letter = DeadLetter {
            record: record("d3", ""),
            reason: "MISSING_KEY".into(),
            detail: "no request_id".into(),
        };
        writer.dead_letter(letter.clone()).await.unwrap();
        assert_eq!(log.dead_letters().await.unwrap(), vec![letter]);
    }

    #[tokio::test]
    async fn the_log_survives_reopening() {
        let dir = Dir::new();
        {
            let log = open(dir.path()).await;
            log.writer().append(record("d1", "kept")).await.unwrap();
        }
        let log = open(dir.path()).await;
        assert_eq!(
            log.writer().append(record("d1", "kept")).await.unwrap(),
            Appended::Duplicate
        );
        let mut reader = log.reader("deliver").await.unwrap();
        assert_eq!(reader.next(1, WAIT).await.unwrap()[0].record.key, "kept");
    }
}
