//! The gRPC vocabulary every Keel crate shares, and nothing heavier: the server, the client,
//! the gateway and the telemetry layers all speak it, and none of them has to pull in the
//! others to do so.
//!
//! - [`error`]: business errors as rich `google.rpc.Status` details, and reading them back;
//! - [`code`]: status codes as grpc-go names them, who is at fault, a finished call's code;
//! - [`context`]: `grpc-timeout`, the deadline and trace context a call carries along;
//! - [`status_check`]: a client-side guard that checks a peer's statuses before tonic does;
//! - [`identity`]: who calls: the peer's certificate identity and an end user's token claims;
//! - [`framing`]: the length-prefixed message framing, followed without buffering;
//! - [`method`]: the RPCs a descriptor set declares, by path;
//! - [`random`]: cheap per-thread random numbers for ids, jitter and load balancing;
//! - [`settings`]: settings checked before use, refused with the key, value and rule.

pub mod code;
pub mod context;
pub mod error;
pub mod framing;
pub mod identity;
pub mod method;
pub mod random;
pub mod settings;
pub mod status_check;
