//! The business error model: typed errors that travel as rich `google.rpc.Status` details.
//!
//! - Servers return a [`BusinessError`] for every expected failure. It becomes a
//!   [`tonic::Status`] with a code chosen by the mapping guide on [`BusinessError`], a human
//!   message, and `grpc-status-details-bin` holding `ErrorInfo` (reason, domain, metadata)
//!   plus `RetryInfo`, `BadRequest`, `PreconditionFailure`, `ResourceInfo` and
//!   `QuotaFailure` where they fit.
//! - Unexpected failures go through [`internal`], which logs them with an error id and
//!   returns INTERNAL with only that id: internals never reach the caller.
//! - Clients read the details back with [`Details::from_status`], which never panics on
//!   what a peer sends and says when it was malformed.
//!
//! ```
//! use std::time::Duration;
//! use keel_core::error::{BusinessError, Details, Retry};
//!
//! let status: tonic::Status = BusinessError::unavailable("LEDGER_UNAVAILABLE", "ledger is down")
//!     .domain("payments.keel.dev")
//!     .retry_after(Duration::from_secs(2))
//!     .into();
//!
//! // On the client:
//! let details = Details::from_status(&status);
//! assert_eq!(details.retry(), Retry::After(Duration::from_secs(2)));
//! ```

mod business;
mod client;
mod internal;

pub use business::{BusinessError, Retry, is_valid_reason};
pub use client::Details;
pub use internal::{ERROR_ID_KEY, INTERNAL_REASON, KEEL_DOMAIN, internal};
pub use tonic_types::{FieldViolation, PreconditionViolation, QuotaViolation, ResourceInfo};
