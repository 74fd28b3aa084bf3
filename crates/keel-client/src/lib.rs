//! Keel's client: a [`Channel`] that resolves its target, keeps HTTP/2 connections to every
//! backend, and spreads calls over them by a load-balancing policy, for any tonic client.
//!
//! The parts follow grpc-go's architecture, in Keel's own traits so the transport can
//! change: a [`Resolver`] turns the target into addresses (`dns:///`, `static:///`,
//! `file:///`, `unix:///`, or your own); the balancer keeps one subchannel per address,
//! each with its connections, states (IDLE, CONNECTING, READY, TRANSIENT_FAILURE) and
//! reconnection backoff; a [`Picker`] chooses the backend of each call (`pick_first`,
//! `round_robin`, `least_request`, `p2c_ewma`, or your own).
//!
//! No server is trusted: the status of every response is checked before tonic reads it, so
//! a malformed or missing one is a clear error, never a panic or a false OK;
//! [`CheckStatus`] does the same for any other transport, such as tonic's channel.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_client::Channel;
//! use keel_interop::pb::helloworld::{HelloRequest, greeter_client::GreeterClient};
//!
//! let channel = Channel::new("static:///127.0.0.1:50051,127.0.0.2:50051")?;
//! let mut greeter = GreeterClient::new(channel);
//! let reply = greeter.say_hello(HelloRequest { name: "world".into() }).await?;
//! # let _ = reply;
//! # Ok(()) }
//! ```

mod attempts;
mod backoff;
mod balancer;
mod channel;
mod config;
mod connector;
mod error;
mod health_check;
mod outlier;
mod picker;
mod replay;
mod resolver;
mod response;
mod retry;
pub mod service_config;
mod subchannel;
mod target;
#[cfg(test)]
mod testing;
mod transport_error;

pub use backoff::BackoffConfig;
pub use channel::{Channel, ChannelBuilder};
pub use config::{ChannelConfig, Http2Config, KeepaliveConfig, Policy};
pub use error::ConnectError;
pub use keel_core::settings::{InvalidSetting, Validate};
pub use keel_core::status_check::{CheckStatus, CheckedBody, Checking};
pub use keel_tls::{ClientTls, ClientTlsConfig, ClientTlsError};
pub use outlier::OutlierConfig;
pub use picker::{Backend, CallInfo, Picker};
pub use resolver::{BoxFuture, DnsSettings, Resolver};
pub use response::ResponseBody;
pub use service_config::ServiceConfigError;
pub use subchannel::ConnectivityState;
pub use target::{Address, Target, TargetError};
pub use transport_error::broken_protocol_status;
