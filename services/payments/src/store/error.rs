//! What can go wrong in storage, typed so the service layer can map each case to a gRPC
//! status, and how database errors are sorted into those cases.

use std::sync::Arc;

use sqlx::error::DatabaseError;

/// A boxed error kept as the `source()` of [`StoreError`]'s infrastructure variants.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
///
/// The business variants (everything up to [`StoreError::IdempotencyKeyReused`]) describe the
/// request against the current state and carry what a client needs to understand it. The
/// infrastructure variants ([`StoreError::Unavailable`], [`StoreError::Conflict`],
/// [`StoreError::Config`], [`StoreError::Internal`]) keep the database error as `source()`,
/// for logs; it is not meant for callers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No account has this id.
    #[error("account {account_id:?} not found")]
    AccountNotFound {
        /// The id asked for.
        account_id: String,
    },
    /// No payment has this id.
    #[error("payment {payment_id:?} not found")]
    PaymentNotFound {
        /// The id asked for.
        payment_id: String,
    },
    /// The account money would leave (a payment's payer, a refund's payee) is not the
    /// caller's. Says nothing of whose it is.
    #[error("account {account_id:?} is not the caller's")]
    AccountNotOwned {
        /// The account.
        account_id: String,
    },
    /// An account with this id exists already.
    #[error("account {account_id:?} already exists")]
    AccountExists {
        /// The id asked for.
        account_id: String,
    },
    /// The account to debit holds less than the amount.
    #[error("account {account_id:?} holds {balance_minor}, {needed_minor} needed")]
    InsufficientFunds {
        /// The account to debit: the payer of a payment, the payee of a refund.
        account_id: String,
        /// Its balance, in minor units.
        balance_minor: i64,
        /// The amount the operation needs, in minor units.
        needed_minor: i64,
    },
    /// An account's currency is not the request's.
    #[error("account {account_id:?} holds {account_currency}, not {requested_currency}")]
    CurrencyMismatch {
        /// The first account (payer, then payee) whose currency differs.
        account_id: String,
        /// That account's currency.
        account_currency: String,
        /// The currency of the request.
        requested_currency: String,
    },
    /// The refund would bring the refunded total over the payment's amount.
    #[error(
        "payment {payment_id:?} of {amount_minor} has {refunded_minor} refunded; \
         {requested_minor} more exceeds it"
    )]
    RefundExceedsPayment {
        /// The payment.
        payment_id: String,
        /// Its amount, in minor units.
        amount_minor: i64,
        /// How much was refunded before, in minor units.
        refunded_minor: i64,
        /// The refund asked for, in minor units.
        requested_minor: i64,
    },
    /// The credit would take the account's balance past `i64::MAX` minor units.
    #[error("balance of account {account_id:?} would exceed the largest representable amount")]
    BalanceOverflow {
        /// The account to credit.
        account_id: String,
    },
    /// The idempotency key was used before, for this operation, with other parameters.
    #[error("idempotency key {key:?} was already used with different parameters")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// Storage cannot be reached or refuses work for now (connection refused or lost, no free
    /// connection in time, no answer within the configured timeouts, database shutting down or
    /// starting, SQLite file locked): retry later.
    /// Whether the operation took effect is unknown when the connection was lost at commit;
    /// retrying with the same idempotency key is always safe.
    #[error("storage unavailable")]
    Unavailable(#[source] BoxError),
    /// The database kept aborting the transaction for serialization failures or deadlocks,
    /// after the configured retries. Nothing took effect; the request may be retried.
    #[error("storage conflict persisted after retries")]
    Conflict(#[source] BoxError),
    /// The store cannot be opened as configured (unsupported URL, unusable path).
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// Anything else: a bug or broken data. Log it; do not show it to callers.
    #[error("internal storage error")]
    Internal(#[source] BoxError),
}

impl StoreError {
    /// True for failures that may succeed when retried unchanged: [`StoreError::Unavailable`]
    /// and [`StoreError::Conflict`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Conflict(_))
    }

    /// This failure once for each of `n` operations that shared the transaction it ended: the
    /// same variant, each with the original error as its source.
    pub(crate) fn fan_out(self, n: usize) -> Vec<StoreError> {
        let shared = Arc::new(self);
        (0..n)
            .map(|_| {
                let source = || -> BoxError { Box::new(Shared(shared.clone())) };
                match &*shared {
                    Self::Unavailable(_) => Self::Unavailable(source()),
                    Self::Conflict(_) => Self::Conflict(source()),
                    Self::Config(message) => Self::Config(message.clone()),
                    _ => Self::Internal(source()),
                }
            })
            .collect()
    }

    /// An [`StoreError::Internal`] for a broken expectation with no underlying error.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into().into())
    }
}

/// One store error shared by the operations it failed; shows as the error beneath it.
#[derive(Debug)]
struct Shared(Arc<StoreError>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(source) => write!(f, "{source}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(std::error::Error::source)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Class::Unavailable => Self::Unavailable(Box::new(error)),
            Class::Conflict => Self::Conflict(Box::new(error)),
            Class::Internal => Self::Internal(Box::new(error)),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError;
        match error {
            MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => error.into(),
            other => Self::Internal(Box::new(other)),
        }
    }
}

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Storage is down or busy: retry later.
    Unavailable,
    /// The transaction lost a race and was aborted: run it again.
    Conflict,
    /// Anything else.
    Internal,
}

/// Sorts a sqlx error.
pub(crate) fn classify(error: &sqlx::Error) -> Class {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => Class::Unavailable,
        sqlx::Error::Database(db) => classify_database(db.as_ref()),
        _ => Class::Internal,
    }
}

fn classify_database(error: &dyn DatabaseError) -> Class {
    let Some(code) = error.code() else {
        return Class::Internal;
    };
    if error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        classify_sqlstate(&code)
    } else if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        code.parse()
            .map_or(Class::Internal, classify_sqlite_result_code)
    } else {
        Class::Internal
    }
}

/// PostgreSQL SQLSTATE codes (Appendix A of its manual).
pub(crate) fn classify_sqlstate(code: &str) -> Class {
    match code {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => Class::Conflict,
        // class 08: connection exception
        _ if code.starts_with("08") => Class::Unavailable,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up or recovering)
        "57P01" | "57P02" | "57P03" => Class::Unavailable,
        // too_many_connections; read_only_sql_transaction (a standby, mid-failover)
        "53300" | "25006" => Class::Unavailable,
        // query_canceled (statement_timeout: stuck behind a lock or a slow server);
        // idle_in_transaction_session_timeout (the server gave up on a silent client)
        "57014" | "25P03" => Class::Unavailable,
        _ => Class::Internal,
    }
}

/// SQLite (extended) result codes: the primary code is the low byte.
pub(crate) fn classify_sqlite_result_code(code: i32) -> Class {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_FULL: i32 = 13;
    const SQLITE_CANTOPEN: i32 = 14;
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN => {
            Class::Unavailable
        }
        _ => Class::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        for (code, want) in [
            ("40001", Class::Conflict),
            ("40P01", Class::Conflict),
            ("08000", Class::Unavailable),
            ("08006", Class::Unavailable),
            ("08P01", Class::Unavailable),
            ("57P01", Class::Unavailable),
            ("57P02", Class::Unavailable),
            ("57P03", Class::Unavailable),
            ("57014", Class::Unavailable),
            ("25P03", Class::Unavailable),
            ("53300", Class::Unavailable),
            ("25006", Class::Unavailable),
            ("23505", Class::Internal), // unique_violation: the store handles the ones it expects
            ("23514", Class::Internal), // check_violation: an invariant the store broke
            ("22003", Class::Internal), // numeric_value_out_of_range
        ] {
            assert_eq!(classify_sqlstate(code), want, "SQLSTATE {code}");
        }
    }

    #[test]
    fn sqlite_result_codes() {
        for (code, want) in [
            (5, Class::Unavailable),   // SQLITE_BUSY
            (517, Class::Unavailable), // SQLITE_BUSY_SNAPSHOT
            (6, Class::Unavailable),   // SQLITE_LOCKED
            (10, Class::Unavailable),  // SQLITE_IOERR
            (13, Class::Unavailable),  // SQLITE_FULL
            (14, Class::Unavailable),  // SQLITE_CANTOPEN
            (19, Class::Internal),     // SQLITE_CONSTRAINT
            (275, Class::Internal),    // SQLITE_CONSTRAINT_CHECK
            (1, Class::Internal),      // SQLITE_ERROR
        ] {
            assert_eq!(
                classify_sqlite_result_code(code),
                want,
                "SQLite code {code}"
            );
        }
    }

    #[test]
    fn a_shared_failure_keeps_its_variant_and_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let errors = StoreError::from(sqlx::Error::Io(refused)).fan_out(3);
        assert_eq!(errors.len(), 3);
        for error in &errors {
            assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
            let cause = std::error::Error::source(error).unwrap().to_string();
            assert!(cause.contains("refused"), "{cause}");
        }
        let conflict = StoreError::Conflict("deadlock detected".into()).fan_out(1);
        assert!(matches!(conflict[0], StoreError::Conflict(_)));
    }

    #[test]
    fn transport_errors_are_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&sqlx::Error::Io(refused)), Class::Unavailable);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Class::Unavailable);
        assert_eq!(classify(&sqlx::Error::PoolClosed), Class::Unavailable);
        assert_eq!(
            classify(&sqlx::Error::RowNotFound),
            Class::Internal,
            "a missing row the store did not expect is a bug, not an outage"
        );
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_retryable());
    }
}
