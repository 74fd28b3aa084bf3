//! The payments service's settings: Keel's server settings under `server`, plus storage and
//! its timeouts, idempotency retention, the optional per-account rate limit, ListPayments page
//! sizes, the optional Redis, and the readiness checks of both. Loaded by
//! [`keel::config::Loader`] with the `PAYMENTS` prefix (`PAYMENTS_DATABASE_URL`,
//! `PAYMENTS_SERVER_LISTEN`, ...).

use std::time::Duration;

use keel::config::{Checks, DurationText, ServerConfig, Validate};
use serde::{Deserialize, Serialize};

/// The largest `list_max_page_size` accepted: 10,000 payments of up to about 21 KB each make
/// a page of at most about 200 MB in memory.
const MAX_PAGE_SIZE_LIMIT: u32 = 10_000;

/// Everything `payments` needs to start. `Default` runs on embedded SQLite with no Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Storage: `sqlite://PATH` (created if missing) or `postgres://...`. SQLite by default,
    /// in `data/payments.db` under the working directory, so nothing needs installing.
    pub database_url: String,
    /// Connections to the database (read connections on SQLite, which writes through one).
    /// Default 16: keeps a small PostgreSQL busy without exhausting its 100 connections when a
    /// few replicas run.
    pub database_max_connections: u32,
    /// The longest one database statement may run, enforced by the database (PostgreSQL's
    /// `statement_timeout`, which also ends waits for row locks; SQLite's busy timeout, how long
    /// a write waits for another process's lock). Default 5 s: the ledger's statements take
    /// milliseconds, even queued behind hot accounts. At most `database_transaction_timeout`,
    /// so the server ends what the service gave up on.
    #[serde(with = "humantime_serde")]
    pub database_statement_timeout: Duration,
    /// The longest an operation's statements may take, from asking for a connection to the
    /// last one before COMMIT, enforced by the service itself: it is what ends an operation
    /// when the network goes silent and no server timeout can answer. Then the caller gets
    /// UNAVAILABLE with RetryInfo, nothing took effect, and the connection is closed. Default 5 s:
    /// room for a burst's queueing, an answer well before callers' deadlines.
    #[serde(with = "humantime_serde")]
    pub database_transaction_timeout: Duration,
    /// The longest COMMIT may take to answer, enforced by the service. Then the caller gets
    /// UNAVAILABLE and the outcome is unknown: retrying with the same idempotency key returns
    /// the payment if it committed and makes it if not. A write answers within the transaction
    /// plus the commit timeout. Default 5 s: a commit is one flush to disk (and, with
    /// synchronous replication, a standby's acknowledgement).
    #[serde(with = "humantime_serde")]
    pub database_commit_timeout: Duration,
    /// Group commit: most payments committed in one transaction; `1` commits every payment in
    /// a transaction of its own. Default 256. Payments waiting together share a transaction,
    /// each with its own outcome, so under load the database does a few statements and one
    /// commit for many payments; a lone payment is never held back to wait for others.
    pub payment_batch_size: usize,
    /// Group commit: tasks committing batches concurrently. Default 0, the backend's best:
    /// 1 on SQLite (one writer), 2 on PostgreSQL (one gathers the next batch while the other
    /// commits).
    pub payment_committers: usize,
    /// How long idempotency keys are kept. At least 24 h, as clients retry across a day.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// Payments per second one payer account may start (`0`: no limit).
    pub rate_limit_per_account: u32,
    /// Redis, `redis://[user[:password]@]host[:port][/db]`, or empty (the default) for none.
    /// When set, it holds the rate limiter's state (one budget across instances) and a fast
    /// path for idempotent replays; the database stays the source of truth, and a Redis
    /// outage only makes the limiter admit and replays go to the database.
    pub redis_url: String,
    /// Prefix of every Redis key this service writes, so deployments can share a server.
    pub redis_key_prefix: String,
    /// The longest one Redis command (connecting included) may take before the payment goes
    /// on without Redis. Default 250 ms: Redis answers in well under a millisecond, and a
    /// payment should not wait long for a helper it can do without.
    #[serde(with = "humantime_serde")]
    pub redis_command_timeout: Duration,
    /// How often the readiness checks probe the database (critical: failing, the service is
    /// NOT_SERVING and `/readyz` 503) and Redis when configured (degraded only). Probes run in
    /// the background; `/readyz` and health calls answer from the last results. Default 5 s:
    /// an outage shows within interval plus timeout, at one query per interval.
    #[serde(with = "humantime_serde")]
    pub readiness_check_interval: Duration,
    /// How long one readiness probe may take before it counts as failed. Default 2 s: a
    /// database that cannot answer `SELECT 1` in that time cannot serve payments either.
    #[serde(with = "humantime_serde")]
    pub readiness_check_timeout: Duration,
    /// ListPayments: the page size of a request that sets none. Default 50.
    pub list_default_page_size: u32,
    /// ListPayments: the largest page size; a request for more gets this many. Default 1000.
    /// A page is read into memory whole (a payment takes up to about 21 KB), and also ends
    /// before it would pass `server.limits.max_send_message_size`.
    pub list_max_page_size: u32,
    /// Serve REST/JSON (the contract's `google.api.http` rules) and gRPC-Web on the gRPC
    /// port as well, calling the services in-process. On by default, so `curl` works
    /// against a fresh `payments`.
    pub rest_gateway: bool,
    /// Keel's server settings (listeners, HTTP/2, limits, shutdown).
    pub server: ServerConfig,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            database_url: "sqlite://data/payments.db".to_owned(),
            database_max_connections: 16,
            database_statement_timeout: Duration::from_secs(5),
            database_transaction_timeout: Duration::from_secs(5),
            database_commit_timeout: Duration::from_secs(5),
            payment_batch_size: 256,
            payment_committers: 0,
            idempotency_retention: Duration::from_secs(24 * 3600),
            rate_limit_per_account: 0,
            redis_url: String::new(),
            redis_key_prefix: "payments:".to_owned(),
            redis_command_timeout: Duration::from_millis(250),
            readiness_check_interval: Duration::from_secs(5),
            readiness_check_timeout: Duration::from_secs(2),
            list_default_page_size: 50,
            list_max_page_size: 1000,
            rest_gateway: true,
            server: ServerConfig::default(),
        }
    }
}

impl Validate for PaymentsConfig {
    fn check(&self, checks: &mut Checks) {
        checks.nested("server", &self.server);
        let url = &self.database_url;
        checks.require(
            ["sqlite://", "sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.starts_with(scheme)),
            "database_url",
            format_args!("{url:?}"),
            "must start with sqlite:// (embedded) or postgres:// (server)",
        );
        checks.at_least(
            "database_max_connections",
            self.database_max_connections,
            1,
            "",
        );
        checks.at_least("payment_batch_size", self.payment_batch_size, 1, "");
        checks.at_least("list_default_page_size", self.list_default_page_size, 1, "");
        for (key, value) in [
            (
                "database_statement_timeout",
                self.database_statement_timeout,
            ),
            (
                "database_transaction_timeout",
                self.database_transaction_timeout,
            ),
            ("database_commit_timeout", self.database_commit_timeout),
            ("redis_command_timeout", self.redis_command_timeout),
            ("readiness_check_interval", self.readiness_check_interval),
            ("readiness_check_timeout", self.readiness_check_timeout),
        ] {
            checks.positive_duration(key, value);
        }
        checks.require(
            self.database_statement_timeout <= self.database_transaction_timeout,
            "database_statement_timeout",
            DurationText(self.database_statement_timeout),
            format!(
                "must not exceed database_transaction_timeout ({}), or the database goes on \
                 with (and holds the locks of) statements the service gave up on",
                DurationText(self.database_transaction_timeout)
            ),
        );
        let (default_page, max_page) = (self.list_default_page_size, self.list_max_page_size);
        checks.require(
            max_page >= default_page,
            "list_max_page_size",
            max_page,
            format!("must be at least list_default_page_size ({default_page})"),
        );
        checks.require(
            max_page <= MAX_PAGE_SIZE_LIMIT,
            "list_max_page_size",
            max_page,
            format!("must be at most {MAX_PAGE_SIZE_LIMIT}: a page is read into memory whole"),
        );
        let redis = &self.redis_url;
        if redis.starts_with("rediss://") {
            checks.require(
                false,
                "redis_url",
                format_args!("{redis:?}"),
                "TLS (rediss://) is not built in; use redis:// on a trusted network",
            );
        } else {
            checks.require(
                redis.is_empty() || redis.starts_with("redis://"),
                "redis_url",
                format_args!("{redis:?}"),
                "must start with redis://, or be empty for no Redis",
            );
        }
        checks.require(
            self.idempotency_retention >= Duration::from_secs(24 * 3600),
            "idempotency_retention",
            DurationText(self.idempotency_retention),
            "must be at least 24h: clients retry a failed request for up to a day",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::config::Loader;

    fn loader() -> Loader {
        Loader::new("PAYMENTS").env(Vec::<(String, String)>::new())
    }

    #[test]
    fn defaults_run_on_sqlite() {
        let config: PaymentsConfig = loader().load().unwrap();
        assert!(config.database_url.starts_with("sqlite://"));
        assert!(config.redis_url.is_empty(), "no Redis unless configured");
    }

    #[test]
    fn a_redis_url_is_accepted() {
        let config: PaymentsConfig = loader()
            .set("redis_url", "redis://127.0.0.1:6379/0", "--redis-url")
            .load()
            .unwrap();
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn flags_and_environment_reach_nested_server_keys() {
        let config: PaymentsConfig = loader()
            .env([("PAYMENTS_SERVER_LISTEN", "127.0.0.1:7000")])
            .set(
                "database_url",
                "postgres://postgres@127.0.0.1/test",
                "--database-url",
            )
            .load()
            .unwrap();
        assert_eq!(config.server.listen.port(), 7000);
        assert!(config.database_url.starts_with("postgres://"));
    }

    #[test]
    fn bad_values_name_their_keys() {
        for (key, value, expected) in [
            (
                "database_url",
                "mysql://x",
                r#"database_url = "mysql://x": must start with sqlite:// (embedded) or postgres:// (server)"#,
            ),
            (
                "idempotency_retention",
                "1h",
                "idempotency_retention = 1h: must be at least 24h: clients retry a failed \
                 request for up to a day",
            ),
            (
                "payment_batch_size",
                "0",
                "payment_batch_size = 0: must be at least 1",
            ),
            (
                "redis_url",
                "http://127.0.0.1:6379",
                r#"redis_url = "http://127.0.0.1:6379": must start with redis://, or be empty for no Redis"#,
            ),
            (
                "redis_url",
                "rediss://127.0.0.1:6379",
                r#"redis_url = "rediss://127.0.0.1:6379": TLS (rediss://) is not built in; use redis:// on a trusted network"#,
            ),
            (
                "database_commit_timeout",
                "0s",
                "database_commit_timeout = 0s: must be above 0s",
            ),
            (
                "list_default_page_size",
                "0",
                "list_default_page_size = 0: must be at least 1",
            ),
            (
                "list_max_page_size",
                "20",
                "list_max_page_size = 20: must be at least list_default_page_size (50)",
            ),
            (
                "list_max_page_size",
                "10001",
                "list_max_page_size = 10001: must be at most 10000: a page is read into memory \
                 whole",
            ),
            (
                "database_statement_timeout",
                "10s",
                "database_statement_timeout = 10s: must not exceed database_transaction_timeout \
                 (5s), or the database goes on with (and holds the locks of) statements the \
                 service gave up on",
            ),
            (
                "readiness_check_interval",
                "0s",
                "readiness_check_interval = 0s: must be above 0s",
            ),
            (
                "server.shutdown.drain_delay",
                "1h",
                "server.shutdown.drain_delay = 1h: must be shorter than shutdown.timeout (30s), \
                 or in-flight RPCs get no time to finish",
            ),
            (
                "server.http2.max_frame_size",
                "1",
                "server.http2.max_frame_size = 1: must be between 16384 and 16777215 bytes",
            ),
        ] {
            let err = loader()
                .set(key, value, "--set")
                .load::<PaymentsConfig>()
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid setting from --set: {expected}"),
                "{key}"
            );
        }
    }
}
