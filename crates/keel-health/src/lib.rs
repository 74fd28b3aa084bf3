//! grpc.health.v1 with the protocol's full semantics, including `List`, and readiness checks
//! of the server's dependencies behind it and `/readyz`.
//!
//! tonic-health serves neither `List` nor `Watch` on an unknown service (it fails the call
//! where the protocol says to stream SERVICE_UNKNOWN and stay open), so Keel has its own.

mod readiness;
mod registry;
mod service;

pub use readiness::{CheckResult, Impact, Readiness, ReadinessCheck, ReadinessStatus};
pub use registry::{HealthRegistry, ServingStatus};
pub use service::HealthService;

/// Code generated from `proto/grpc/health/v1/health.proto`.
#[allow(missing_docs, rustdoc::bare_urls, reason = "generated code")]
pub mod pb {
    tonic::include_proto!("grpc.health.v1");
}

/// Encoded descriptor set of grpc.health.v1, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/health.bin"));
