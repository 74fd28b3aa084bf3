//! Device ingress for Keel: devices publish requests over MQTT, and `keel bridge` carries each
//! one through a durable log to a gRPC method, so that every request has exactly one effect.
//!
//! Two stages with a log between them:
//! - **ingest** reads MQTT (QoS 1, persistent session, manual acknowledgements), appends each
//!   request to the log keyed by device and deduplicated by its idempotency key, and sends the
//!   PUBACK only once the log has acknowledged the append;
//! - **deliver** reads the log and calls the target through Keel's channel with the same key,
//!   and marks a record done only after an OK or a terminal error.
//!
//! A crash at any point therefore repeats work, never loses it, and the target's idempotency
//! keys turn the repeat into a replay. The log is a trait ([`log::LogWriter`],
//! [`log::LogReader`]) with backends for Kafka, NATS JetStream and an embedded SQLite file.

pub mod bridge;
pub mod deliver;
pub mod fault;
pub mod ingest;
pub mod intake;
pub mod lanes;
pub mod log;
pub mod metrics;
pub mod mqtt;
pub mod record;
pub mod route;
pub mod spans;

pub use bridge::{Backend, Bridge, BridgeConfig, LogConfig};
