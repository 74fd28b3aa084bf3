//! Certificates for TLS tests, made with rcgen (ECDSA P-256): root and intermediate CAs,
//! server and client leaves with DNS and URI SANs, expired ones, CA leaves, and a
//! directory that holds them as PEM files for as long as a test runs.
//!
//! ```
//! use keel_test_support::tls::Ca;
//!
//! let root = Ca::root("Test Root");
//! let issuing = root.intermediate("Test Issuing");
//! let server = issuing.leaf("server").dns("localhost").issue();
//! assert!(server.chain_pem.starts_with(&server.cert_pem));
//! assert!(server.chain_pem.ends_with(issuing.cert_pem()));
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

/// The organisation every test certificate's subject names.
pub const ORGANIZATION: &str = "Keel Test";

/// A certificate authority that issues leaves and intermediates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    der: Vec<u8>,
    /// PEM of this CA and the intermediates above it, this one first, without the root:
    /// what a leaf it issues presents after itself.
    intermediates: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.params.distinguished_name)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A self-signed root CA with common name `name`.
    pub fn root(name: &str) -> Self {
        let params = ca_params(name);
        let key = KeyPair::generate().expect("an ECDSA key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self {
            cert_pem: cert.pem(),
            der: cert.der().to_vec(),
            params,
            key,
            intermediates: String::new(),
        }
    }

    /// An intermediate CA named `name`, issued by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        let params = ca_params(name);
        let key = KeyPair::generate().expect("an ECDSA key");
        let cert = params
            .signed_by(&key, &self.issuer())
            .expect("an intermediate CA");
        let cert_pem = cert.pem();
        Self {
            intermediates: format!("{cert_pem}{}", self.intermediates),
            cert_pem,
            der: cert.der().to_vec(),
            params,
            key,
        }
    }

    /// Starts a leaf with common name `name`, issued by this CA.
    pub fn leaf(&self, name: &str) -> LeafBuilder<'_> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(name);
        params.not_before = date_time_ymd(2025, 1, 1);
        params.not_after = date_time_ymd(2099, 12, 31);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        LeafBuilder {
            issuer: self,
            params,
            key: None,
        }
    }

    /// This CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn subject(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, name);
    dn
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2099, 12, 31);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A leaf being described; [`LeafBuilder::issue`] signs it.
pub struct LeafBuilder<'a> {
    issuer: &'a Ca,
    params: CertificateParams,
    key: Option<KeyPair>,
}

impl LeafBuilder<'_> {
    /// Adds a DNS SAN.
    #[must_use]
    pub fn dns(mut self, name: &str) -> Self {
        let name = name.to_owned().try_into().expect("an IA5 DNS name");
        self.params.subject_alt_names.push(SanType::DnsName(name));
        self
    }

    /// Adds a URI SAN (a SPIFFE ID, say).
    #[must_use]
    pub fn uri(mut self, uri: &str) -> Self {
        let uri = uri.to_owned().try_into().expect("an IA5 URI");
        self.params.subject_alt_names.push(SanType::URI(uri));
        self
    }

    /// Adds an IP address SAN.
    #[must_use]
    pub fn ip(mut self, ip: std::net::IpAddr) -> Self {
        self.params.subject_alt_names.push(SanType::IpAddress(ip));
        self
    }

    /// Marks it a CA (basicConstraints CA:TRUE), which a leaf must not be.
    #[must_use]
    pub fn ca(mut self) -> Self {
        self.params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        self
    }

    /// Allows server authentication only (no `clientAuth` extended key usage).
    #[must_use]
    pub fn server_only(mut self) -> Self {
        self.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self
    }

    /// Valid only in 2020.
    #[must_use]
    pub fn expired(mut self) -> Self {
        self.params.not_before = date_time_ymd(2020, 1, 1);
        self.params.not_after = date_time_ymd(2021, 1, 1);
        self
    }

    /// Valid from 2098 on.
    #[must_use]
    pub fn not_yet_valid(mut self) -> Self {
        self.params.not_before = date_time_ymd(2098, 1, 1);
        self
    }

    /// Certifies `key` instead of a fresh one.
    #[must_use]
    pub fn key(mut self, key: KeyPair) -> Self {
        self.key = Some(key);
        self
    }

    /// Signs it.
    pub fn issue(self) -> Leaf {
        let key = match self.key {
            Some(key) => key,
            None => KeyPair::generate().expect("an ECDSA key"),
        };
        let cert = self
            .params
            .signed_by(&key, &self.issuer.issuer())
            .expect("a leaf certificate");
        let cert_pem = cert.pem();
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.issuer.intermediates),
            cert_pem,
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// An issued leaf: its certificate, the chain it presents, and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf alone, PEM.
    pub cert_pem: String,
    /// The leaf then the intermediates up to (without) the root, PEM.
    pub chain_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf, DER.
    pub der: Vec<u8>,
}

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct Dir(PathBuf);

impl Dir {
    /// Creates it.
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "keel-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }

    /// Writes `contents` to `name` in it (replacing the file atomically, as a certificate
    /// agent does: a new file renamed over the old) and returns the path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        let temporary = self.0.join(format!(".{name}.new"));
        std::fs::write(&temporary, contents).expect("write a test file");
        std::fs::rename(&temporary, &path).expect("rename a test file");
        path
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for Dir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
