//! The payments service's settings: Keel's server settings under `server`, plus storage,
//! idempotency retention, the optional per-account rate limit and the optional Redis. Loaded by
//! [`keel::config::Loader`] with the `PAYMENTS` prefix (`PAYMENTS_DATABASE_URL`,
//! `PAYMENTS_SERVER_LISTEN`, ...).

use std::time::Duration;

use keel::config::{ServerConfig, Validate, Violation};
use serde::{Deserialize, Serialize};

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
    /// Group commit: most payments committed in one transaction; `1` commits every payment in
    /// a transaction of its own. Default 64. Payments waiting together share a transaction,
    /// each with its own outcome, so under load the database does a few statements and one
    /// commit for many payments; a lone payment is never held back to wait for others.
    pub payment_batch_size: usize,
    /// Group commit: tasks committing batches concurrently. Default 2: one gathers the next
    /// batch while the other commits.
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
            payment_batch_size: 64,
            payment_committers: 2,
            idempotency_retention: Duration::from_secs(24 * 3600),
            rate_limit_per_account: 0,
            redis_url: String::new(),
            redis_key_prefix: "payments:".to_owned(),
            rest_gateway: true,
            server: ServerConfig::default(),
        }
    }
}

impl Validate for PaymentsConfig {
    fn validate(&self) -> Vec<Violation> {
        let mut bad: Vec<Violation> = self
            .server
            .validate()
            .into_iter()
            .map(|v| Violation {
                key: format!("server.{}", v.key),
                message: v.message,
            })
            .collect();
        let url = &self.database_url;
        if !["sqlite://", "sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            bad.push(Violation::new(
                "database_url",
                "must start with sqlite:// (embedded) or postgres:// (server)",
            ));
        }
        for (key, value) in [
            (
                "database_max_connections",
                self.database_max_connections as usize,
            ),
            ("payment_batch_size", self.payment_batch_size),
            ("payment_committers", self.payment_committers),
        ] {
            if value == 0 {
                bad.push(Violation::new(key, "must be at least 1"));
            }
        }
        if self.redis_url.starts_with("rediss://") {
            bad.push(Violation::new(
                "redis_url",
                "TLS (rediss://) is not built in; use redis:// on a trusted network",
            ));
        } else if !self.redis_url.is_empty() && !self.redis_url.starts_with("redis://") {
            bad.push(Violation::new(
                "redis_url",
                "must start with redis://, or be empty for no Redis",
            ));
        }
        if self.idempotency_retention < Duration::from_secs(24 * 3600) {
            bad.push(Violation::new(
                "idempotency_retention",
                "must be at least 24h: clients retry a failed request for up to a day",
            ));
        }
        bad
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
        for (key, value, expect) in [
            ("database_url", "mysql://x", "`database_url`"),
            ("idempotency_retention", "1h", "`idempotency_retention`"),
            ("payment_batch_size", "0", "`payment_batch_size`"),
            ("redis_url", "http://127.0.0.1:6379", "`redis_url`"),
            ("redis_url", "rediss://127.0.0.1:6379", "TLS"),
            (
                "server.shutdown.drain_delay",
                "1h",
                "`server.shutdown.drain_delay`",
            ),
        ] {
            let err = loader()
                .set(key, value, "--set")
                .load::<PaymentsConfig>()
                .unwrap_err();
            assert!(err.to_string().contains(expect), "{key}: {err}");
        }
    }
}
