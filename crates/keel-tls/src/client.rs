//! TLS for a client's connections: [`ClientTlsConfig`] (the settings), and [`ClientTls`],
//! which runs the handshake over any byte stream and then checks what plain certificate
//! verification cannot: that the server chose `h2`, and that its identity is one the caller
//! expects (ALTS's target service accounts, as SPIFFE IDs or DNS names).
//!
//! The server's chain is verified by rustls's WebPKI verifier against the configured roots
//! (or the Mozilla roots when none are configured); intermediates it presents are used to
//! build the chain, never trusted as anchors. Its name is checked against the target's host,
//! or against `server_name` when set.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use keel_core::settings::{Checks, Validate};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::handshake::H2;
use crate::identity::peer_identity;
use crate::material::{CaBundle, Credentials, MaterialError, Role};
use crate::settings::TlsVersion;

/// A client's TLS settings. TLS is on when the channel is given them; every field is
/// optional.
///
/// ```
/// use keel_tls::ClientTlsConfig;
///
/// let mut tls = ClientTlsConfig::default();
/// tls.ca = "ca.pem".into();
/// tls.expected_identities = vec!["spiffe://keel.test/payments".into()];
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientTlsConfig {
    /// CA bundle, PEM, the server's chain must build to (empty: the Mozilla roots of
    /// `webpki-roots`, for public servers).
    pub ca: PathBuf,
    /// This client's certificate chain, PEM, for servers that ask for one (mutual TLS;
    /// set with `key`, or neither).
    pub cert: PathBuf,
    /// The private key of `cert`: PKCS#8, SEC1 or PKCS#1 PEM.
    pub key: PathBuf,
    /// The name the server's certificate must hold, and the SNI sent (empty: the
    /// target's host). For a server reached by IP address whose certificate names a host.
    pub server_name: String,
    /// The identities the server may have: SPIFFE IDs (`spiffe://trust-domain/path`) or
    /// DNS names (empty: any server the roots vouch for). Matched against the server's
    /// principal names: its SPIFFE ID when it has one, else its DNS SANs.
    pub expected_identities: Vec<String>,
    /// The lowest TLS version offered: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
    /// How often `ca`, `cert` and `key` are read to see whether their contents changed
    /// (`0s`, the default: never; at most a year). New material is checked as at start and
    /// used for new connections; material that fails the checks is logged and counted, and
    /// the old stays. Needs a Tokio runtime when the client is built.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Validate for ClientTlsConfig {
    fn check(&self, checks: &mut Checks) {
        crate::settings::check_pair(checks, &self.cert, &self.key);
        checks.duration("reload_interval", self.reload_interval);
        checks.require(
            self.server_name.is_empty() || ServerName::try_from(self.server_name.as_str()).is_ok(),
            "server_name",
            &self.server_name,
            "must be a DNS name or an IP address",
        );
        for id in &self.expected_identities {
            let valid = if id.starts_with("spiffe://") {
                crate::identity::check_spiffe_id(id).is_ok()
            } else {
                ServerName::try_from(id.as_str())
                    .is_ok_and(|name| matches!(name, ServerName::DnsName(_)))
            };
            checks.require(
                valid,
                "expected_identities",
                id,
                "must be a SPIFFE ID (spiffe://trust-domain/path) or a DNS name",
            );
        }
    }
}

/// Why a client's TLS could not be set up, or a connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// A file could not be used.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(String),
    /// The handshake failed (the message says which side refused what).
    #[error("TLS handshake with {server}: {reason}")]
    Handshake {
        /// The name the server was verified against.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server did not choose HTTP/2.
    #[error(
        "{server} did not negotiate h2 over ALPN (it chose {chosen}): gRPC needs HTTP/2; \
         check that this port serves gRPC, and that a proxy in front passes h2 through"
    )]
    NoH2 {
        /// The name the server was verified against.
        server: String,
        /// The protocol the server chose, or `none`.
        chosen: String,
    },
    /// The server's identity is not an expected one.
    #[error(
        "{server} presented identity {seen}, which is not among the expected identities \
         [{expected}]"
    )]
    UnexpectedIdentity {
        /// The name the server was verified against.
        server: String,
        /// What its certificate names (its principal names, comma separated).
        seen: String,
        /// The expected identities, comma separated.
        expected: String,
    },
}

/// A client's TLS, ready for handshakes: the rustls configuration (roots, client
/// certificate, ALPN `h2`) and the checks after the handshake.
#[derive(Clone)]
pub struct ClientTls {
    /// The configuration new connections use; swapped when the files change.
    config: Arc<ArcSwap<rustls::ClientConfig>>,
    reloads: Arc<Reloads>,
    server_name: Option<ServerName<'static>>,
    expected: Arc<[String]>,
}

/// How the reloads of a client's files went.
#[derive(Debug, Default)]
struct Reloads {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Checks `settings`, reads and checks their files, and builds the configuration; with
    /// a `reload_interval`, starts watching the files (on the current Tokio runtime) for as
    /// long as a clone of this client lives.
    pub fn load(settings: &ClientTlsConfig) -> Result<Self, ClientTlsError> {
        settings
            .validate()
            .map_err(|error| ClientTlsError::Config(error.to_string()))?;
        let files = Files::read(settings)?;
        let config = build(settings, &files)?;
        let server_name = (!settings.server_name.is_empty())
            .then(|| ServerName::try_from(settings.server_name.clone()))
            .transpose()
            .map_err(|error| ClientTlsError::Config(format!("server_name: {error}")))?;
        let tls = Self {
            config: Arc::new(ArcSwap::from_pointee(config)),
            reloads: Arc::default(),
            server_name,
            expected: settings.expected_identities.clone().into(),
        };
        if !settings.reload_interval.is_zero() {
            tokio::spawn(watch(
                Arc::downgrade(&tls.config),
                tls.reloads.clone(),
                settings.clone(),
                files.digest,
            ));
        }
        Ok(tls)
    }

    /// Reloads that swapped in new material, and reloads refused (bad material kept out).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads.ok.load(Ordering::Relaxed),
            self.reloads.failed.load(Ordering::Relaxed),
        )
    }

    /// Whether this client presents a certificate to servers that ask for one.
    pub fn presents_certificate(&self) -> bool {
        self.config.load().client_auth_cert_resolver.has_certs()
    }

    /// The name a server reached as `host` is verified against: `server_name` when set,
    /// else `host` (a DNS name or an IP address).
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, ClientTlsError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|_| {
            ClientTlsError::Config(format!(
                "`{host}` is not a DNS name or IP address to verify the server against; set \
                 server_name"
            ))
        })
    }

    /// Runs the handshake over `io` with the server named `name`, then checks ALPN chose
    /// `h2` and the server's identity is expected.
    pub async fn connect<IO>(
        &self,
        name: ServerName<'static>,
        io: IO,
    ) -> Result<TlsStream<IO>, ClientTlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let server = name.to_str().into_owned();
        let stream = tokio_rustls::TlsConnector::from(self.config.load_full())
            .connect(name, io)
            .await
            .map_err(|error| ClientTlsError::Handshake {
                server: server.clone(),
                reason: handshake_reason(&error),
            })?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(H2) {
            return Err(ClientTlsError::NoH2 {
                server,
                chosen: session
                    .alpn_protocol()
                    .map_or_else(|| "none".into(), |p| String::from_utf8_lossy(p).into()),
            });
        }
        if !self.expected.is_empty() {
            self.check_identity(&server, session.peer_certificates())?;
        }
        Ok(stream)
    }

    fn check_identity(
        &self,
        server: &str,
        chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<(), ClientTlsError> {
        let unexpected = |seen: String| ClientTlsError::UnexpectedIdentity {
            server: server.to_owned(),
            seen,
            expected: self.expected.join(", "),
        };
        let leaf = chain
            .and_then(|chain| chain.first())
            .ok_or_else(|| unexpected("none (no certificate)".into()))?;
        let identity = peer_identity(leaf).map_err(|error| unexpected(error.to_string()))?;
        let principals = identity.principals();
        if principals
            .iter()
            .any(|name| self.expected.iter().any(|wanted| wanted == name))
        {
            Ok(())
        } else {
            Err(unexpected(principals.join(", ")))
        }
    }
}

/// The files of a client's settings, as read once: their contents and their digest.
struct Files {
    ca: Option<Vec<u8>>,
    cert: Option<(Vec<u8>, Vec<u8>)>,
    digest: [u8; 32],
}

impl Files {
    fn read(settings: &ClientTlsConfig) -> Result<Self, ClientTlsError> {
        let optional = |path: &std::path::Path| {
            (!path.as_os_str().is_empty())
                .then(|| crate::material::read(path))
                .transpose()
        };
        let ca = optional(&settings.ca)?;
        let cert = match (optional(&settings.cert)?, optional(&settings.key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        let mut digest = Sha256::new();
        for part in [
            ca.as_deref(),
            cert.as_ref().map(|c| c.0.as_slice()),
            cert.as_ref().map(|c| c.1.as_slice()),
        ] {
            let part = part.unwrap_or_default();
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        Ok(Self {
            ca,
            cert,
            digest: digest.finalize().into(),
        })
    }
}

/// The rustls configuration of `settings` from `files`, every check made.
fn build(
    settings: &ClientTlsConfig,
    files: &Files,
) -> Result<rustls::ClientConfig, ClientTlsError> {
    let bundle = files
        .ca
        .as_deref()
        .map(|pem| CaBundle::from_pem(&settings.ca, pem))
        .transpose()?;
    let roots = match &bundle {
        Some(bundle) => bundle.roots().clone(),
        None => Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(settings.min_version.versions())
        .map_err(|error| ClientTlsError::Config(error.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &files.cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let credentials = Credentials::from_pem(
                (&settings.cert, cert),
                (&settings.key, key),
                Role::Client,
                bundle.as_ref(),
                SystemTime::now(),
            )?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                credentials.certified_key().clone(),
            )))
        }
    };
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(config)
}

/// Re-reads the files every `reload_interval` while the client lives; swaps in material
/// that changed and passes the checks, and keeps the old (logged, counted) otherwise.
async fn watch(
    config: Weak<ArcSwap<rustls::ClientConfig>>,
    reloads: Arc<Reloads>,
    settings: ClientTlsConfig,
    mut seen: [u8; 32],
) {
    let mut tick = tokio::time::interval(settings.reload_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(config) = config.upgrade() else {
            return;
        };
        let files = match Files::read(&settings) {
            Ok(files) if files.digest == seen => continue,
            Ok(files) => files,
            Err(error) => {
                reloads.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "client TLS files unreadable; keeping the current ones");
                continue;
            }
        };
        // Changed: whatever the outcome, not tried again until they change again.
        seen = files.digest;
        match build(&settings, &files) {
            Ok(new) => {
                config.store(Arc::new(new));
                reloads.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!("client TLS material reloaded; new connections use it");
            }
            Err(error) => {
                reloads.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "new client TLS material refused; keeping the current");
            }
        }
    }
}

/// A handshake failure in words a user can act on.
fn handshake_reason(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => explain(tls),
        None => error.to_string(),
    }
}

/// A TLS failure in words a user can act on. Some arrive after the handshake: in TLS 1.3
/// the server judges the client's certificate after the client's handshake is done, so
/// its refusal reaches the connection, not the handshake.
pub fn explain(tls: &rustls::Error) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    match tls {
        Tls::InvalidCertificate(Cert::UnknownIssuer) => {
            "the server's certificate is not issued by a trusted CA (set the CA bundle that \
             issued it, and check the server sends its intermediates)"
                .into()
        }
        Tls::InvalidCertificate(Cert::BadSignature) => {
            "the server's certificate names a trusted CA as its issuer but its signature does \
             not verify with that CA's key (was the CA regenerated? set the current CA bundle)"
                .into()
        }
        Tls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            format!(
                "{tls}: the server's certificate is for another name (set server_name to a name it holds)"
            )
        }
        Tls::InvalidCertificate(
            Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet,
        ) => format!("{tls}: the server's certificate is out of date"),
        Tls::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate (set cert and key)".into()
        }
        Tls::AlertReceived(Alert::UnknownCA | Alert::BadCertificate) => {
            "the server refused this client's certificate (is it issued by a CA the server \
             trusts?)"
                .into()
        }
        Tls::AlertReceived(Alert::NoApplicationProtocol) => {
            "the server offers no protocol this client speaks (h2): it is not a gRPC port".into()
        }
        Tls::AlertReceived(Alert::ProtocolVersion) => {
            "no TLS version in common with the server".into()
        }
        other => other.to_string(),
    }
}
