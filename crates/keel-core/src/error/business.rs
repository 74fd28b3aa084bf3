//! The typed business error a handler returns, and its encoding as a rich `google.rpc.Status`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{
    ErrorDetails, FieldViolation, PreconditionViolation, QuotaViolation, ResourceInfo, StatusExt,
};

/// Whether and when a caller may send the same request again.
///
/// On the wire this is `google.rpc.RetryInfo`: absent for [`Retry::Never`], without a delay
/// for [`Retry::WithBackoff`], with `retry_delay` for [`Retry::After`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retry {
    /// The same request fails the same way again: no `RetryInfo` is sent.
    #[default]
    Never,
    /// Retrying may succeed, with the caller's own backoff: `RetryInfo` without a delay.
    WithBackoff,
    /// Retrying may succeed, no sooner than after this delay: `RetryInfo` with `retry_delay`.
    After(Duration),
}

impl Retry {
    /// `true` unless [`Retry::Never`].
    pub fn is_retryable(self) -> bool {
        self != Self::Never
    }

    /// The delay of [`Retry::After`], `None` otherwise.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Self::After(delay) => Some(delay),
            Self::Never | Self::WithBackoff => None,
        }
    }
}

/// An expected failure of a request, typed for the caller: a gRPC code, a stable reason, a
/// domain, metadata, a human message, retryability and the standard details that fit.
///
/// It becomes a [`tonic::Status`] (through `From`, so `?` works in handlers) whose
/// `grpc-status-details-bin` is a `google.rpc.Status` carrying `ErrorInfo` (reason, domain,
/// metadata) and, where set, `RetryInfo`, `BadRequest`, `PreconditionFailure`,
/// `ResourceInfo` and `QuotaFailure`. Clients read them back with
/// [`Details`](super::Details).
///
/// Pick the constructor by what went wrong (the mapping guide):
///
/// | what | constructor | code |
/// |---|---|---|
/// | the request itself is invalid | [`invalid_argument`](Self::invalid_argument) + [`field_violation`](Self::field_violation) | INVALID_ARGUMENT |
/// | a business rule refuses it (insufficient funds, limits) | [`failed_precondition`](Self::failed_precondition) + [`precondition_violation`](Self::precondition_violation) | FAILED_PRECONDITION |
/// | optimistic-lock or in-flight conflict | [`aborted`](Self::aborted) | ABORTED |
/// | the named thing does not exist | [`not_found`](Self::not_found) + [`resource`](Self::resource) | NOT_FOUND |
/// | the thing to create exists | [`already_exists`](Self::already_exists) + [`resource`](Self::resource) | ALREADY_EXISTS |
/// | a dependency is down (retryable) | [`unavailable`](Self::unavailable) + [`retry_after`](Self::retry_after) | UNAVAILABLE |
/// | a quota or rate limit is spent | [`resource_exhausted`](Self::resource_exhausted) + [`quota_violation`](Self::quota_violation) | RESOURCE_EXHAUSTED |
///
/// The **reason** is a stable UPPER_SNAKE identifier that callers match on together with the
/// domain (`[A-Z][A-Z0-9_]*[A-Z0-9]`, at most 63 characters, as in Google's AIP-193); it is
/// checked with `debug_assert!`, so a bad one panics in debug builds and tests. The
/// **message** is for humans and may change. The **domain** names the service that owns the
/// reason (`"payments.keel.dev"`): set it on every error, e.g. from a `const DOMAIN` of the
/// service; without one the `ErrorInfo` domain is empty.
///
/// Unexpected failures (a bug, a broken invariant, a database error) are not business
/// errors: report them with [`internal`](super::internal), which hides their text.
///
/// ```
/// use keel_core::error::{BusinessError, Details};
///
/// const DOMAIN: &str = "payments.keel.dev";
///
/// let error = BusinessError::failed_precondition(
///     "INSUFFICIENT_FUNDS",
///     "payer balance 50 is below the amount 80",
/// )
/// .domain(DOMAIN)
/// .metadata("account_id", "acc_1")
/// .precondition_violation("BALANCE", "accounts/acc_1", "balance 50 < amount 80");
/// let status = tonic::Status::from(error);
///
/// assert_eq!(status.code(), tonic::Code::FailedPrecondition);
/// let details = Details::from_status(&status);
/// assert_eq!(details.reason(), Some("INSUFFICIENT_FUNDS"));
/// assert_eq!(details.metadata()["account_id"], "acc_1");
/// ```
#[derive(Debug, Clone)]
#[must_use = "a business error does nothing until it is returned as a Status"]
pub struct BusinessError {
    code: Code,
    reason: String,
    message: String,
    domain: String,
    metadata: BTreeMap<String, String>,
    retry: Retry,
    field_violations: Vec<FieldViolation>,
    precondition_violations: Vec<PreconditionViolation>,
    resource: Option<ResourceInfo>,
    quota_violations: Vec<QuotaViolation>,
}

impl BusinessError {
    /// An error with any code; prefer the named constructors, which follow the mapping guide.
    ///
    /// UNAVAILABLE starts as [`Retry::WithBackoff`], every other code as [`Retry::Never`].
    /// Debug builds panic if `reason` is not UPPER_SNAKE (see [`is_valid_reason`]) or `code`
    /// is OK.
    #[track_caller]
    pub fn new(code: Code, reason: impl Into<String>, message: impl Into<String>) -> Self {
        let reason = reason.into();
        debug_assert!(
            is_valid_reason(&reason),
            "error reason {reason:?} must be UPPER_SNAKE: [A-Z][A-Z0-9_]*[A-Z0-9], at most 63 characters"
        );
        debug_assert!(code != Code::Ok, "a business error cannot have code OK");
        Self {
            code,
            reason,
            message: message.into(),
            domain: String::new(),
            metadata: BTreeMap::new(),
            retry: if code == Code::Unavailable {
                Retry::WithBackoff
            } else {
                Retry::Never
            },
            field_violations: Vec::new(),
            precondition_violations: Vec::new(),
            resource: None,
            quota_violations: Vec::new(),
        }
    }

    /// INVALID_ARGUMENT: the request is wrong whatever the system's state; name the fields
    /// with [`field_violation`](Self::field_violation).
    #[track_caller]
    pub fn invalid_argument(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, message)
    }

    /// FAILED_PRECONDITION: a business rule refuses the request in the current state
    /// (insufficient funds, a limit); say which with
    /// [`precondition_violation`](Self::precondition_violation).
    #[track_caller]
    pub fn failed_precondition(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    /// ABORTED: a concurrency conflict (optimistic lock, the same request in flight); the
    /// caller should re-read and decide again rather than resend blindly.
    #[track_caller]
    pub fn aborted(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::Aborted, reason, message)
    }

    /// NOT_FOUND: the named resource does not exist; name it with [`resource`](Self::resource).
    #[track_caller]
    pub fn not_found(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    /// ALREADY_EXISTS: the resource to create exists; name it with [`resource`](Self::resource).
    #[track_caller]
    pub fn already_exists(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, reason, message)
    }

    /// UNAVAILABLE: a dependency is down. Retryable with backoff by default; suggest a delay
    /// with [`retry_after`](Self::retry_after).
    #[track_caller]
    pub fn unavailable(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    /// RESOURCE_EXHAUSTED: a quota or rate limit is spent; say which with
    /// [`quota_violation`](Self::quota_violation) and when to come back with
    /// [`retry_after`](Self::retry_after).
    #[track_caller]
    pub fn resource_exhausted(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, reason, message)
    }

    /// Sets the domain that owns the reason, e.g. `"payments.keel.dev"` (`ErrorInfo.domain`).
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Details};
    ///
    /// let status = BusinessError::not_found("ACCOUNT_NOT_FOUND", "no account acc_1")
    ///     .domain("payments.keel.dev")
    ///     .into_status();
    /// assert_eq!(Details::from_status(&status).domain(), Some("payments.keel.dev"));
    /// ```
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// Adds a machine-readable fact to `ErrorInfo.metadata` (`account_id` → `acc_1`); a
    /// repeated key keeps the last value.
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Details};
    ///
    /// let status = BusinessError::not_found("ACCOUNT_NOT_FOUND", "no account acc_1")
    ///     .metadata("account_id", "acc_0")
    ///     .metadata("account_id", "acc_1")
    ///     .into_status();
    /// let details = Details::from_status(&status);
    /// assert_eq!(details.metadata()["account_id"], "acc_1");
    /// ```
    pub fn metadata(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.metadata.insert(key.into(), value.to_string());
        self
    }

    /// Adds a `BadRequest` field violation: `field` is a path such as `amount.units`.
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Details};
    ///
    /// let status = BusinessError::invalid_argument("INVALID_AMOUNT", "the amount is invalid")
    ///     .field_violation("amount.units", "must be positive")
    ///     .into_status();
    /// let details = Details::from_status(&status);
    /// assert_eq!(details.field_violations()[0].field, "amount.units");
    /// ```
    pub fn field_violation(
        mut self,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.field_violations
            .push(FieldViolation::new(field, description));
        self
    }

    /// Adds a `PreconditionFailure` violation: `kind` is an UPPER_SNAKE type of check
    /// (`BALANCE`), `subject` what failed it (`accounts/acc_1`).
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Details};
    ///
    /// let status = BusinessError::failed_precondition("INSUFFICIENT_FUNDS", "balance too low")
    ///     .precondition_violation("BALANCE", "accounts/acc_1", "holds 10, needs 25")
    ///     .into_status();
    /// let details = Details::from_status(&status);
    /// assert_eq!(details.precondition_violations()[0].subject, "accounts/acc_1");
    /// ```
    pub fn precondition_violation(
        mut self,
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.precondition_violations
            .push(PreconditionViolation::new(kind, subject, description));
        self
    }

    /// Sets the `ResourceInfo`: the type (`keel.payments.v1.Payment`), the name
    /// (`payments/pay_1`) and what is wrong with it; a second call replaces the first.
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Details};
    ///
    /// let status = BusinessError::not_found("PAYMENT_NOT_FOUND", "no payment pay_1")
    ///     .resource("keel.payments.v1.Payment", "payments/pay_1", "does not exist")
    ///     .into_status();
    /// let details = Details::from_status(&status);
    /// assert_eq!(details.resource().unwrap().resource_name, "payments/pay_1");
    /// ```
    pub fn resource(
        mut self,
        resource_type: impl Into<String>,
        resource_name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.resource = Some(ResourceInfo::new(
            resource_type,
            resource_name,
            "",
            description,
        ));
        self
    }

    /// Adds a `QuotaFailure` violation: `subject` is whose quota (`account:acc_1`).
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Details};
    ///
    /// let status = BusinessError::resource_exhausted("RATE_LIMITED", "too many payments")
    ///     .quota_violation("account:acc_1", "50 payments a second")
    ///     .into_status();
    /// let details = Details::from_status(&status);
    /// assert_eq!(details.quota_violations()[0].subject, "account:acc_1");
    /// ```
    pub fn quota_violation(
        mut self,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.quota_violations
            .push(QuotaViolation::new(subject, description));
        self
    }

    /// Makes the error retryable no sooner than after `delay` (`RetryInfo.retry_delay`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_core::error::BusinessError;
    ///
    /// let error = BusinessError::unavailable("LEDGER_UNAVAILABLE", "ledger is down")
    ///     .retry_after(Duration::from_secs(2));
    /// assert_eq!(error.retry_delay(), Some(Duration::from_secs(2)));
    /// ```
    pub fn retry_after(self, delay: Duration) -> Self {
        self.retry(Retry::After(delay))
    }

    /// Sets retryability explicitly, e.g. [`Retry::Never`] for an UNAVAILABLE that a retry
    /// cannot fix.
    ///
    /// ```
    /// use keel_core::error::{BusinessError, Retry};
    ///
    /// let error = BusinessError::unavailable("REGION_DISABLED", "the region is switched off")
    ///     .retry(Retry::Never);
    /// assert!(!error.is_retryable());
    /// ```
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The gRPC status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The UPPER_SNAKE reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The human message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the caller may send the same request again: UNAVAILABLE unless told
    /// otherwise, and any error given a [`retry_after`](Self::retry_after). The caller sees
    /// it as the presence of `RetryInfo`.
    pub fn is_retryable(&self) -> bool {
        self.retry.is_retryable()
    }

    /// The suggested delay before a retry, if one was set.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry.delay()
    }

    /// The status to return: code, message and `grpc-status-details-bin`.
    pub fn into_status(self) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            self.reason,
            self.domain,
            self.metadata.into_iter().collect::<HashMap<_, _>>(),
        );
        match self.retry {
            Retry::Never => {}
            Retry::WithBackoff => {
                details.set_retry_info(None);
            }
            Retry::After(delay) => {
                details.set_retry_info(Some(delay));
            }
        }
        if !self.field_violations.is_empty() {
            details.set_bad_request(self.field_violations);
        }
        if !self.precondition_violations.is_empty() {
            details.set_precondition_failure(self.precondition_violations);
        }
        if let Some(resource) = self.resource {
            details.set_resource_info(
                resource.resource_type,
                resource.resource_name,
                resource.owner,
                resource.description,
            );
        }
        if !self.quota_violations.is_empty() {
            details.set_quota_failure(self.quota_violations);
        }
        Status::with_error_details(self.code, self.message, details)
    }
}

impl From<BusinessError> for Status {
    fn from(error: BusinessError) -> Self {
        error.into_status()
    }
}

impl fmt::Display for BusinessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for BusinessError {}

/// Whether `reason` is UPPER_SNAKE as error reasons must be: `[A-Z][A-Z0-9_]*[A-Z0-9]` (or one
/// letter), at most 63 characters.
pub fn is_valid_reason(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= 63
        && first.is_ascii_uppercase()
        && *last != b'_'
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

#[cfg(test)]
mod tests {
    //! Decodes with tonic-types' own reader, independent of [`super::super::Details`].

    use super::*;

    const DOMAIN: &str = "payments.keel.dev";

    fn decode(status: &Status) -> ErrorDetails {
        status.check_error_details().expect("valid details")
    }

    fn check_error_info(details: &ErrorDetails, reason: &str, metadata: &[(&str, &str)]) {
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, reason);
        assert_eq!(info.domain, DOMAIN);
        let expected: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(info.metadata, expected);
    }

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status: Status = BusinessError::invalid_argument("INVALID_PAYMENT", "2 fields invalid")
            .domain(DOMAIN)
            .field_violation("amount.units", "must be positive")
            .field_violation("currency", "must be ISO 4217")
            .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "2 fields invalid");
        let details = decode(&status);
        check_error_info(&details, "INVALID_PAYMENT", &[]);
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        let pairs: Vec<_> = violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("amount.units", "must be positive"),
                ("currency", "must be ISO 4217")
            ]
        );
        assert!(details.retry_info().is_none(), "not retryable");
        assert!(details.precondition_failure().is_none());
    }

    #[test]
    fn failed_precondition_carries_violation_and_metadata() {
        let error = BusinessError::failed_precondition("INSUFFICIENT_FUNDS", "balance too low")
            .domain(DOMAIN)
            .metadata("account_id", "acc_1")
            .metadata("balance", 50)
            .precondition_violation("BALANCE", "accounts/acc_1", "balance 50 < amount 80");
        assert!(!error.is_retryable());
        assert_eq!(error.to_string(), "INSUFFICIENT_FUNDS: balance too low");
        let status = error.into_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "balance too low");
        let details = decode(&status);
        check_error_info(
            &details,
            "INSUFFICIENT_FUNDS",
            &[("account_id", "acc_1"), ("balance", "50")],
        );
        let violation = &details.precondition_failure().expect("failure").violations[0];
        assert_eq!(
            (
                violation.r#type.as_str(),
                violation.subject.as_str(),
                violation.description.as_str()
            ),
            ("BALANCE", "accounts/acc_1", "balance 50 < amount 80")
        );
        assert!(details.retry_info().is_none());
    }

    #[test]
    fn not_found_and_already_exists_carry_resource_info() {
        for (error, code) in [
            (
                BusinessError::not_found("PAYMENT_NOT_FOUND", "no payment pay_1"),
                Code::NotFound,
            ),
            (
                BusinessError::already_exists("PAYMENT_EXISTS", "no payment pay_1"),
                Code::AlreadyExists,
            ),
        ] {
            let status = error
                .domain(DOMAIN)
                .resource("keel.payments.v1.Payment", "payments/pay_1", "first")
                .resource("keel.payments.v1.Payment", "payments/pay_1", "second wins")
                .into_status();
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "no payment pay_1");
            let resource = decode(&status).resource_info().cloned().expect("resource");
            assert_eq!(resource.resource_type, "keel.payments.v1.Payment");
            assert_eq!(resource.resource_name, "payments/pay_1");
            assert_eq!(resource.description, "second wins");
        }
    }

    #[test]
    fn aborted_is_not_retryable_by_default() {
        let error = BusinessError::aborted("VERSION_CONFLICT", "account changed").domain(DOMAIN);
        assert!(!error.is_retryable());
        let status = error.into_status();
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.message(), "account changed");
        let details = decode(&status);
        check_error_info(&details, "VERSION_CONFLICT", &[]);
        assert!(details.retry_info().is_none());
    }

    #[test]
    fn unavailable_is_retryable_and_says_so_with_retry_info() {
        let error = BusinessError::unavailable("LEDGER_UNAVAILABLE", "ledger down").domain(DOMAIN);
        assert!(error.is_retryable());
        assert_eq!(error.retry_delay(), None);
        let status = error.into_status();
        assert_eq!(status.code(), Code::Unavailable);
        let info = decode(&status).retry_info().cloned().expect("RetryInfo");
        assert_eq!(info.retry_delay, None);

        let error = BusinessError::unavailable("LEDGER_UNAVAILABLE", "ledger down")
            .retry_after(Duration::from_millis(1500));
        assert_eq!(error.retry_delay(), Some(Duration::from_millis(1500)));
        let info = decode(&error.into_status()).retry_info().cloned();
        assert_eq!(
            info.expect("RetryInfo").retry_delay,
            Some(Duration::from_millis(1500))
        );

        let error = BusinessError::unavailable("REGION_RETIRED", "gone").retry(Retry::Never);
        assert!(!error.is_retryable());
        assert!(decode(&error.into_status()).retry_info().is_none());
    }

    #[test]
    fn resource_exhausted_carries_quota_failure_and_retry_delay() {
        let error = BusinessError::resource_exhausted("DAILY_LIMIT", "daily limit reached")
            .domain(DOMAIN)
            .quota_violation("account:acc_1", "10 payments per day")
            .retry_after(Duration::from_secs(3600));
        assert!(error.is_retryable());
        let status = error.into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "daily limit reached");
        let details = decode(&status);
        check_error_info(&details, "DAILY_LIMIT", &[]);
        let violation = &details.quota_failure().expect("QuotaFailure").violations[0];
        assert_eq!(violation.subject, "account:acc_1");
        assert_eq!(violation.description, "10 payments per day");
        assert_eq!(
            details.retry_info().expect("RetryInfo").retry_delay,
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn new_takes_any_code() {
        let status = BusinessError::new(Code::PermissionDenied, "NOT_OWNER", "not your account")
            .into_status();
        assert_eq!(status.code(), Code::PermissionDenied);
        let details = decode(&status);
        assert_eq!(details.error_info().expect("ErrorInfo").reason, "NOT_OWNER");
        assert_eq!(details.error_info().expect("ErrorInfo").domain, "");
    }

    #[test]
    fn reasons_must_be_upper_snake() {
        for good in ["A", "INSUFFICIENT_FUNDS", "LIMIT_2", "A1", &"A".repeat(63)] {
            assert!(is_valid_reason(good), "{good:?}");
        }
        for bad in [
            "",
            "insufficient_funds",
            "Insufficient",
            "_LEADING",
            "TRAILING_",
            "1ST",
            "WITH SPACE",
            "WITH-DASH",
            "ÄRGER",
            &"A".repeat(64),
        ] {
            assert!(!is_valid_reason(bad), "{bad:?}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "must be UPPER_SNAKE")]
    fn a_bad_reason_panics_in_debug_builds() {
        let _ = BusinessError::failed_precondition("insufficient funds", "no");
    }
}
