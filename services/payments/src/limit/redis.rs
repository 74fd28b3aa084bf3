//! The per-account GCRA limiter kept in Redis, so that every instance of the service draws
//! from one budget per payer.
//!
//! The whole decision is one Lua script, atomic on the server: read the key's theoretical
//! arrival time (TAT), compare, write the new TAT. The clock is Redis's own (`TIME`), so
//! instances with skewed clocks still agree. The key `<prefix>rl:<account>` expires once its
//! TAT has passed, when it would mean nothing anyway.
//!
//! **Fails open.** A limiter protects the service from one payer's burst; it must not stop
//! every payer when it breaks. If Redis errors or does not answer within the handle's timeout,
//! the request is admitted and a warning is logged (at most once per 10 s).

use std::time::Duration;

use redis::Script;

use crate::redis_conn::{Redis, WarnThrottle};

/// GCRA in one step. KEYS[1]: the TAT key; ARGV[1]: emission interval (µs); ARGV[2]:
/// tolerance (µs). Returns 0 when admitted, else the wait in µs. Times are integral
/// microseconds (below 2^53, exact in Lua's doubles) written with `%.0f`, as Lua's default
/// number formatting would round them to 14 digits.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_from = tat - tolerance
if allowed_from > now then return allowed_from - now end
local new_tat = tat + interval
local ttl_ms = math.floor((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return 0
";

/// A GCRA limiter whose state lives in Redis: `per_second` requests per second per key,
/// bursting up to `per_second` at once, shared by every limiter on the same server and prefix.
#[derive(Debug)]
pub struct RedisLimiter {
    redis: Redis,
    script: Script,
    interval_us: i64,
    tolerance_us: i64,
    warn: WarnThrottle,
}

impl RedisLimiter {
    /// A limiter of `per_second` (positive) per key on `redis`.
    pub fn new(redis: Redis, per_second: u32) -> Self {
        assert!(per_second > 0, "a limiter needs a positive rate");
        let interval_us = 1_000_000 / i64::from(per_second);
        Self {
            redis,
            script: Script::new(GCRA),
            interval_us,
            tolerance_us: interval_us * (i64::from(per_second) - 1),
            warn: WarnThrottle::default(),
        }
    }

    /// Admits one request for `key`, or says how long until one would be. Admits when Redis
    /// cannot answer (fail open).
    pub async fn admit(&self, key: &str) -> Result<(), Duration> {
        let redis_key = self.redis.key(&format!("rl:{key}"));
        let answer: Result<i64, _> = self
            .redis
            .eval(
                &self.script,
                &[&redis_key],
                &[self.interval_us, self.tolerance_us],
            )
            .await;
        match answer {
            Ok(wait_us) if wait_us > 0 => Err(Duration::from_micros(wait_us.unsigned_abs())),
            Ok(_) => Ok(()),
            Err(error) => {
                if self.warn.should_warn() {
                    tracing::warn!(%error, "rate limiter cannot reach Redis; admitting payments unlimited until it is back");
                }
                Ok(())
            }
        }
    }
}
