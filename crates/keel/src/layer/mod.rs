//! Per-request tower middleware that every Keel server stacks in front of its services.
//!
//! Outermost first, each layer sitting where it does for a reason:
//! 1. [`Track`]: accounts an RPC from arrival until its response body is gone, so the
//!    live-handler gauge and connection idleness also see RPCs refused further in (put on
//!    by the connection driver, `serving`, not by the stack below);
//! 2. `Observe` (from `keel-telemetry`): metrics, the "finished call" log and the span,
//!    outside everything that can end a call so that every status is observed;
//! 3. [`EnforceDeadline`]: holds calls to their `grpc-timeout`;
//! 4. [`Authorize`]: verifies the bearer token and applies the authorization policy
//!    (`auth.*`), inside observation so refusals are observed, and before any other work
//!    is done for a caller that may not call;
//! 5. [`MessageLimit`]: enforces message sizes on every service, including ones whose
//!    generated code Keel does not configure (health, reflection, users' services);
//! 6. [`LoadShed`]: refuses RPCs past the server-wide concurrency limit at once, with
//!    RESOURCE_EXHAUSTED, instead of queueing them;
//! 7. [`CatchPanic`]: turns a handler's panic into INTERNAL, innermost so the permit and
//!    the observation above it are released and reported as for any other failure.
//!
//! `server::stack` stacks them; `tests/docs.rs` checks that this list, the one in
//! docs/ARCHITECTURE.md and the stack agree.

mod authorize;
mod catch_panic;
mod deadline;
mod guard;
mod load_shed;
mod message_limit;
mod track;

pub use authorize::{AUTH_DOMAIN, AuthMetrics, Authorize, AuthorizeLayer};
pub use catch_panic::{CatchPanic, CatchPanicLayer};
pub use deadline::{DeadlineBody, DeadlineLayer, EnforceDeadline};
pub use guard::{GuardedBody, GuardedFuture};
pub use load_shed::{LoadShed, LoadShedLayer};
pub use message_limit::{LimitedBody, MessageLimit, MessageLimitLayer};
pub use track::{ActivitySample, ConnectionActivity, RpcGuard, Track, TrackLayer};

/// The error type of request bodies after Keel's layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Trailers ending a call with `code` and `message` (plain ASCII: it is not percent-encoded).
pub(crate) fn status_trailers(code: tonic::Code, message: &str) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", http::HeaderValue::from(code as i32));
    if let Ok(value) = http::HeaderValue::from_str(message) {
        trailers.insert("grpc-message", value);
    }
    trailers
}
