//! What a server learns from a finished or failed handshake: the protocol ALPN chose, the
//! client's identity, and a short reason for a failure, fit for a metric label.

use std::io;
use std::sync::Arc;

use keel_core::identity::PeerIdentity;
use rustls::{CertificateError, Error, PeerIncompatible};

/// ALPN's name for HTTP/2.
pub const H2: &[u8] = b"h2";
/// ALPN's name for HTTP/1.1.
pub const HTTP_1_1: &[u8] = b"http/1.1";

/// The reason a handshake failed, as a metric label: `no_application_protocol` (the
/// client's ALPN list has none of ours), `no_client_certificate`, `certificate_expired`,
/// `certificate_untrusted` (not issued by a configured root), `certificate_invalid` (any
/// other refusal of the client's certificate, the SPIFFE rules included),
/// `protocol_version` (no TLS version in common: TLS 1.1 and older, whose hello lacks
/// TLS 1.2's `signature_algorithms`, or 1.2 against a 1.3-only listener), `incompatible` (no cipher suite, group or signature scheme in
/// common), `alert_received` (the client refused the server: an untrusted CA or the wrong
/// name, say), `not_tls` (not a TLS ClientHello: plaintext on a TLS port), `closed` (the
/// client went away) or `other`.
pub fn failure_reason(error: &io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        };
    };
    match tls {
        Error::NoApplicationProtocol => "no_application_protocol",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "certificate_expired",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "certificate_untrusted",
        Error::InvalidCertificate(_) => "certificate_invalid",
        Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired
            // Introduced by TLS 1.2: a hello without it is TLS 1.1 or older.
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ) => "protocol_version",
        Error::PeerIncompatible(_) => "incompatible",
        Error::AlertReceived(_) => "alert_received",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "not_tls",
        _ => "other",
    }
}

/// What the client chose and proved in a finished handshake.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    /// The protocol ALPN chose (`h2`, `http/1.1`), or `None` when the client offered no ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The client's identity, when it presented a certificate (read once per connection).
    pub peer: Option<Arc<PeerIdentity>>,
}

impl Negotiated {
    /// What `connection` negotiated. The certificate was verified during the handshake, so
    /// an identity that cannot be read here (it could not be) is left out.
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        let peer = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| crate::identity::peer_identity(leaf).ok())
            .map(Arc::new);
        Self {
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            peer,
        }
    }
}
