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
//! This crate is the server: [`config`] (typed, layered settings), [`serving`] (the accept
//! loop and connection driver behind every listener), [`server`] (builders, shutdown),
//! [`layer`] (per-request middleware), [`metrics`] and the admin listener. It is also the
//! facade over Keel's other crates, as `tonic` is over its parts; depend on one of those
//! alone to compile less:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`error`], [`code`], [`context`], [`method`] | `keel-core` | rich business errors, status codes, `grpc-timeout`, method tables |
//! | [`client`] | `keel-client` | the channel: resolvers, balancing, retries, hedging |
//! | [`dynamic`], [`reflect`] | `keel-dynamic` | messages from descriptors; a reflection client |
//! | [`health`] | `keel-health` | grpc.health.v1 and readiness |
//! | [`telemetry`], [`observe`], [`logging`] | `keel-telemetry` | metrics, logs, traces |
//! | [`authz`] | `keel-authz` | authorization policies, bearer tokens, `auth.*` |
//! | [`tls`] | `keel-tls` | certificates, peer identities, reloadable server TLS |

mod admin;
pub mod config;
pub mod layer;
pub mod metrics;
pub mod server;
pub mod serving;

pub use keel_authz as authz;
pub use keel_client as client;
pub use keel_core::{code, context, error, identity, method};
pub use keel_dynamic as dynamic;
pub use keel_dynamic::reflect;
pub use keel_health as health;
pub use keel_telemetry as telemetry;
pub use keel_telemetry::{logging, observe};
pub use keel_tls as tls;
pub use server::{BoundServer, Server, ServerBuilder, ServerError};
