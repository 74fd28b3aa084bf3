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
    /// before failing with [`StoreError::Unavailable`]. Default 5 s: long enough to ride out a
    /// burst, short enough that a client sees an outage before its own deadline.
    ///
    /// [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable
    pub acquire_timeout: Duration,
    /// SQLite only: how long a write waits for another process holding the database's write
    /// lock before failing with [`StoreError::Unavailable`]. Default 5 s, as `acquire_timeout`.
    ///
    /// [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable
    pub busy_timeout: Duration,
    /// How many times a transaction aborted by the database for a serialization failure or a
    /// deadlock is run again before failing with [`StoreError::Conflict`]. Default 5.
    ///
    /// [`StoreError::Conflict`]: crate::store::StoreError::Conflict
    pub max_conflict_retries: u32,
    /// Most payments committed in one transaction by group commit (see
    /// [`open_with`](crate::store::open_with)); 1 turns group commit off, every payment then
    /// runs in a transaction of its own. Default 64: past that, a batch's statements grow
    /// without saving more round trips or commits worth having.
    pub batch_size: usize,
    /// Tasks committing batches of payments concurrently (group commit only). Default 2: one
    /// fills its batch while the other waits for the database, and with a few hot accounts
    /// more would mostly wait on each other's row locks.
    pub committers: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            max_conflict_retries: 5,
            batch_size: 64,
            committers: 2,
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

    /// Sets [`StoreConfig::busy_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = payments::store::StoreConfig::default().busy_timeout(Duration::from_millis(200));
    /// assert_eq!(config.busy_timeout, Duration::from_millis(200));
    /// ```
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
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

    /// Sets [`StoreConfig::committers`] (at least 1).
    ///
    /// ```
    /// let config = payments::store::StoreConfig::default().committers(4);
    /// assert_eq!(config.committers, 4);
    /// ```
    #[must_use]
    pub fn committers(mut self, tasks: usize) -> Self {
        self.committers = tasks.max(1);
        self
    }
}
