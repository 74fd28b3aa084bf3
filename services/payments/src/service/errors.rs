//! Store errors as business errors, per the table: NOT_FOUND with ResourceInfo,
//! FAILED_PRECONDITION with PreconditionFailure, ALREADY_EXISTS, ABORTED, UNAVAILABLE with
//! RetryInfo; anything unexpected as INTERNAL with only an error id.
//!
//! Messages never show a balance: a refund's failure concerns the payee's account, which the
//! caller may not own. Nor do they name an account's owner: PERMISSION_DENIED says the
//! account is not the caller's, never whose it is.

use std::ops::RangeInclusive;
use std::time::Duration;

use keel::error::{BusinessError, Retry};
use tonic::{Code, Status};

use super::DOMAIN;
use crate::store::StoreError;

/// How soon a client may retry when storage is down.
const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How soon a duplicate of a request still in flight may come back: a random delay in this
/// range. RetryInfo without a delay tells clients to retry at once, which spins them against
/// the in-flight set, each retry another ABORTED. 50 ms is past a payment's p99 under load
/// (23 to 57 ms, docs/BENCHMARKS.md), so the retry usually finds the first one committed and
/// gets its replay; the spread keeps duplicates that arrived together from coming back
/// together; 150 ms bounds what the wait adds.
const CONCURRENT_RETRY_AFTER: RangeInclusive<Duration> =
    Duration::from_millis(50)..=Duration::from_millis(150);

/// The status a caller gets for a store failure.
pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::AccountNotFound { account_id } => BusinessError::not_found(
            "ACCOUNT_NOT_FOUND",
            format!("account {account_id:?} does not exist"),
        )
        .domain(DOMAIN)
        .metadata("account_id", &account_id)
        .resource("payments.v1.Account", format!("accounts/{account_id}"), "no such account")
        .into(),
        StoreError::PaymentNotFound { payment_id } => BusinessError::not_found(
            "PAYMENT_NOT_FOUND",
            format!("payment {payment_id:?} does not exist"),
        )
        .domain(DOMAIN)
        .metadata("payment_id", &payment_id)
        .resource("payments.v1.Payment", format!("payments/{payment_id}"), "no such payment")
        .into(),
        StoreError::AccountNotOwned { account_id } => account_not_owned(&account_id),
        StoreError::AccountExists { account_id } => BusinessError::already_exists(
            "ACCOUNT_ALREADY_EXISTS",
            format!("account {account_id:?} already exists"),
        )
        .domain(DOMAIN)
        .metadata("account_id", &account_id)
        .resource("payments.v1.Account", format!("accounts/{account_id}"), "choose another id, or omit it to have one generated")
        .into(),
        StoreError::InsufficientFunds {
            account_id,
            needed_minor,
            ..
        } => BusinessError::failed_precondition(
            "INSUFFICIENT_FUNDS",
            format!("account {account_id:?} holds less than the {needed_minor} minor units needed"),
        )
        .domain(DOMAIN)
        .metadata("account_id", &account_id)
        .metadata("needed_minor", needed_minor)
        .precondition_violation("BALANCE", format!("accounts/{account_id}"), "balance below the amount")
        .into(),
        StoreError::CurrencyMismatch {
            account_id,
            account_currency,
            requested_currency,
        } => BusinessError::failed_precondition(
            "CURRENCY_MISMATCH",
            format!("account {account_id:?} holds {account_currency}, the request is in {requested_currency}"),
        )
        .domain(DOMAIN)
        .metadata("account_id", &account_id)
        .metadata("account_currency", &account_currency)
        .metadata("requested_currency", &requested_currency)
        .precondition_violation("CURRENCY", format!("accounts/{account_id}"), "cross-currency transfers are not supported")
        .into(),
        StoreError::RefundExceedsPayment {
            payment_id,
            amount_minor,
            refunded_minor,
            requested_minor,
        } => BusinessError::failed_precondition(
            "REFUND_EXCEEDS_PAYMENT",
            format!(
                "payment {payment_id:?} of {amount_minor} has {refunded_minor} refunded; \
                 at most {} more can be",
                amount_minor - refunded_minor
            ),
        )
        .domain(DOMAIN)
        .metadata("payment_id", &payment_id)
        .metadata("refundable_minor", amount_minor - refunded_minor)
        .metadata("requested_minor", requested_minor)
        .precondition_violation("REFUNDABLE_AMOUNT", format!("payments/{payment_id}"), "refunds may not exceed the payment")
        .into(),
        StoreError::BalanceOverflow { account_id } => BusinessError::failed_precondition(
            "BALANCE_LIMIT_EXCEEDED",
            format!("the balance of account {account_id:?} would exceed the largest amount the ledger holds"),
        )
        .domain(DOMAIN)
        .metadata("account_id", &account_id)
        .precondition_violation("BALANCE", format!("accounts/{account_id}"), "balance limit")
        .into(),
        StoreError::IdempotencyKeyReused { key } => BusinessError::failed_precondition(
            "IDEMPOTENCY_KEY_REUSED",
            format!("idempotency key {key:?} was used before with different parameters; use a new key for a new request"),
        )
        .domain(DOMAIN)
        .metadata("idempotency_key", &key)
        .precondition_violation("IDEMPOTENCY_KEY", key, "already used with different parameters")
        .into(),
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "storage unavailable");
            BusinessError::unavailable("STORAGE_UNAVAILABLE", "storage is unavailable; retry later")
                .domain(DOMAIN)
                .retry_after(STORAGE_RETRY_AFTER)
                .into()
        }
        StoreError::Conflict(source) => {
            tracing::warn!(error = %source, "storage conflict persisted after retries");
            BusinessError::aborted("STORAGE_CONFLICT", "the request conflicted with concurrent ones; nothing took effect, retry it")
                .domain(DOMAIN)
                .retry(Retry::WithBackoff)
                .into()
        }
        other => keel::error::internal(&other),
    }
}

/// PERMISSION_DENIED (`ACCOUNT_NOT_OWNED`) when the caller does not own the account it would
/// debit or read; the same for every caller who is not the owner, anonymous included.
pub fn account_not_owned(account_id: &str) -> Status {
    BusinessError::new(
        Code::PermissionDenied,
        "ACCOUNT_NOT_OWNED",
        format!(
            "account {account_id:?} is not the caller's: only its owner may move money out of it \
             or read it"
        ),
    )
    .domain(DOMAIN)
    .metadata("account_id", account_id)
    .resource(
        "payments.v1.Account",
        format!("accounts/{account_id}"),
        "owned by another caller",
    )
    .into()
}

/// PERMISSION_DENIED (`PAYMENT_NOT_OWNED`) when the caller owns neither account of a payment.
pub fn payment_not_owned(payment_id: &str) -> Status {
    BusinessError::new(
        Code::PermissionDenied,
        "PAYMENT_NOT_OWNED",
        format!(
            "payment {payment_id:?} is not the caller's: only the owners of its payer and payee \
             accounts may read it"
        ),
    )
    .domain(DOMAIN)
    .metadata("payment_id", payment_id)
    .resource(
        "payments.v1.Payment",
        format!("payments/{payment_id}"),
        "between accounts of other callers",
    )
    .into()
}

/// ABORTED for a second request whose idempotency key is still being executed, retryable
/// after a short, jittered delay.
pub fn concurrent_request(key: &str) -> Status {
    BusinessError::aborted(
        "CONCURRENT_REQUEST",
        format!("a request with idempotency key {key:?} is in flight; retry when it has completed"),
    )
    .domain(DOMAIN)
    .metadata("idempotency_key", key)
    .retry_after(rand::random_range(CONCURRENT_RETRY_AFTER))
    .into()
}

/// RESOURCE_EXHAUSTED when a payer exceeds the configured rate.
pub fn rate_limited(account_id: &str, wait: Duration) -> Status {
    BusinessError::resource_exhausted(
        "RATE_LIMITED",
        format!(
            "account {account_id:?} started too many payments; retry in {} ms",
            wait.as_millis()
        ),
    )
    .domain(DOMAIN)
    .metadata("account_id", account_id)
    .quota_violation(
        format!("accounts/{account_id}"),
        "payments per second per payer account",
    )
    .retry_after(wait)
    .into()
}
