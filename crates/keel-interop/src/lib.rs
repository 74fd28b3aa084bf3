//! The services Keel serves for users and for tests, and the standard interop client.
//!
//! - [`Greeter`]: `helloworld.Greeter`, exactly the upstream helloworld contract.
//! - [`TestService`]: `grpc.testing.TestService`, the gRPC interop service, which
//!   exercises all four RPC modes, metadata echo and status echo.
//! - [`client`]: the standard interop client cases, run against any `TestService` server.
//! - [`otlp`]: an OTLP trace collector, for tests of what a server exports.
//!
//! [`FILE_DESCRIPTOR_SET`] carries both contracts for reflection.

/// Code generated from `proto/helloworld` and `proto/grpc/testing`.
pub mod pb {
    /// `package helloworld`.
    #[allow(missing_docs, rustdoc::bare_urls, reason = "generated code")]
    pub mod helloworld {
        tonic::include_proto!("helloworld");
    }
    /// `package grpc.testing`.
    #[allow(missing_docs, rustdoc::bare_urls, reason = "generated code")]
    pub mod grpc_testing {
        tonic::include_proto!("grpc.testing");
    }
}

/// Encoded `FileDescriptorSet` of helloworld and grpc.testing (with imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/interop.bin"));

pub mod client;
mod echo_metadata;
mod greeter;
pub mod otlp;
mod test_service;

pub use echo_metadata::{ECHO_INITIAL_KEY, ECHO_TRAILING_KEY, EchoFuture, EchoMetadata};
pub use greeter::Greeter;
pub use test_service::{MAX_RESPONSE_SIZE, ResponseStream, TestService};
