//! Typed configuration: defaults with reasons, a TOML file, `KEEL_*` environment
//! variables and command-line overrides, validated at start with errors that name the key.

mod load;
mod server;

pub use load::{ConfigError, Loader, Validate, Violation};
pub use server::{
    ConnectionConfig, Http2Config, LimitsConfig, ObserveConfig, PayloadConfig, ServerConfig,
    ShutdownConfig,
};
