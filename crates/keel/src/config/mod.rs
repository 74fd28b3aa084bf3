//! Typed configuration: defaults with reasons, a TOML file, `KEEL_*` environment
//! variables and command-line overrides, validated at start with errors that name the key.
//!
//! The same rules ([`Validate`]) run again when a server is bound, so a configuration built
//! in code is refused with the same [`InvalidSetting`] instead of panicking in a connection.

mod load;
mod server;

pub use keel_core::settings::{Checks, DurationText, InvalidSetting, MAX_DURATION, Validate};
pub use load::{ConfigError, Loader};
pub(crate) use server::KEEPALIVE_PROBES;
pub use server::{
    AuthConfig, ClientAuth, ConnectionConfig, Http2Config, LimitsConfig, ObserveConfig,
    PayloadConfig, ServerConfig, ShutdownConfig, TlsConfig, TlsVersion,
};
