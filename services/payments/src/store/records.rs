//! Rows the store writes for its own bookkeeping (idempotency keys, deposits, refunds) and the
//! clock they are stamped with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The operation an idempotency key belongs to: keys of different operations never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Deposit,
    Payment,
    Refund,
}

impl Scope {
    /// The name stored in `idempotency_keys.scope` and `ledger_entries.kind`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Payment => "payment",
            Self::Refund => "refund",
        }
    }
}

/// A row of `idempotency_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) scope: Scope,
    /// Whose key it is: [`key_caller`] of the caller.
    pub(crate) caller: String,
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    /// The deposit, payment or refund the key produced.
    pub(crate) resource_id: String,
    pub(crate) created_at_us: i64,
}

/// How a caller is stored in `idempotency_keys.caller`, part of the primary key: its name,
/// or `''` for the anonymous caller.
pub(crate) fn key_caller(caller: Option<&str>) -> &str {
    caller.unwrap_or("")
}

/// A row of `deposits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DepositRecord {
    pub(crate) deposit_id: String,
    pub(crate) account_id: String,
    pub(crate) amount_minor: i64,
    pub(crate) balance_after_minor: i64,
    pub(crate) created_at_us: i64,
}

/// A row of `refunds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefundRecord {
    pub(crate) refund_id: String,
    pub(crate) payment_id: String,
    pub(crate) amount_minor: i64,
    pub(crate) refunded_after_minor: i64,
    pub(crate) created_at_us: i64,
}

/// One side of a money movement: `account_id` None is the world outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub(crate) account_id: Option<&'a str>,
    /// Positive credits the account, negative debits it.
    pub(crate) amount_minor: i64,
}

/// Microseconds since the Unix epoch: the stored form of every timestamp.
pub(crate) fn now_us() -> i64 {
    time_to_us(SystemTime::now())
}

/// The stored form back as a `SystemTime`.
pub(crate) fn time_from_us(us: i64) -> SystemTime {
    // Stored values come from `now_us`, never negative; clamp anything else to the epoch.
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// A `SystemTime` in the stored form (times before the epoch become 0).
pub(crate) fn time_to_us(time: SystemTime) -> i64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// A duration in microseconds, saturating.
pub(crate) fn duration_us(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
