//! One Redis connection shared by the rate limiter and the replay cache, built so that a slow
//! or dead Redis costs a payment a bounded delay and never an error.
//!
//! Redis here only ever *helps*: the database is the source of truth, so every user of
//! [`Redis`] treats an error as "Redis had nothing to say" (the limiter admits, the cache falls
//! through to the store). What this module guarantees is that such an answer comes quickly:
//! every command runs under a timeout ([`DEFAULT_TIMEOUT`] unless opened with
//! [`Redis::open_with_timeout`]), and the [`ConnectionManager`] underneath reconnects by
//! itself after a connection is killed or Redis comes back. The connection is opened lazily,
//! so the service starts (and serves) while Redis is still down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError, Script};

/// How long one Redis command may take before its caller goes on without Redis.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a degraded path logs its warning at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A handle on one Redis server and a key prefix; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a Redis command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// No answer within the command timeout.
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
}

impl Redis {
    /// A handle on the server at `url` (`redis://[user[:password]@]host[:port][/db]`) whose
    /// keys all start with `prefix` (e.g. `"payments:"`), so several deployments or tests can
    /// share one server, with every command bounded by [`DEFAULT_TIMEOUT`]. Does not connect
    /// yet: the first command does, and a server that is down only makes commands fail
    /// (quickly) until it is back. Call it inside a Tokio runtime: the connection manager
    /// spawns its reconnection task there.
    ///
    /// Errors: the URL does not parse.
    pub fn open(url: &str, prefix: impl Into<String>) -> Result<Self, RedisError> {
        Self::open_with_timeout(url, prefix, DEFAULT_TIMEOUT)
    }

    /// [`Redis::open`] with every command (connecting included) bounded by `timeout`.
    pub fn open_with_timeout(
        url: &str,
        prefix: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        // One quick connection attempt per command at most: the retries with backoff a
        // connection manager does by default would hold payments for seconds while Redis is
        // down. A failed attempt is retried by the next command.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Ok(Self {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: prefix.into(),
            timeout,
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` with the prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// One `PING`, within the timeout: for readiness checks.
    pub async fn ping(&self) -> Result<(), RedisFailure> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// Runs one command, within the timeout.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisFailure> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut connection)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisFailure::Timeout(self.timeout)),
        }
    }

    /// Runs a Lua script (`EVALSHA`, loading it on `NOSCRIPT`) on `keys` and `args`, within
    /// the timeout.
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[i64],
    ) -> Result<T, RedisFailure> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisFailure::Timeout(self.timeout)),
        }
    }
}

/// Rate-limits one warning: a Redis outage at thousands of payments per second must not
/// become thousands of log lines per second.
#[derive(Debug, Default)]
pub(crate) struct WarnThrottle {
    last: Mutex<Option<Instant>>,
}

impl WarnThrottle {
    /// True at most once per [`WARN_EVERY`]: the caller should log now.
    pub(crate) fn should_warn(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < WARN_EVERY => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_period() {
        let throttle = WarnThrottle::default();
        assert!(throttle.should_warn());
        assert!(!throttle.should_warn());
        *throttle.last.lock().unwrap() = Some(Instant::now() - WARN_EVERY);
        assert!(throttle.should_warn());
    }

    #[test]
    fn a_bad_url_is_refused_at_open() {
        assert!(Redis::open("http://127.0.0.1", "p:").is_err());
    }
}
