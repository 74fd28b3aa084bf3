//! Tunables of a store, with the reason for each default.

use std::time::Duration;

/// How a store runs. `StoreConfig::default()` is the production setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// How long idempotency keys are kept at least: [`Store::purge_idempotency_keys`] never
    /// removes a younger key. Default 24 h, what clients retrying after an outage expect
    /// (Stripe's window); the service should not configure less.
    ///
    /// [`Store::purge_idempotency_keys`]: crate::store::Store::purge_idempotency_keys
    pub idempotency_retention: Duration,
    /// Connections to PostgreSQL, or read connections to SQLite (SQLite writes through one
    /// connection). Default 16: enough to keep a small PostgreSQL busy without exhausting its
    /// default limit of 100 connections when a few replicas run.
    pub max_connections: u32,
    /// How long an operation waits for a free connection, or for a new one to be established,
    /// before failing with [`StoreError::Unavailable`]; also bounds connecting at open.
    /// Default 5 s: long enough to ride out a burst, short enough that a client sees an outage
    /// before its own deadline. Within an operation, [`StoreConfig::transaction_timeout`]
    /// bounds it too.
    ///
    /// [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable
    pub acquire_timeout: Duration,
    /// The longest one statement may run, enforced by the database: PostgreSQL's
    /// `statement_timeout` (which also ends a wait for a row lock held by a stuck transaction),
    /// SQLite's busy timeout (how long a write waits for another process holding the file's
    /// write lock). Either fails the operation with [`StoreError::Unavailable`]. Default 5 s:
    /// no statement of the ledger takes more than milliseconds, even queued behind hot accounts.
    ///
    /// [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable
    pub statement_timeout: Duration,
    /// The longest an operation's statements may take, from asking for a connection to the
    /// last statement before COMMIT (a read: to its answer), enforced by the client: it is what
    /// bounds an operation when the network goes silent and no server timeout can answer. On
    /// expiry the operation fails with [`StoreError::Unavailable`], nothing took effect, and its
    /// connection is closed. On PostgreSQL it is also the session's
    /// `idle_in_transaction_session_timeout`, so the server rolls back, and unlocks, a
    /// transaction whose client vanished. Default 5 s, as `acquire_timeout`.
    ///
    /// [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable
    pub transaction_timeout: Duration,
    /// The longest COMMIT may take to answer, enforced by the client. On expiry the operation
    /// fails with [`StoreError::Unavailable`] and its outcome is unknown (COMMIT may have been
    /// carried out); retrying with the same idempotency key settles it. A write thus answers
    /// within `transaction_timeout + commit_timeout`. Default 5 s: a commit is one flush to
    /// disk (and, with synchronous replication, a standby's acknowledgement).
    ///
    /// [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable
    pub commit_timeout: Duration,
    /// How many times a transaction aborted by the database for a serialization failure or a
    /// deadlock is run again before failing with [`StoreError::Conflict`]. Default 5.
    ///
    /// [`StoreError::Conflict`]: crate::store::StoreError::Conflict
    pub max_conflict_retries: u32,
    /// Most payments committed in one transaction by group commit (see
    /// [`open_with`](crate::store::open_with)); 1 turns group commit off, every payment then
    /// runs in a transaction of its own. Default 256: with 256 payments in flight it measured
    /// 23% more payments/s than 64 on SQLite and 10–15% more on PostgreSQL, at lower p99
    /// (docs/BENCHMARKS.md); with fewer in flight a batch is never bigger than what waits.
    pub batch_size: usize,
    /// Tasks committing batches of payments concurrently (group commit only); 0, the default,
    /// picks the backend's best: 1 on SQLite, whose single writer a second committer could only
    /// wait for while splitting the queue into smaller batches (a second one measured 15–21%
    /// fewer payments/s), and 2 on PostgreSQL, where one fills its batch while the other waits
    /// for the database, and more would mostly wait on each other's row locks.
    pub committers: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            transaction_timeout: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(5),
            max_conflict_retries: 5,
            batch_size: 256,
            committers: 0,
        }
    }
}

impl StoreConfig {
    /// Sets [`StoreConfig::idempotency_retention`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = payments::store::StoreConfig::default()
    ///     .idempotency_retention(Duration::from_secs(48 * 3600));
    /// assert_eq!(config.idempotency_retention, Duration::from_secs(172_800));
    /// ```
    #[must_use]
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }

    /// Sets [`StoreConfig::max_connections`] (at least 1).
    ///
    /// ```
    /// let config = payments::store::StoreConfig::default().max_connections(32);
    /// assert_eq!(config.max_connections, 32);
    /// ```
    #[must_use]
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Sets [`StoreConfig::acquire_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = payments::store::StoreConfig::default().acquire_timeout(Duration::from_secs(1));
    /// assert_eq!(config.acquire_timeout, Duration::from_secs(1));
    /// ```
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`StoreConfig::statement_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = payments::store::StoreConfig::default()
    ///     .statement_timeout(Duration::from_millis(200));
    /// assert_eq!(config.statement_timeout, Duration::from_millis(200));
    /// ```
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`StoreConfig::transaction_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = payments::store::StoreConfig::default()
    ///     .transaction_timeout(Duration::from_secs(2));
    /// assert_eq!(config.transaction_timeout, Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// Sets [`StoreConfig::commit_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = payments::store::StoreConfig::default().commit_timeout(Duration::from_secs(2));
    /// assert_eq!(config.commit_timeout, Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn commit_timeout(mut self, timeout: Duration) -> Self {
        self.commit_timeout = timeout;
        self
    }

    /// How long a write may take at most: `transaction_timeout + commit_timeout`.
    pub fn write_timeout(&self) -> Duration {
        self.transaction_timeout + self.commit_timeout
    }

    /// Sets [`StoreConfig::max_conflict_retries`].
    ///
    /// ```
    /// let config = payments::store::StoreConfig::default().max_conflict_retries(0);
    /// assert_eq!(config.max_conflict_retries, 0);
    /// ```
    #[must_use]
    pub fn max_conflict_retries(mut self, retries: u32) -> Self {
        self.max_conflict_retries = retries;
        self
    }

    /// Sets [`StoreConfig::batch_size`] (at least 1; 1 turns group commit off).
    ///
    /// ```
    /// let config = payments::store::StoreConfig::default().batch_size(1);
    /// assert_eq!(config.batch_size, 1);
    /// ```
    #[must_use]
    pub fn batch_size(mut self, payments: usize) -> Self {
        self.batch_size = payments.max(1);
        self
    }

    /// Sets [`StoreConfig::committers`] (0: the backend's default).
    ///
    /// ```
    /// let config = payments::store::StoreConfig::default().committers(4);
    /// assert_eq!(config.committers, 4);
    /// ```
    #[must_use]
    pub fn committers(mut self, tasks: usize) -> Self {
        self.committers = tasks;
        self
    }
}
