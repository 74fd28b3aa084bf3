//! TLS for Keel, on rustls with the ring provider: certificates and keys read from PEM and
//! checked before use ([`material`]), the identity a certificate proves ([`identity`], with
//! the SPIFFE rules), a listener's settings ([`TlsConfig`]), and a server configuration
//! that rotates its material without a restart ([`ServerTls`]), and a client's TLS with
//! the checks after the handshake: `h2` chosen, the server's identity expected
//! ([`ClientTls`]).
//!
//! A leaf crate: no server, no metrics library, no async runtime of its own. Keel's
//! serving core runs the handshakes and counts them; Keel's client dials and hands the
//! stream to [`ClientTls`].

pub mod client;
pub mod handshake;
pub mod identity;
pub mod material;
pub mod server;
pub mod settings;
mod verifier;

use std::sync::Arc;

pub use client::{ClientTls, ClientTlsConfig, ClientTlsError};
pub use handshake::{H2, HTTP_1_1, Negotiated, failure_reason};
pub use identity::{IdentityError, peer_identity};
pub use material::{CaBundle, Credentials, MaterialError, Role};
pub use server::{Reloaded, ServerTls, ServerTlsError, TlsStatus, Trigger};
pub use settings::{ClientAuth, TlsConfig, TlsVersion};

/// The rustls this crate builds on, for building configurations around it.
pub use rustls;
/// The tokio integration of [`rustls`], whose streams a listener serves.
pub use tokio_rustls;

/// The crypto provider every Keel TLS configuration uses: ring, with its default cipher
/// suites, key exchange groups and signature algorithms.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
