//! The gRPC face of the ledger: `AccountService` and `PaymentService` over a [`Store`].
//!
//! Handlers validate (INVALID_ARGUMENT with every field violation), apply the optional
//! per-payer rate limit, refuse a second concurrent request with an in-flight idempotency key
//! (ABORTED), call the store, and map its errors to business errors with details.

mod accounts;
mod convert;
mod errors;
mod inflight;
mod paging;
mod payments;
mod validate;

use std::sync::Arc;

use crate::limit::Limiter;
use crate::pb::v1::account_service_server::AccountServiceServer;
use crate::pb::v1::payment_service_server::PaymentServiceServer;
use crate::store::Store;

pub use paging::Paging;
pub use validate::IDEMPOTENCY_HEADER;

/// The error domain of every business error this service returns.
pub const DOMAIN: &str = "payments.keel.dev";

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

    /// The tonic service for `payments.v1.AccountService`.
    pub fn account_service(&self) -> AccountServiceServer<Self> {
        AccountServiceServer::new(self.clone())
    }

    /// The tonic service for `payments.v1.PaymentService`.
    pub fn payment_service(&self) -> PaymentServiceServer<Self> {
        PaymentServiceServer::new(self.clone())
    }
}
