//! A fast path for idempotent replays: a [`Store`] wrapper that answers a retried payment from
//! Redis without a database transaction, and otherwise defers to the store it wraps.
//!
//! **The database stays the only source of truth; Redis never decides that money moves.**
//! - Only what the store returned is cached: after [`Store::process`] succeeds (first
//!   execution or replay), the payment goes to `<prefix>idem:payment:<key>` (an anonymous
//!   caller's key) or `<prefix>idem:caller-payment:<caller length>:<caller>:<key>` (an
//!   identified caller's: keys are per caller, as in the store) together with the caller and
//!   the fingerprint of the parameters, exactly as the store recorded it.
//! - A hit is used only when its caller and fingerprint equal the request's (so another
//!   caller's key never answers, even if the names collided), and then answers what the
//!   store would: the payment as first recorded, with `replayed` set (the store's replays never
//!   change: refunds do not show in them). Anything else — a miss, other parameters (the store
//!   then answers `IdempotencyKeyReused`), a malformed entry, any Redis error or timeout — goes
//!   to the store. So losing Redis costs latency, never a payment or a second execution.
//! - An entry lives no longer than the store keeps the key (the idempotency retention from the
//!   payment's creation, less [`EXPIRY_MARGIN`] for clocks and the key's own timestamp): after
//!   that the store may execute the key anew, and so must we.
//! - Nothing is ever deleted: a cached payment is immutable, and a key the store purged has
//!   already expired here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::api::Store;
use super::error::StoreError;
use super::fingerprint;
use super::layer::PaymentLayer;
use super::model::{Idempotent, Payment, PaymentRequest};
use super::records::{time_from_us, time_to_us};
use crate::redis_conn::{Redis, WarnThrottle};

/// How much sooner than the store's key a cache entry expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A [`Store`] that serves payment replays from Redis when it can; see the module docs.
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn Store>,
    redis: Redis,
    retention: Duration,
    warn: WarnThrottle,
}

/// The cached form of a payment and the fingerprint of the parameters that produced it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    fingerprint: String,
    /// The caller whose key it is; absent (entries written before keys had callers) is
    /// anonymous.
    #[serde(default)]
    caller: Option<String>,
    payment_id: String,
    idempotency_key: String,
    payer_account_id: String,
    payee_account_id: String,
    amount_minor: i64,
    currency: String,
    description: String,
    metadata: BTreeMap<String, String>,
    refunded_minor: i64,
    created_at_us: i64,
}

impl Entry {
    fn new(fingerprint: String, caller: Option<String>, payment: &Payment) -> Self {
        Self {
            fingerprint,
            caller,
            payment_id: payment.payment_id.clone(),
            idempotency_key: payment.idempotency_key.clone(),
            payer_account_id: payment.payer_account_id.clone(),
            payee_account_id: payment.payee_account_id.clone(),
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
            description: payment.description.clone(),
            metadata: payment.metadata.clone(),
            refunded_minor: payment.refunded_minor,
            created_at_us: time_to_us(payment.created_at),
        }
    }

    fn into_payment(self) -> Payment {
        Payment {
            payment_id: self.payment_id,
            idempotency_key: self.idempotency_key,
            payer_account_id: self.payer_account_id,
            payee_account_id: self.payee_account_id,
            amount_minor: self.amount_minor,
            currency: self.currency,
            description: self.description,
            metadata: self.metadata,
            refunded_minor: self.refunded_minor,
            created_at: time_from_us(self.created_at_us),
        }
    }
}

impl CachedStore {
    /// Wraps `inner`, caching replays in `redis` for at most `retention` after each payment's
    /// creation; pass the store's [`StoreConfig::idempotency_retention`].
    ///
    /// [`StoreConfig::idempotency_retention`]: crate::store::StoreConfig::idempotency_retention
    pub fn new(inner: Arc<dyn Store>, redis: Redis, retention: Duration) -> Self {
        Self {
            inner,
            redis,
            retention,
            warn: WarnThrottle::default(),
        }
    }

    /// Where `caller`'s replay of `idempotency_key` is cached. The caller's length makes
    /// the name unambiguous whatever characters caller and key hold.
    fn cache_key(&self, caller: Option<&str>, idempotency_key: &str) -> String {
        match caller {
            None => self.redis.key(&format!("idem:payment:{idempotency_key}")),
            Some(caller) => self.redis.key(&format!(
                "idem:caller-payment:{}:{caller}:{idempotency_key}",
                caller.len()
            )),
        }
    }

    fn degraded(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.warn.should_warn() {
            tracing::warn!(%error, "replay cache cannot {what} Redis; serving from the database");
        }
    }

    /// The cached replay of `request`, if Redis has one with the same parameters.
    async fn lookup(&self, request: &PaymentRequest, fingerprint: &str) -> Option<Payment> {
        let cmd = redis::cmd("GET")
            .arg(self.cache_key(request.caller.as_deref(), &request.idempotency_key))
            .clone();
        let raw: Option<Vec<u8>> = match self.redis.query(&cmd).await {
            Ok(raw) => raw,
            Err(error) => {
                self.degraded("read from", &error);
                return None;
            }
        };
        let entry: Entry = match serde_json::from_slice(&raw?) {
            Ok(entry) => entry,
            Err(error) => {
                self.degraded("decode an entry of", &error);
                return None;
            }
        };
        (entry.fingerprint == fingerprint
            && entry.caller == request.caller
            && entry.idempotency_key == request.idempotency_key)
            .then(|| entry.into_payment())
    }

    /// Caches what the store answered, for as long as the store keeps the key.
    async fn remember(&self, fingerprint: String, caller: Option<&str>, payment: &Payment) {
        let age = SystemTime::now()
            .duration_since(payment.created_at)
            .unwrap_or(Duration::ZERO);
        let ttl = self
            .retention
            .saturating_sub(age)
            .saturating_sub(EXPIRY_MARGIN);
        if ttl.is_zero() {
            return;
        }
        let entry = Entry::new(fingerprint, caller.map(str::to_owned), payment);
        let Ok(value) = serde_json::to_vec(&entry) else {
            return;
        };
        let cmd = redis::cmd("SET")
            .arg(self.cache_key(caller, &payment.idempotency_key))
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .clone();
        if let Err(error) = self.redis.query::<()>(&cmd).await {
            self.degraded("write to", &error);
        }
    }
}

impl PaymentLayer for CachedStore {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    fn process_payment<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        async move {
            let fingerprint = fingerprint::payment(request);
            if let Some(payment) = self.lookup(request, &fingerprint).await {
                return Ok(Idempotent::replay(payment));
            }
            let outcome = self.inner.process(request).await?;
            self.remember(fingerprint, request.caller.as_deref(), &outcome.value)
                .await;
            Ok(outcome)
        }
        .boxed()
    }
}
