//! Wrappers in front of a store that change how payments are processed and forward every
//! other operation unchanged: the replay cache, and test doubles that count or slow payments.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::api::Store;
use super::error::StoreError;
use super::model::{Account, Idempotent, ListPosition, Payment, PaymentRequest};

/// A store wrapper that intercepts [`Store::process`]; every type implementing it is a
/// [`Store`] whose other operations go straight to [`PaymentLayer::inner`].
///
/// Only `process` is interceptable because only it needs to be today; to intercept another
/// operation, add a method here with the forwarding as its default.
pub trait PaymentLayer: Send + Sync + 'static {
    /// The store every operation other than `process` goes to.
    fn inner(&self) -> &dyn Store;

    /// Processes a payment, typically by calling the inner store around some extra work.
    fn process_payment<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>>;
}

impl<L: PaymentLayer> Store for L {
    fn backend(&self) -> &'static str {
        self.inner().backend()
    }

    fn create_account<'a>(
        &'a self,
        account_id: Option<&'a str>,
        currency: &'a str,
        owner: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Account, StoreError>> {
        self.inner().create_account(account_id, currency, owner)
    }

    fn get_account<'a>(
        &'a self,
        account_id: &'a str,
    ) -> BoxFuture<'a, Result<Account, StoreError>> {
        self.inner().get_account(account_id)
    }

    fn deposit<'a>(
        &'a self,
        account_id: &'a str,
        amount_minor: i64,
        idempotency_key: &'a str,
        caller: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Idempotent<Account>, StoreError>> {
        self.inner()
            .deposit(account_id, amount_minor, idempotency_key, caller)
    }

    fn process<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        self.process_payment(request)
    }

    fn get_payment<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Payment, StoreError>> {
        self.inner().get_payment(payment_id)
    }

    fn list_payments<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a ListPosition>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Payment>, StoreError>> {
        self.inner().list_payments(account_id, after, limit)
    }

    fn refund<'a>(
        &'a self,
        payment_id: &'a str,
        amount_minor: i64,
        idempotency_key: &'a str,
        caller: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        self.inner()
            .refund(payment_id, amount_minor, idempotency_key, caller)
    }

    fn purge_idempotency_keys(
        &self,
        older_than: Duration,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner().purge_idempotency_keys(older_than)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner().ping()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner().close()
    }
}
