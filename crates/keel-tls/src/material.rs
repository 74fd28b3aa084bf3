//! Certificates and keys from PEM files, checked before anything uses them, with errors
//! that name the file and say what to do.
//!
//! [`Credentials`] are a certificate chain (leaf first, then intermediates) and its private
//! key (PKCS#8, SEC1 or PKCS#1). Loading checks that
//! - every certificate parses and is within its validity period now;
//! - the key is one the ring provider signs with, and matches the leaf's public key;
//! - the leaf follows the SPIFFE rules when it names a SPIFFE ID ([`crate::identity`]);
//! - the chain builds: each certificate is signed by the next, every one after the leaf
//!   is a CA, and the leaf's extended key usage allows its [`Role`].
//!
//! **Which anchor the chain is built to.** When a CA bundle is given (the server passes
//! its `client_ca`, a client its server CA) and holds the chain's issuer, the chain must
//! verify up to one of its roots, exactly as a peer trusting that bundle would verify it.
//! Otherwise the last certificate of the file is taken as the anchor: the file is our own,
//! so the links up to it are checked, but the peer's roots are not known here and whether
//! the peer trusts that last certificate's issuer is the peer's decision. A single
//! certificate whose issuer is unknown is checked for key, dates and identity only.
//! Intermediates are only ever used to build the chain, never as anchors.
//!
//! A [`CaBundle`] is a PEM file of trusted roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;

use crate::identity::{self, IdentityError};

/// Why certificates or keys cannot be used. Every message names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterialError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM ({reason}): it must hold `-----BEGIN ...-----` sections", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        reason: String,
    },
    /// No certificate in a file that must hold one.
    #[error(
        "{} holds no certificate (no `-----BEGIN CERTIFICATE-----` section): point it at the \
         PEM certificate chain (leaf first) or CA bundle",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate that does not parse.
    #[error(
        "certificate #{index} in {} cannot be parsed ({reason}): replace the file with the \
         PEM certificates as issued",
        path.display()
    )]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 0 (the leaf in a chain).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No private key in the key file.
    #[error(
        "{} holds no private key (`-----BEGIN PRIVATE KEY-----`, `EC PRIVATE KEY` or `RSA \
         PRIVATE KEY`): point the key setting at the certificate's key file",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A key in a format or of a type that cannot be used.
    #[error("the key in {} cannot be used: {reason}", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to convert it.
        reason: String,
    },
    /// The key is not the one the leaf certifies.
    #[error(
        "the key in {} does not match the certificate in {}: the two files come from \
         different issuances; install the key that was issued with this certificate",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate past its validity.
    #[error(
        "{what} in {} ({subject}) expired at {}: renew it",
        path.display(),
        humantime::format_rfc3339_seconds(*not_after)
    )]
    Expired {
        /// The file.
        path: PathBuf,
        /// `the leaf` or `certificate #N`.
        what: String,
        /// Its subject.
        subject: String,
        /// When it expired.
        not_after: SystemTime,
    },
    /// A certificate not yet valid.
    #[error(
        "{what} in {} ({subject}) is not valid before {}: check the clock, or install a \
         certificate valid now",
        path.display(),
        humantime::format_rfc3339_seconds(*not_before)
    )]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// `the leaf` or `certificate #N`.
        what: String,
        /// Its subject.
        subject: String,
        /// When it becomes valid.
        not_before: SystemTime,
    },
    /// The leaf breaks the SPIFFE rules.
    #[error("the leaf in {}: {source}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// The rule broken.
        source: IdentityError,
    },
    /// The chain does not build to its anchor.
    #[error("the certificate chain in {} does not verify: {reason}", path.display())]
    Chain {
        /// The file.
        path: PathBuf,
        /// What failed, and what to do.
        reason: String,
    },
}

/// What a certificate is used for, which its extended key usage must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server's certificate (`serverAuth`).
    Server,
    /// A client's certificate (`clientAuth`).
    Client,
}

/// Reads a file whole, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, MaterialError> {
    std::fs::read(path).map_err(|source| MaterialError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file's `CERTIFICATE` sections, in order; at least one.
/// `path` names the file in errors.
pub fn parse_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(path, error))?;
    if certs.is_empty() {
        return Err(MaterialError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or
/// PKCS#1 (`RSA PRIVATE KEY`). `path` names the file in errors.
pub fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(pem);
            Err(if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                MaterialError::UnsupportedKey {
                    path: path.to_owned(),
                    reason: "it is encrypted; store it decrypted with file permissions that \
                             protect it (`openssl pkey -in KEY -out KEY.plain`)"
                        .into(),
                }
            } else if text.contains("PRIVATE KEY-----") {
                MaterialError::UnsupportedKey {
                    path: path.to_owned(),
                    reason: "its PEM type is not PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE \
                             KEY`) or PKCS#1 (`RSA PRIVATE KEY`); convert it with `openssl \
                             pkey -in KEY -out KEY.pk8`"
                        .into(),
                }
            } else {
                MaterialError::NoKey {
                    path: path.to_owned(),
                }
            })
        }
        Err(error) => Err(pem_error(path, error)),
    }
}

fn pem_error(path: &Path, error: pem::Error) -> MaterialError {
    MaterialError::Pem {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

/// A certificate chain and the key it certifies, checked to belong together, to be in
/// date and to build (see the module documentation).
#[derive(Debug, Clone)]
pub struct Credentials {
    certified: Arc<CertifiedKey>,
    not_after: SystemTime,
    fingerprint: [u8; 32],
}

impl Credentials {
    /// Loads and checks the chain in `cert` and the key in `key` for `role`, building the
    /// chain to `anchors` when that bundle holds its issuer.
    pub fn load(
        cert: &Path,
        key: &Path,
        role: Role,
        anchors: Option<&CaBundle>,
    ) -> Result<Self, MaterialError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Self::from_pem(
            (cert, &cert_pem),
            (key, &key_pem),
            role,
            anchors,
            SystemTime::now(),
        )
    }

    /// [`Credentials::load`] from PEM already read: each file as (its path, for errors; its
    /// contents), checked as of `now`.
    pub fn from_pem(
        (cert_path, cert_pem): (&Path, &[u8]),
        (key_path, key_pem): (&Path, &[u8]),
        role: Role,
        anchors: Option<&CaBundle>,
        now: SystemTime,
    ) -> Result<Self, MaterialError> {
        let chain = parse_certificates(cert_path, cert_pem)?;
        let parsed = chain
            .iter()
            .enumerate()
            .map(|(index, der)| {
                identity::parse(der).map_err(|error| MaterialError::BadCertificate {
                    path: cert_path.to_owned(),
                    index,
                    reason: error.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX >> 2);
        for (index, cert) in parsed.iter().enumerate() {
            not_after = not_after.min(check_dates(cert_path, index, cert, now)?);
        }
        identity::identity_of(&parsed[0]).map_err(|source| MaterialError::Identity {
            path: cert_path.to_owned(),
            source,
        })?;
        for (index, cert) in parsed.iter().enumerate().skip(1) {
            if !cert.is_ca() {
                return Err(MaterialError::Chain {
                    path: cert_path.to_owned(),
                    reason: format!(
                        "certificate #{index} ({}) follows the leaf but is not a CA: the \
                         file must hold the leaf, then the intermediates that issued it, in \
                         order",
                        identity::rfc4514(cert.subject())
                    ),
                });
            }
        }
        let self_signed = parsed
            .last()
            .is_some_and(|top| top.subject() == top.issuer());
        drop(parsed);

        let key = parse_key(key_path, key_pem)?;
        let provider = crate::provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|error| MaterialError::UnsupportedKey {
                path: key_path.to_owned(),
                reason: format!(
                    "{error}; ring signs with ECDSA P-256 and P-384, Ed25519 and RSA of 2048 \
                     to 8192 bits"
                ),
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(MaterialError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                });
            }
        }
        verify_chain(&certified.cert, self_signed, role, anchors, now).map_err(|reason| {
            MaterialError::Chain {
                path: cert_path.to_owned(),
                reason,
            }
        })?;
        let fingerprint = Sha256::digest(&certified.cert[0]).into();
        Ok(Self {
            certified: Arc::new(certified),
            not_after,
            fingerprint,
        })
    }

    /// The chain and its signing key, as rustls takes them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// When the first certificate of the chain expires (the chain stops working then).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// SHA-256 of the leaf's DER, as `openssl x509 -fingerprint -sha256` prints it.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

/// Checks `cert`'s validity period at `now`; returns its end.
fn check_dates(
    path: &Path,
    index: usize,
    cert: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<SystemTime, MaterialError> {
    let what = || {
        if index == 0 {
            "the leaf".to_owned()
        } else {
            format!("certificate #{index}")
        }
    };
    let validity = cert.validity();
    let not_before = system_time(validity.not_before.timestamp());
    let not_after = system_time(validity.not_after.timestamp());
    if now < not_before {
        return Err(MaterialError::NotYetValid {
            path: path.to_owned(),
            what: what(),
            subject: identity::rfc4514(cert.subject()),
            not_before,
        });
    }
    if now > not_after {
        return Err(MaterialError::Expired {
            path: path.to_owned(),
            what: what(),
            subject: identity::rfc4514(cert.subject()),
            not_after,
        });
    }
    Ok(not_after)
}

/// Seconds since the epoch as a time (times before 1970 as the epoch).
fn system_time(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// Builds `chain` to an anchor as the module documentation says; a readable reason if it
/// does not.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    self_signed: bool,
    role: Role,
    anchors: Option<&CaBundle>,
    now: SystemTime,
) -> Result<(), String> {
    let algorithms = crate::provider().signature_verification_algorithms.all;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|error| error.to_string())?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let usage = match role {
        Role::Server => webpki::KeyUsage::server_auth(),
        Role::Client => webpki::KeyUsage::client_auth(),
    };
    let verify = |anchors: &[rustls_pki_types::TrustAnchor<'_>], intermediates| {
        leaf.verify_for_usage(algorithms, anchors, intermediates, time, usage, None, None)
            .map(|_| ())
    };
    if let Some(bundle) = anchors {
        match verify(&bundle.roots.roots, &chain[1..]) {
            Ok(()) => return Ok(()),
            // None of the bundle's roots issued this chain: build it within the file.
            Err(webpki::Error::UnknownIssuer) => {}
            Err(error) => return Err(describe(&error, role)),
        }
    }
    if chain.len() == 1 {
        // Nothing to build: a self-signed certificate or one whose issuer is not here.
        return Ok(());
    }
    let top = chain.last().expect("a chain is never empty");
    let anchor = webpki::anchor_from_trusted_cert(top).map_err(|error| error.to_string())?;
    let intermediates = &chain[1..chain.len() - 1];
    verify(&[anchor], intermediates).map_err(|error| {
        let reason = describe(&error, role);
        if self_signed {
            reason
        } else {
            format!("{reason} (checked up to the last certificate of the file)")
        }
    })
}

/// A webpki error in words, with what to do.
fn describe(error: &webpki::Error, role: Role) -> String {
    use webpki::Error as E;
    match error {
        E::UnknownIssuer => "no certificate in the chain or the CA bundle issued the last \
             certificate: an intermediate is missing from the file, or the bundle lacks the \
             root"
            .into(),
        E::InvalidSignatureForPublicKey => "a certificate's signature does \
             not verify with the key of the certificate after it: the file must hold the \
             leaf, then its issuers in order"
            .into(),
        E::CaUsedAsEndEntity => "the leaf is a CA certificate (basicConstraints CA:TRUE); \
             issue a leaf certificate"
            .into(),
        E::EndEntityUsedAsCa => "a certificate after the leaf is not a CA".into(),
        E::RequiredEkuNotFoundContext(_) => format!(
            "the leaf's extended key usage does not allow {} authentication; reissue it with \
             {}",
            match role {
                Role::Server => "server",
                Role::Client => "client",
            },
            match role {
                Role::Server => "serverAuth",
                Role::Client => "clientAuth",
            }
        ),
        E::CertExpired { .. } => "a certificate of the chain has expired: renew it".into(),
        E::CertNotValidYet { .. } => "a certificate of the chain is not valid yet".into(),
        other => format!("{other:?}"),
    }
}

/// Trusted root certificates from a PEM file.
#[derive(Debug, Clone)]
pub struct CaBundle {
    roots: Arc<RootCertStore>,
    not_after: SystemTime,
    certs: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Loads the roots in `path`; at least one.
    pub fn load(path: &Path) -> Result<Self, MaterialError> {
        Self::from_pem(path, &read(path)?)
    }

    /// [`CaBundle::load`] from PEM already read; `path` names the file in errors.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, MaterialError> {
        let certs = parse_certificates(path, pem)?;
        let mut roots = RootCertStore::empty();
        let mut not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX >> 2);
        for (index, der) in certs.iter().enumerate() {
            let bad = |reason: String| MaterialError::BadCertificate {
                path: path.to_owned(),
                index,
                reason,
            };
            let parsed = identity::parse(der).map_err(|error| bad(error.to_string()))?;
            not_after = not_after.min(system_time(parsed.validity().not_after.timestamp()));
            roots
                .add(der.clone())
                .map_err(|error| bad(error.to_string()))?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            not_after,
            certs,
        })
    }

    /// The roots, as rustls's verifiers take them.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The certificates, in file order.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// When the first of its certificates expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_test_support::tls::{Ca, Dir};
    use rand::{Rng, SeedableRng};

    fn load(
        dir: &Dir,
        chain: &str,
        key: &str,
        role: Role,
        bundle: Option<&CaBundle>,
    ) -> Result<Credentials, MaterialError> {
        let cert = dir.write("cert.pem", chain);
        let key = dir.write("key.pem", key);
        Credentials::load(&cert, &key, role, bundle)
    }

    fn bundle(dir: &Dir, pem: &str) -> CaBundle {
        CaBundle::load(&dir.write("ca.pem", pem)).unwrap()
    }

    #[test]
    fn a_chain_through_an_intermediate_loads_against_its_root() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let issuing = root.intermediate("Issuing");
        let leaf = issuing.leaf("server").dns("localhost").issue();
        let roots = bundle(&dir, root.cert_pem());
        let loaded = load(
            &dir,
            &leaf.chain_pem,
            &leaf.key_pem,
            Role::Server,
            Some(&roots),
        )
        .unwrap();
        assert_eq!(loaded.chain().len(), 2);
        assert_eq!(
            loaded.fingerprint(),
            <[u8; 32]>::from(Sha256::digest(&leaf.der))
        );
        // Without the bundle, the file's own last certificate is the anchor.
        load(&dir, &leaf.chain_pem, &leaf.key_pem, Role::Server, None).unwrap();
        // With the root in the file, it builds to it too.
        let with_root = format!("{}{}", leaf.chain_pem, root.cert_pem());
        load(&dir, &with_root, &leaf.key_pem, Role::Server, None).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = Dir::new();
        let ca = Ca::root("Root");
        let one = ca.leaf("one").issue();
        let two = ca.leaf("two").issue();
        let error = load(&dir, &one.chain_pem, &two.key_pem, Role::Server, None).unwrap_err();
        assert!(
            matches!(error, MaterialError::KeyMismatch { .. }),
            "{error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("key.pem") && text.contains("cert.pem"),
            "{text}"
        );
    }

    #[test]
    fn expired_and_future_certificates_are_refused_with_their_dates() {
        let dir = Dir::new();
        let ca = Ca::root("Root");
        let old = ca.leaf("old").expired().issue();
        let error = load(&dir, &old.chain_pem, &old.key_pem, Role::Server, None).unwrap_err();
        assert!(matches!(error, MaterialError::Expired { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("expired at 2021-01-01") && text.contains("renew"),
            "{text}"
        );
        let future = ca.leaf("future").not_yet_valid().issue();
        let error = load(&dir, &future.chain_pem, &future.key_pem, Role::Server, None).unwrap_err();
        assert!(
            matches!(error, MaterialError::NotYetValid { .. }),
            "{error}"
        );
    }

    #[test]
    fn files_without_what_they_must_hold_say_so() {
        let dir = Dir::new();
        let ca = Ca::root("Root");
        let leaf = ca.leaf("server").issue();
        let swapped = load(&dir, &leaf.key_pem, &leaf.key_pem, Role::Server, None).unwrap_err();
        assert!(
            matches!(swapped, MaterialError::NoCertificate { .. }),
            "{swapped}"
        );
        let no_key = load(&dir, &leaf.chain_pem, &leaf.cert_pem, Role::Server, None).unwrap_err();
        assert!(matches!(no_key, MaterialError::NoKey { .. }), "{no_key}");
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let error = load(&dir, &leaf.chain_pem, encrypted, Role::Server, None).unwrap_err();
        assert!(error.to_string().contains("encrypted"), "{error}");
        let missing = Credentials::load(
            &dir.path().join("absent.pem"),
            &dir.path().join("absent.key"),
            Role::Server,
            None,
        )
        .unwrap_err();
        assert!(missing.to_string().starts_with("cannot read "), "{missing}");
    }

    #[test]
    fn a_chain_out_of_order_or_with_a_foreign_certificate_is_refused() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let issuing = root.intermediate("Issuing");
        let leaf = issuing.leaf("server").issue();
        let other = Ca::root("Other");
        let foreign = format!("{}{}", leaf.cert_pem, other.cert_pem());
        let error = load(&dir, &foreign, &leaf.key_pem, Role::Server, None).unwrap_err();
        assert!(matches!(error, MaterialError::Chain { .. }), "{error}");
        let not_ca = format!("{}{}", leaf.cert_pem, ca_leaf(&root));
        let error = load(&dir, &not_ca, &leaf.key_pem, Role::Server, None).unwrap_err();
        assert!(error.to_string().contains("is not a CA"), "{error}");
    }

    fn ca_leaf(ca: &Ca) -> String {
        ca.leaf("plain").issue().cert_pem
    }

    #[test]
    fn the_extended_key_usage_must_allow_the_role() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let leaf = root.leaf("server").server_only().issue();
        let roots = bundle(&dir, root.cert_pem());
        load(
            &dir,
            &leaf.chain_pem,
            &leaf.key_pem,
            Role::Server,
            Some(&roots),
        )
        .unwrap();
        let error = load(
            &dir,
            &leaf.chain_pem,
            &leaf.key_pem,
            Role::Client,
            Some(&roots),
        )
        .unwrap_err();
        assert!(error.to_string().contains("clientAuth"), "{error}");
    }

    #[test]
    fn a_spiffe_leaf_that_is_a_ca_is_refused() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let leaf = root.leaf("svc").uri("spiffe://keel.test/svc").ca().issue();
        let error = load(&dir, &leaf.chain_pem, &leaf.key_pem, Role::Server, None).unwrap_err();
        assert!(matches!(error, MaterialError::Identity { .. }), "{error}");
    }

    /// PKCS#8 (what rcgen writes), SEC1 and PKCS#1 keys all load; openssl converts them.
    #[test]
    fn keys_in_pkcs8_sec1_and_pkcs1_load() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let ec = root.leaf("ec").issue();
        let pkcs8 = dir.write("ec.pem", &ec.key_pem);
        let sec1 = openssl(&["ec", "-in", path_str(&pkcs8)]);
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        load(&dir, &ec.chain_pem, &sec1, Role::Server, None).unwrap();

        let rsa_pkcs8 = openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]);
        let key = rcgen::KeyPair::from_pem(&rsa_pkcs8).unwrap();
        let rsa = root.leaf("rsa").key(key).issue();
        let rsa_path = dir.write("rsa.pem", &rsa_pkcs8);
        let pkcs1 = openssl(&["rsa", "-traditional", "-in", path_str(&rsa_path)]);
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        load(&dir, &rsa.chain_pem, &pkcs1, Role::Server, None).unwrap();
        load(&dir, &rsa.chain_pem, &rsa_pkcs8, Role::Server, None).unwrap();
    }

    fn path_str(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// Runs `openssl ARGS` and returns what it printed.
    fn openssl(args: &[&str]) -> String {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Garbage in every file is an error, never a panic.
    #[test]
    fn garbage_pem_is_an_error_never_a_panic() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let leaf = root.leaf("fuzz").issue();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let path = Path::new("fuzz.pem");
        for round in 0..2000 {
            let mut cert = leaf.chain_pem.clone().into_bytes();
            let mut key = leaf.key_pem.clone().into_bytes();
            let target = if round % 2 == 0 { &mut cert } else { &mut key };
            match round % 5 {
                0 | 1 => {
                    for _ in 0..rng.random_range(1..6) {
                        let at = rng.random_range(0..target.len());
                        target[at] = rng.random();
                    }
                }
                2 => target.truncate(rng.random_range(0..target.len())),
                3 => target.insert(rng.random_range(0..target.len()), b'\n'),
                _ => {
                    *target = (0..rng.random_range(0..400))
                        .map(|_| rng.random())
                        .collect()
                }
            }
            let _ = Credentials::from_pem(
                (path, &cert),
                (path, &key),
                Role::Server,
                None,
                SystemTime::now(),
            );
            let _ = CaBundle::from_pem(path, &cert);
        }
        let _ = dir;
    }
}
