//! The gRPC face of the ledger: `AccountService` and `PaymentService` over a [`Store`].
//!
//! Handlers validate (INVALID_ARGUMENT with every field violation), apply the optional
//! per-payer rate limit, refuse a second concurrent request with an in-flight idempotency key
//! (ABORTED), call the store, and map its errors to business errors with details.
//!
//! # Ownership
//!
//! The **caller** is who a request acts for: the subject of its verified bearer token, else
//! the principal of its client certificate (`keel_core::identity::caller_from`), else nobody:
//! the **anonymous** caller (plaintext, no token: the embedded default). An account's
//! **owner** is the caller that created it, anonymous included, and never changes. The rule
//! is one equality, *owner = caller*, with anonymous a caller like any other:
//!
//! - Money leaves an account only at its owner's request: Process (the payer, also in
//!   ProcessBatch and ProcessStream) and Refund (the payee). Otherwise PERMISSION_DENIED,
//!   reason `ACCOUNT_NOT_OWNED`, with the account's id and never its owner's name, and no
//!   money moves. The store checks it on the account row it has locked for the debit, in
//!   the debit's transaction, before anything about the payer's currency or balance.
//! - Only the owner reads an account (GetAccount) or lists its payments (ListPayments); a
//!   payment (GetPayment) is readable by the owners of its payer and its payee
//!   (`PAYMENT_NOT_OWNED` otherwise). These answer PERMISSION_DENIED, not NOT_FOUND, as
//!   AIP-211 asks: an account's existence is no secret here, since anyone may credit any
//!   account (Deposit, or a payment's payee) and learns whether it exists, so NOT_FOUND
//!   would hide nothing and tell an owner using the wrong identity that its account is gone.
//! - Money may go into any account (Deposit, a payment's payee): crediting takes nothing
//!   from the owner. A Deposit answer shows the account only to its owner.
//! - Why anonymous callers own the unowned accounts, and only those: the README's plaintext
//!   flow keeps working unchanged, while an identified caller can never drain an account
//!   created anonymously (or before accounts had owners), and an anonymous one can never
//!   touch an account someone owns. With authentication required, as in production,
//!   nothing is anonymous, so an account without an owner can receive money but not lose
//!   any until an operator gives it one (`UPDATE accounts SET owner = ...`): failing closed.
//! - Idempotency keys are the caller's: the store claims `(operation, caller, key)`, so
//!   another caller's request under the same key executes as its own (and meets the rules
//!   above) instead of replaying, or being refused by, someone else's result; the in-flight
//!   set and the Redis replay cache are keyed the same way.

mod accounts;
mod convert;
mod errors;
mod inflight;
mod paging;
mod payments;
mod validate;

use std::sync::Arc;

use tonic::Status;

use crate::limit::Limiter;
use crate::pb::v1::account_service_server::AccountServiceServer;
use crate::pb::v1::payment_service_server::PaymentServiceServer;
use crate::store::{Account, Store};

pub use paging::Paging;
pub use validate::IDEMPOTENCY_HEADER;

/// The error domain of every business error this service returns.
pub const DOMAIN: &str = "payments.keel.dev";

/// Who a request acts for: the verified token's subject, else the client certificate's
/// principal; `None` for the anonymous caller. An empty name counts as anonymous, so it can
/// never own what anonymous callers do not.
fn caller(extensions: &http::Extensions) -> Option<String> {
    keel_core::identity::caller_from(extensions).filter(|name| !name.is_empty())
}

/// Both services over one store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Payments {
    store: Arc<dyn Store>,
    limiter: Option<Arc<Limiter>>,
    inflight: inflight::InFlight,
    paging: Paging,
}

impl Payments {
    /// Serves `store`; with `rate_limit_per_account > 0`, each payer may start that many
    /// payments per second (counted in this process; see [`Payments::limiter`] for Redis).
    pub fn new(store: Arc<dyn Store>, rate_limit_per_account: u32) -> Self {
        Self {
            store,
            limiter: (rate_limit_per_account > 0)
                .then(|| Arc::new(Limiter::local(rate_limit_per_account))),
            inflight: inflight::InFlight::default(),
            paging: Paging::default(),
        }
    }

    /// Applies `limiter` to payers instead of the one [`Payments::new`] made (if any), e.g. a
    /// [`Limiter::Redis`] shared by every instance.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use payments::limit::Limiter;
    /// use payments::service::Payments;
    ///
    /// let dir = std::env::temp_dir().join(format!("payments-doc-{}", std::process::id()));
    /// let store = payments::store::open(&format!("sqlite://{}/p.db", dir.display())).await?;
    /// // Ten payments a second per payer, counted here; `Limiter::Redis` shares the budget.
    /// let service = Payments::new(store, 0).limiter(Limiter::local(10));
    /// # drop(service);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(Arc::new(limiter));
        self
    }

    /// Pages ListPayments by `paging` instead of [`Paging::default`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use payments::service::{Paging, Payments};
    ///
    /// let dir = std::env::temp_dir().join(format!("payments-paging-{}", std::process::id()));
    /// let store = payments::store::open(&format!("sqlite://{}/p.db", dir.display())).await?;
    /// let mut paging = Paging::default();
    /// paging.max_page_size = 100;
    /// let service = Payments::new(store, 0).paging(paging);
    /// # drop(service);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn paging(mut self, paging: Paging) -> Self {
        self.paging = paging;
        self
    }

    /// Reads `account_id` for `caller`: PERMISSION_DENIED unless it is the caller's. Owners
    /// never change, so this read may be separate from what it guards.
    async fn owned_account(
        &self,
        account_id: &str,
        caller: Option<&str>,
    ) -> Result<Account, Status> {
        let account = self
            .store
            .get_account(account_id)
            .await
            .map_err(errors::store_status)?;
        if account.is_owned_by(caller) {
            Ok(account)
        } else {
            Err(errors::account_not_owned(account_id))
        }
    }

    /// The tonic service for `payments.v1.AccountService`.
    pub fn account_service(&self) -> AccountServiceServer<Self> {
        AccountServiceServer::new(self.clone())
    }

    /// The tonic service for `payments.v1.PaymentService`.
    pub fn payment_service(&self) -> PaymentServiceServer<Self> {
        PaymentServiceServer::new(self.clone())
    }
}
