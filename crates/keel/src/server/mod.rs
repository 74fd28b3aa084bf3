//! The Keel server: a builder over tonic services, served by Keel's serving core
//! ([`crate::serving`]; tonic's own lacks age jitter, a working grace period, connection
//! limits and a shutdown deadline), graceful shutdown in logged phases, and the rotation
//! of TLS material while serving.

mod admin;
mod builder;
mod fallback;
mod http;
mod reflection;
mod rotation;
mod shutdown;
mod stack;

pub use admin::{AdminServer, RunningAdmin};
pub use builder::{BoundServer, Server, ServerBuilder, ServerError};
pub use fallback::{GrpcStack, HttpService, MakeFallback};
pub use http::{BoundHttpServer, HttpServer};
pub use shutdown::ShutdownReport;
