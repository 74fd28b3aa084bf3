//! Observability of every call: Prometheus metrics with go-grpc-middleware's names, one
//! structured "finished call" log record, and an OpenTelemetry span, from one layer.
//!
//! One layer, not three: the three need the same facts (the method and its type, the start
//! time, the peer, the final status), and gathering them once per call is what keeps the
//! layer cheap enough to leave on. A call is reported exactly once, when its status passes
//! (in the trailers, or in the headers of a trailers-only response), or as CANCELLED when it
//! ends without one.
//!
//! - [`rpc_metrics`]: `grpc_server_*` / `grpc_client_*` families and per-method handles;
//! - [`by_peer`]: the server's series per caller identity (`peer_identity`), when on;
//! - `log_budget`: at most a few "finished call" records a second per outcome;
//! - [`semconv`]: the OpenTelemetry attribute names, in one place;
//! - [`payload`]: optional response payloads on spans, selected, redacted and truncated;
//! - [`server`]: the server layer; [`client`]: the client layer.
//!
//! Logs go to the `keel::rpc` target: "finished call" at debug for OK and CANCELLED, info for
//! the caller's errors and anything that ends a malformed request, warn for unavailability
//! and deadlines, error for internal failures, at most 5 a second per outcome (the rest at
//! debug, then one "suppressed K similar records" line); "started call" at debug. Payloads and
//! metadata are never logged.

mod body;
pub mod by_peer;
mod call;
pub mod client;
mod log_budget;
pub mod payload;
pub mod rpc_metrics;
pub mod semconv;
pub mod server;
pub(crate) mod spans;

pub use body::ObservedBody;
pub(crate) use call::intern;
pub use client::{ClientObserve, ClientObserveLayer, ClientObserver};
pub use rpc_metrics::{RpcMetrics, Side};
pub use server::{Observe, ObserveLayer, ServerObserver};
