//! Keel: a production gRPC runtime over tonic.
//!
//! tonic speaks the protocol; Keel adds what every team otherwise rebuilds: production
//! transport defaults, max connection age with jitter and grace, idle reaping, load shedding,
//! message limits on every service, grpc.health.v1 with `Watch` and `List`, reflection,
//! an admin port (`/healthz`, `/readyz`, `/metrics`) and graceful shutdown with a deadline.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = keel::config::ServerConfig::default();
//! let server = keel::Server::builder(config)
//!     .add_service(keel_interop::Greeter.into_service())
//!     .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
//!     .bind()
//!     .await?;
//! println!("grpc listening on {}", server.local_addr());
//! server.serve_until_signal().await?;
//! # Ok(()) }
//! ```
//!
//! Structure: [`config`] (typed, layered settings), [`serving`] (the accept loop and
//! connection driver behind every listener), [`server`] (builders, shutdown), [`layer`] (per-request middleware), [`health`], [`metrics`],
//! [`error`] (business errors as rich `google.rpc.Status` details, and reading them back),
//! and the admin listener.

mod admin;
pub mod client;
pub mod config;
pub mod dynamic;
pub mod error;
pub mod health;
pub mod layer;
pub mod logging;
pub mod metrics;
pub mod observe;
mod random;
pub mod reflect;
pub mod server;
pub mod serving;
pub mod telemetry;

pub use server::{BoundServer, Server, ServerBuilder, ServerError};
