//! Development certificates for Keel: a CA, intermediates, and server and client
//! certificates (DNS, IP and SPIFFE names, any validity window), made with rcgen in memory
//! and written as PEM; and [`check_chain`], which verifies a chain as rustls does (webpki)
//! and says what is wrong with it. `keel certs` and `keel tls doctor` are built on it, and
//! tests use it to make the certificates they need:
//!
//! ```
//! use keel_certs::{
//!     Authority, CaOptions, LeafOptions, Purpose, SpiffeId, Validity, check_chain, trust_anchors,
//! };
//!
//! let root = Authority::root(CaOptions::new("Test CA"))?;
//! let intermediate = root.intermediate(CaOptions::new("Test Intermediate"))?;
//! let server = intermediate.issue(LeafOptions::server().dns("localhost").ip([127, 0, 0, 1].into()))?;
//! let client = root.issue(LeafOptions::client().spiffe(SpiffeId::parse("spiffe://keel.test/payments")?))?;
//! let expired = root.issue(LeafOptions::server().dns("localhost").validity(Validity::expired()))?;
//!
//! let roots = trust_anchors(&[root.certificate().clone()]);
//! let name = "localhost".try_into()?;
//! let now = std::time::SystemTime::now();
//! assert!(check_chain(server.chain(), &roots, Purpose::Server, Some(&name), now).is_empty());
//! assert!(check_chain(client.chain(), &roots, Purpose::Client, None, now).is_empty());
//! let problems = check_chain(expired.chain(), &roots, Purpose::Server, Some(&name), now);
//! assert!(problems[0].to_string().starts_with("expired"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Keys are ECDSA P-256 unless asked otherwise (P-384 and Ed25519 are generated too). ring,
//! the crypto library, cannot generate RSA keys: an RSA key made elsewhere (openssl) is
//! accepted with [`PrivateKey::from_pem`].

mod files;
mod inspect;
mod issue;
mod spiffe;
mod verify;

use std::path::PathBuf;

pub use files::{Pair, read};
pub use inspect::{
    CertInfo, Timeliness, format_span, format_time, inspect, read_name, unix_seconds,
};
pub use issue::{
    Authority, CaOptions, Issued, KeyAlgorithm, LeafOptions, PrivateKey, Usage, Validity,
    certificates_from_pem, pem_certificates,
};
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor};
pub use spiffe::SpiffeId;
pub use verify::{ChainProblem, Purpose, check_chain, trust_anchors};

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SPIFFE ID breaks a rule of the specification.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The ID as given.
        id: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A DNS name is not one.
    #[error(
        "invalid DNS name {0:?}: labels of letters, digits and '-' separated by dots, \
         optionally starting with '*.'"
    )]
    InvalidDnsName(String),
    /// A common name is empty or too long.
    #[error("invalid common name {0:?}: it must be 1 to 64 characters")]
    InvalidCommonName(String),
    /// A server certificate was asked for without a name to verify it by.
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoServerName,
    /// A validity window ends before it starts.
    #[error("the validity window ends before it starts")]
    Validity,
    /// RSA key generation was asked for.
    #[error(
        "ring, the crypto library Keel uses, cannot generate RSA keys; make one with \
         `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key` and give \
         it as an existing key (keel certs: --key rsa.key)"
    )]
    RsaGeneration,
    /// A key algorithm name is unknown.
    #[error("unknown key algorithm {0:?}: use ecdsa-p256, ecdsa-p384 or ed25519")]
    UnknownKeyAlgorithm(String),
    /// PEM input holds nothing usable.
    #[error("{input}: {reason}")]
    Pem {
        /// The file (or other input) it came from.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate cannot be parsed.
    #[error("cannot read certificate: {0}")]
    BadCertificate(String),
    /// A certificate meant to issue others is not a CA.
    #[error("{input}: \"{subject}\" is not a CA certificate, so it cannot issue certificates")]
    NotCa {
        /// The file it came from.
        input: String,
        /// Its subject.
        subject: String,
    },
    /// A CA's certificate was found without its key.
    #[error(
        "found the CA certificate {} but not its key {}: issuing needs the CA's private key",
        cert.display(),
        key.display()
    )]
    MissingCaKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file looked for.
        key: PathBuf,
    },
    /// A key is not the certificate's.
    #[error("{key} is not the key of {cert} (their public keys differ)")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// A file to write exists already.
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// rcgen refused to make the certificate.
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}
