//! The Keel server: a builder over tonic services, Keel's own accept loop and connection
//! driver (tonic's lacks age jitter, a working grace period and a shutdown deadline), and
//! graceful shutdown in logged phases.

mod builder;
mod connection;
mod fallback;
mod reflection;
mod shutdown;

pub use builder::{BoundServer, Server, ServerBuilder, ServerError};
pub use fallback::{GrpcStack, HttpService, MakeFallback};
pub use shutdown::ShutdownReport;
