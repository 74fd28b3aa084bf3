//! The one interface the service layer uses, whatever the database.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::error::StoreError;
use super::model::{Account, Idempotent, ListPosition, Payment, PaymentRequest};

/// The ledger's storage: accounts, deposits, payments and refunds.
///
/// Object-safe, so the service holds an `Arc<dyn Store>` chosen at start-up by
/// [`open`](crate::store::open), and wrappers (a cache of idempotent replays, fault injection
/// in tests) can stand in front of any backend. The boxed futures cost one allocation per
/// call, nothing beside a database round trip.
///
/// Cancel-safe: dropping a returned future before it completes rolls its transaction back;
/// if that happens while the commit is in flight, the outcome is unknown, and retrying with
/// the same idempotency key settles it. Under group commit (see
/// [`open_with`](crate::store::open_with)) a payment dropped before its batch starts is not
/// processed, and one dropped later is committed or not with its batch: again, retrying with
/// the key settles it.
pub trait Store: Send + Sync + 'static {
    /// The backend's name, `"sqlite"` or `"postgres"`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Opens an account with a zero balance, under `account_id` or a generated id when `None`,
    /// owned by `owner` (`None`: by anonymous callers; see [`Account::owner`]).
    ///
    /// Errors: [`StoreError::AccountExists`].
    fn create_account<'a>(
        &'a self,
        account_id: Option<&'a str>,
        currency: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Account, StoreError>>;

    /// Reads an account and its balance, whoever asks: the service decides who may see it
    /// (owners never change, so that check needs no transaction with this read).
    ///
    /// Errors: [`StoreError::AccountNotFound`].
    fn get_account<'a>(&'a self, account_id: &'a str)
    -> BoxFuture<'a, Result<Account, StoreError>>;

    /// Credits `amount_minor` (positive) from outside the system, in the account's currency.
    /// Returns the account as it stood right after this deposit, on a replay too. Any
    /// caller may credit any account; the key is `caller`'s (`None`: anonymous).
    ///
    /// Errors: [`StoreError::AccountNotFound`], [`StoreError::BalanceOverflow`],
    /// [`StoreError::IdempotencyKeyReused`].
    fn deposit<'a>(
        &'a self,
        account_id: &'a str,
        amount_minor: i64,
        idempotency_key: &'a str,
        caller: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Idempotent<Account>, StoreError>>;

    /// Moves money from the payer to the payee. Returns the payment as first recorded (not
    /// refunded), on a replay too. The payer must be owned by [`PaymentRequest::caller`],
    /// checked on the locked row in the transaction that debits it; the key is the caller's.
    ///
    /// Errors: [`StoreError::AccountNotFound`] (payer checked first),
    /// [`StoreError::AccountNotOwned`] (before anything about the payee),
    /// [`StoreError::CurrencyMismatch`], [`StoreError::InsufficientFunds`],
    /// [`StoreError::BalanceOverflow`], [`StoreError::IdempotencyKeyReused`].
    fn process<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>>;

    /// Reads a payment as it stands now.
    ///
    /// Errors: [`StoreError::PaymentNotFound`].
    fn get_payment<'a>(&'a self, payment_id: &'a str)
    -> BoxFuture<'a, Result<Payment, StoreError>>;

    /// At most `limit` of the payments the account paid or received, ordered by creation
    /// time, then payment id: the first ones, or those right after `after`. Read by key
    /// (`WHERE (created_at, payment_id) > after`), so listing page by page sees every payment
    /// that existed when it began exactly once, whatever is inserted meanwhile. `limit` is
    /// the caller's bound: the page is read into memory whole.
    ///
    /// Errors: [`StoreError::AccountNotFound`].
    fn list_payments<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a ListPosition>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Payment>, StoreError>>;

    /// Returns `amount_minor` (positive) of a payment from the payee to the payer. Returns the
    /// payment as it stood right after this refund, on a replay too. The payee must be owned
    /// by `caller` (`None`: anonymous), checked as for [`Store::process`]; the key is the
    /// caller's.
    ///
    /// Errors: [`StoreError::PaymentNotFound`], [`StoreError::AccountNotOwned`],
    /// [`StoreError::RefundExceedsPayment`],
    /// [`StoreError::InsufficientFunds`] (the payee no longer holds the amount),
    /// [`StoreError::BalanceOverflow`], [`StoreError::IdempotencyKeyReused`].
    fn refund<'a>(
        &'a self,
        payment_id: &'a str,
        amount_minor: i64,
        idempotency_key: &'a str,
        caller: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>>;

    /// Forgets idempotency keys older than `older_than`, but never one younger than the
    /// configured [`StoreConfig::idempotency_retention`]. Returns how many were removed. The
    /// deposits, payments and refunds they produced stay; a request reusing a forgotten key
    /// executes anew.
    ///
    /// [`StoreConfig::idempotency_retention`]: crate::store::StoreConfig::idempotency_retention
    fn purge_idempotency_keys(
        &self,
        older_than: Duration,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// One round trip to the database, for readiness checks.
    ///
    /// Errors: [`StoreError::Unavailable`] when the database cannot be reached.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Closes the connections, waiting for the ones in use to be returned. Operations started
    /// afterwards fail with [`StoreError::Unavailable`].
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}
