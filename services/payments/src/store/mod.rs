//! Storage for the payments service: a double-entry ledger behind one [`Store`] trait.
//!
//! [`open`] picks the backend from the URL: `sqlite://path/to/file.db` (the embedded default;
//! one file, WAL mode) or `postgres://...`. Migrations run at open.
//!
//! What every backend guarantees:
//! - **Double entry.** Every deposit, payment and refund writes ledger entries that sum to zero
//!   and updates the balances in one transaction. Deposits are the only way money enters; their
//!   counter-entry is the world outside (a ledger entry with no account).
//! - **No overdraft.** A balance never goes negative: checked in the transaction, and by a
//!   `CHECK` constraint. Amounts use checked arithmetic; an overflow is
//!   [`StoreError::BalanceOverflow`], never a wrap.
//! - **One currency per transfer.** Payer, payee and payment share one currency.
//! - **Idempotency** (Stripe semantics). The key, a fingerprint of the parameters and the
//!   resulting record are written in the transaction that moves the money. The same key with the
//!   same parameters returns the original record with [`Idempotent::replayed`] set; with other
//!   parameters it is [`StoreError::IdempotencyKeyReused`]. A unique constraint makes
//!   concurrent requests with one key execute once, even across processes. Keys are scoped per
//!   caller and per operation, and kept for [`StoreConfig::idempotency_retention`] at least.
//! - **Ownership.** Money leaves an account only for its [`Account::owner`]: the caller a
//!   payment or refund names must own the payer (payee), checked on the row the transaction
//!   locked to debit it.
//!
//! [`CachedStore`] wraps any store with a Redis fast path for payment replays; the wrapped
//! store stays authoritative.
//!
//! Validation of requests (positive amounts, ISO-4217 codes, non-empty keys) is the service
//! layer's job; the database still refuses records that break the invariants.

mod api;
mod batch_statements;
mod cached;
mod config;
mod deadline;
mod engine;
mod error;
mod fingerprint;
mod group_commit;
mod ids;
mod layer;
mod ledger;
mod model;
mod open;
mod postgres;
mod records;
mod sqlite;
mod statements;

pub use api::Store;
pub use cached::{CachedStore, EXPIRY_MARGIN};
pub use config::StoreConfig;
pub use error::{BoxError, StoreError};
pub use layer::PaymentLayer;
pub use model::{Account, Idempotent, ListPosition, Payment, PaymentRequest, PaymentStatus};
pub use open::{open, open_with};
