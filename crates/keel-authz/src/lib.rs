//! Who may call what, for Keel servers: authorization policies in grpc-go's authz JSON
//! format ([`policy`]), end users' bearer JWTs verified against a JWKS ([`token`]), both
//! files watched and swapped atomically when they change ([`watch`]), configured by
//! [`AuthConfig`] (`auth.*`) and put together by [`Auth`].
//!
//! A leaf: it knows HTTP headers and keel-core's [`PeerIdentity`](keel_core::identity::PeerIdentity)
//! and [`Claims`](keel_core::identity::Claims), not Keel's server or its metrics. The
//! server's `Authorize` layer (in `keel`) calls it for every request, and counts reloads
//! through a [`watch::ReloadObserver`].

mod auth;
mod config;
pub mod policy;
pub mod token;
pub mod watch;

pub use auth::Auth;
pub use config::{AuthConfig, MAX_CLOCK_SKEW};
#[cfg(feature = "testing")]
pub mod testing;
