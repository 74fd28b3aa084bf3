//! The reference payments service: the `payments.v1` contract and the storage it runs on.
//!
//! - [`pb`]: code generated from `proto/payments/v1/payments.proto` (`AccountService`,
//!   `PaymentService`), and [`FILE_DESCRIPTOR_SET`] for reflection.
//! - [`store`]: the double-entry ledger behind one [`store::Store`] trait, on SQLite (the
//!   embedded default) or PostgreSQL, with Stripe-style idempotency keys; and
//!   [`store::CachedStore`], a fast path for idempotent replays in Redis.
//! - [`limit`]: the per-payer rate limiter, in process or in Redis.
//! - [`redis_conn`]: the Redis handle both share, quick to give up so Redis never stalls or
//!   fails a payment.
//! - [`load`]: what the load tools (`payments-load`, the `payments-devices` simulator)
//!   share: account setup, the simulator's plan, MQTT side and tally, and the ledger check.
//! - [`app`]: all of it assembled from [`config::PaymentsConfig`] on Keel's server, with the
//!   readiness checks of the database and Redis: what the `payments` binary runs.
//!
//! Architecture invariant: money only moves inside one database transaction that also writes
//! the balanced ledger entries and records the idempotency key.

/// Code generated from `proto/payments`.
pub mod pb {
    /// `package payments.v1`.
    #[allow(missing_docs, rustdoc::bare_urls, reason = "generated code")]
    pub mod v1 {
        tonic::include_proto!("payments.v1");
    }
}

/// Encoded `FileDescriptorSet` of payments.v1 (with its imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payments.bin"));

pub mod app;
pub mod config;
pub mod limit;
pub mod load;
pub mod redis_conn;
pub mod rest;
pub mod service;
pub mod store;
