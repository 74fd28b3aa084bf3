//! Certificate authorities (a root, intermediates) and the server and client certificates
//! they issue, in memory, as rcgen makes them; PEM out.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::inspect::{CertInfo, inspect};
use crate::{Error, SpiffeId};

/// How far back a validity window starts by default, so a peer whose clock is a little
/// behind accepts a certificate made a moment ago.
const BACKDATE: Duration = Duration::from_secs(60);

/// The kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: small, fast, accepted everywhere.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519 (accepted by rustls and BoringSSL; not by every TLS stack).
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    /// `ecdsa-p256`, `ecdsa-p384` or `ed25519`; `rsa` is refused with how to bring an RSA
    /// key instead (ring, the crypto library, cannot generate RSA keys).
    fn from_str(name: &str) -> Result<Self, Error> {
        match name.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "p256" | "ecdsa" => Ok(Self::EcdsaP256),
            "ecdsa-p384" | "p384" => Ok(Self::EcdsaP384),
            "ed25519" => Ok(Self::Ed25519),
            "rsa" => Err(Error::RsaGeneration),
            _ => Err(Error::UnknownKeyAlgorithm(name.to_owned())),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
        })
    }
}

/// A private key (PKCS#8): generated, or read from PEM (ECDSA P-256/P-384, Ed25519 or RSA).
pub struct PrivateKey(KeyPair);

impl PrivateKey {
    /// Generates a new key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        Ok(Self(KeyPair::generate_for(algorithm.rcgen())?))
    }

    /// Reads a PKCS#8 key (`-----BEGIN PRIVATE KEY-----`); `source` names it in errors.
    pub fn from_pem(pem: &str, source: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Pem {
            input: source.to_owned(),
            reason: reason.to_owned(),
        };
        let der = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => der,
            Ok(PrivateKeyDer::Pkcs1(_)) => {
                return Err(bad(
                    "an RSA key in PKCS#1 form (BEGIN RSA PRIVATE KEY); convert it to PKCS#8 with \
                     `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`",
                ));
            }
            Ok(PrivateKeyDer::Sec1(_)) => {
                return Err(bad(
                    "an EC key in SEC1 form (BEGIN EC PRIVATE KEY); convert it to PKCS#8 with \
                     `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`",
                ));
            }
            Ok(_) => return Err(bad("not a key type Keel can sign with")),
            Err(_) => return Err(bad("no PEM private key in it")),
        };
        KeyPair::try_from(&PrivatePkcs8KeyDer::from(der.secret_pkcs8_der()))
            .map(Self)
            .map_err(|_| bad("not an ECDSA P-256/P-384, Ed25519 or RSA key"))
    }

    /// The key as PEM (PKCS#8).
    pub fn pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The key as DER (PKCS#8), as rustls takes it.
    pub fn der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.0.serialize_der().into())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([secret])")
    }
}

/// When a certificate is valid: from `not_before` to `not_after`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first moment it is valid.
    pub not_before: SystemTime,
    /// The last moment it is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from a minute ago (for clocks a little behind) until `lasting` from now.
    pub fn for_next(lasting: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - BACKDATE,
            not_after: now + lasting,
        }
    }

    /// Valid between two moments.
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    /// Valid for a day that ended a day ago: an expired certificate, for tests.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self::between(now - 2 * DAY, now - DAY)
    }

    /// Valid from tomorrow on, for a day: a certificate not valid yet, for tests.
    pub fn not_yet_valid() -> Self {
        let now = SystemTime::now();
        Self::between(now + DAY, now + 2 * DAY)
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), Error> {
        if self.not_after <= self.not_before {
            return Err(Error::Validity);
        }
        params.not_before = to_offset(self.not_before);
        params.not_after = to_offset(self.not_after);
        Ok(())
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn to_offset(at: SystemTime) -> OffsetDateTime {
    let seconds = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Usage {
    /// TLS server authentication.
    #[default]
    Server,
    /// TLS client authentication (mTLS).
    Client,
    /// Both: a workload that serves and calls with one certificate.
    Both,
}

/// Where a certificate's key comes from.
#[derive(Debug)]
enum KeyChoice {
    Generate(KeyAlgorithm),
    Given(Box<PrivateKey>),
}

impl KeyChoice {
    fn take(self) -> Result<KeyPair, Error> {
        match self {
            Self::Generate(algorithm) => Ok(PrivateKey::generate(algorithm)?.0),
            Self::Given(key) => Ok(key.0),
        }
    }
}

/// What a certificate authority (root or intermediate) is made with.
#[derive(Debug)]
pub struct CaOptions {
    name: String,
    validity: Validity,
    key: KeyChoice,
}

impl CaOptions {
    /// A CA whose subject is `CN=<name>`, valid for a year, with an ECDSA P-256 key.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            validity: Validity::for_next(365 * DAY),
            key: KeyChoice::Generate(KeyAlgorithm::default()),
        }
    }

    /// Sets when it is valid.
    pub fn validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }

    /// Generates its key with `algorithm`.
    pub fn key_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.key = KeyChoice::Generate(algorithm);
        self
    }

    /// Uses an existing key (e.g. RSA, which ring cannot generate).
    pub fn key(mut self, key: PrivateKey) -> Self {
        self.key = KeyChoice::Given(Box::new(key));
        self
    }

    fn params(&self) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&self.name)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        self.validity.apply(&mut params)?;
        Ok(params)
    }
}

/// What a server or client (leaf) certificate is made with.
#[derive(Debug)]
pub struct LeafOptions {
    usage: Usage,
    common_name: Option<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    spiffe: Option<SpiffeId>,
    validity: Validity,
    key: KeyChoice,
}

impl LeafOptions {
    /// A certificate for `usage`, valid for 90 days, with an ECDSA P-256 key and no names
    /// yet (a server certificate needs at least one DNS name or IP address).
    pub fn new(usage: Usage) -> Self {
        Self {
            usage,
            common_name: None,
            dns: Vec::new(),
            ips: Vec::new(),
            spiffe: None,
            validity: Validity::for_next(90 * DAY),
            key: KeyChoice::Generate(KeyAlgorithm::default()),
        }
    }

    /// A server certificate ([`Usage::Server`]).
    pub fn server() -> Self {
        Self::new(Usage::Server)
    }

    /// A client certificate ([`Usage::Client`]).
    pub fn client() -> Self {
        Self::new(Usage::Client)
    }

    /// Adds a DNS name SAN (`localhost`, `payments.internal`, `*.svc.example`).
    pub fn dns(mut self, name: impl Into<String>) -> Self {
        self.dns.push(name.into());
        self
    }

    /// Adds an IP address SAN.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// Sets the SPIFFE ID (the one URI SAN an X.509 SVID has).
    pub fn spiffe(mut self, id: SpiffeId) -> Self {
        self.spiffe = Some(id);
        self
    }

    /// Sets the subject's common name (default: the first DNS name, else the SPIFFE ID,
    /// else the first IP address).
    pub fn common_name(mut self, name: impl Into<String>) -> Self {
        self.common_name = Some(name.into());
        self
    }

    /// Sets when it is valid.
    pub fn validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }

    /// Generates its key with `algorithm`.
    pub fn key_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.key = KeyChoice::Generate(algorithm);
        self
    }

    /// Uses an existing key (e.g. RSA, which ring cannot generate).
    pub fn key(mut self, key: PrivateKey) -> Self {
        self.key = KeyChoice::Given(Box::new(key));
        self
    }

    fn params(&self) -> Result<CertificateParams, Error> {
        if self.usage != Usage::Client && self.dns.is_empty() && self.ips.is_empty() {
            return Err(Error::NoServerName);
        }
        let mut params = CertificateParams::default();
        let dns = self
            .dns
            .iter()
            .map(|name| dns_name(name))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &dns {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| Error::InvalidDnsName(name.clone()))?,
            ));
        }
        params
            .subject_alt_names
            .extend(self.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        if let Some(id) = &self.spiffe {
            params
                .subject_alt_names
                .push(SanType::URI(id.as_str().try_into().map_err(|_| {
                    Error::InvalidSpiffeId {
                        id: id.to_string(),
                        reason: "not ASCII".into(),
                    }
                })?));
        }
        let common = self
            .common_name
            .clone()
            .or_else(|| dns.first().cloned())
            .or_else(|| self.spiffe.as_ref().map(ToString::to_string))
            .or_else(|| self.ips.first().map(ToString::to_string))
            .unwrap_or_else(|| "keel client".to_owned());
        params.distinguished_name = common_name(&common)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match self.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        self.validity.apply(&mut params)?;
        Ok(params)
    }
}

/// Checks a DNS name (a wildcard only as the whole first label) and lowercases it.
fn dns_name(name: &str) -> Result<String, Error> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    match rustls_pki_types::DnsName::try_from(rest) {
        Ok(_) if !rest.ends_with('.') && !rest.contains('*') => Ok(name.to_ascii_lowercase()),
        _ => Err(Error::InvalidDnsName(name.to_owned())),
    }
}

fn common_name(name: &str) -> Result<DistinguishedName, Error> {
    if name.is_empty() || name.len() > 64 {
        return Err(Error::InvalidCommonName(name.to_owned()));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    Ok(dn)
}

/// A random positive 128-bit serial number (RFC 5280: unique per CA, at most 20 bytes).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A certificate authority that can issue certificates: its certificate, its key, and the
/// intermediates between it and its root (none for a root).
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate: CertificateDer<'static>,
    /// The certificates above this one, up to but not including the root.
    parents: Vec<CertificateDer<'static>>,
    info: CertInfo,
}

impl Authority {
    /// Makes a self-signed root CA.
    pub fn root(options: CaOptions) -> Result<Self, Error> {
        let params = options.params()?;
        let key = options.key.take()?;
        let certificate = params.self_signed(&key)?.der().clone();
        Self::assemble(Issuer::new(params, key), certificate, Vec::new())
    }

    /// Makes an intermediate CA issued by this one.
    pub fn intermediate(&self, options: CaOptions) -> Result<Self, Error> {
        let params = options.params()?;
        let key = options.key.take()?;
        let certificate = params.signed_by(&key, &self.issuer)?.der().clone();
        Self::assemble(Issuer::new(params, key), certificate, self.chain_above())
    }

    /// Issues a server or client certificate.
    pub fn issue(&self, options: LeafOptions) -> Result<Issued, Error> {
        let params = options.params()?;
        let key = options.key.take()?;
        let leaf = params.signed_by(&key, &self.issuer)?.der().clone();
        let mut chain = vec![leaf];
        chain.extend(self.chain_above());
        Ok(Issued {
            chain,
            key: PrivateKey(key),
        })
    }

    /// Loads a CA from its PEM certificate (followed by the intermediates above it, if any)
    /// and PEM key; `cert_source` and `key_source` name them in errors.
    pub fn from_pem(
        cert_pem: &str,
        cert_source: &str,
        key_pem: &str,
        key_source: &str,
    ) -> Result<Self, Error> {
        let mut certs = certificates_from_pem(cert_pem, cert_source)?.into_iter();
        let certificate = certs.next().ok_or_else(|| Error::Pem {
            input: cert_source.to_owned(),
            reason: "no certificate in it".into(),
        })?;
        let info = inspect(&certificate)?;
        if !info.is_ca {
            return Err(Error::NotCa {
                input: cert_source.to_owned(),
                subject: info.subject,
            });
        }
        let key = PrivateKey::from_pem(key_pem, key_source)?.0;
        if key.subject_public_key_info() != info.public_key_der {
            return Err(Error::KeyMismatch {
                cert: cert_source.to_owned(),
                key: key_source.to_owned(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&certificate, key)?;
        // A root is not sent in chains; intermediates after this certificate are.
        let parents = certs
            .filter(|der| inspect(der).map(|c| !c.self_issued).unwrap_or(false))
            .collect();
        Self::assemble(issuer, certificate, parents)
    }

    fn assemble(
        issuer: Issuer<'static, KeyPair>,
        certificate: CertificateDer<'static>,
        parents: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let info = inspect(&certificate)?;
        Ok(Self {
            issuer,
            certificate,
            parents,
            info,
        })
    }

    /// What a certificate issued by this authority is sent with: this authority's
    /// certificate and those above it, unless it is the root (peers have the root).
    fn chain_above(&self) -> Vec<CertificateDer<'static>> {
        if self.is_root() {
            return Vec::new();
        }
        let mut chain = vec![self.certificate.clone()];
        chain.extend(self.parents.iter().cloned());
        chain
    }

    /// Whether this is a root (self-signed) CA.
    pub fn is_root(&self) -> bool {
        self.info.self_issued
    }

    /// This authority's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// What its certificate says (subject, validity, ...).
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Its certificate, then the intermediates above it, as PEM: what its `.pem` file holds
    /// (for a root: the trust anchor peers are given).
    pub fn cert_pem(&self) -> String {
        let mut all = vec![self.certificate.clone()];
        all.extend(self.parents.iter().cloned());
        pem_certificates(&all)
    }

    /// Its private key as PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("subject", &self.info.subject)
            .field("root", &self.is_root())
            .finish_non_exhaustive()
    }
}

/// An issued certificate with its chain and key.
#[derive(Debug)]
pub struct Issued {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
}

impl Issued {
    /// The certificate, then the intermediates up to (not including) the root: what a
    /// server or client presents.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The certificate alone.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        pem_certificates(&self.chain)
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }
}

/// Certificates as PEM blocks, in order.
pub fn pem_certificates(certs: &[CertificateDer<'_>]) -> String {
    let mut pem = String::new();
    for der in certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

/// Reads every certificate of a PEM bundle; `source` names it in errors.
pub fn certificates_from_pem(
    pem: &str,
    source: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::Pem {
            input: source.to_owned(),
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            input: source.to_owned(),
            reason: "no certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        });
    }
    Ok(certs)
}
