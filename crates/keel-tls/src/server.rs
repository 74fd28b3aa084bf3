//! [`ServerTls`]: a listener's TLS configuration, reloadable while it serves.
//!
//! The current `rustls::ServerConfig` sits in an [`ArcSwap`]: each handshake loads it once
//! (a lock-free read; no lock a reload could hold against an accept) and keeps that `Arc`
//! for its whole handshake, so a reload changes new handshakes only and never one in
//! progress. [`ServerTls::reload`] re-reads the files, checks everything
//! [`Credentials`] and [`CaBundle`] check, builds a new config and swaps it in, all or
//! nothing: material that fails a check leaves the current config serving and comes back
//! as the error to log and count.
//!
//! Session resumption (stateless tickets and the session cache) survives a certificate
//! rotation: both are shared by successive configs. A change of the client CA bundle
//! starts them afresh, so a session a removed CA once authenticated cannot be resumed.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::server::{WebPkiClientVerifier, danger::ClientCertVerifier};
use sha2::{Digest, Sha256};

use crate::material::{self, CaBundle, Credentials, MaterialError, Role};
use crate::settings::{ClientAuth, TlsConfig};
use crate::verifier::SpiffeClientVerifier;

/// Sessions the resumption cache holds (rustls's default): a few hundred bytes each.
const SESSION_CACHE: usize = 256;

/// What the server's metrics and logs report of the material in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsStatus {
    /// When the first certificate of the serving chain expires.
    pub cert_not_after: SystemTime,
    /// When the first certificate of the client CA bundle expires, if there is one.
    pub client_ca_not_after: Option<SystemTime>,
    /// SHA-256 of the serving leaf's DER.
    pub fingerprint: [u8; 32],
}

impl TlsStatus {
    /// The fingerprint as `openssl x509 -fingerprint -sha256` prints it (`AB:CD:...`).
    pub fn fingerprint_hex(&self) -> String {
        let hex: Vec<String> = self
            .fingerprint
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        hex.join(":")
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold what is in use (or, when polled, what was last refused).
    Unchanged,
    /// New material is in use for new handshakes.
    Swapped(TlsStatus),
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A periodic look: files whose contents were refused before are not tried again
    /// until they change, so a bad rotation is reported once, not every period.
    Poll,
    /// An operator's request (SIGHUP): tries again whatever was refused before.
    Signal,
}

/// One loaded configuration and where it came from.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    status: TlsStatus,
    /// Of the three files' contents, to tell a change (content, not mtime).
    digest: [u8; 32],
    /// Of the client CA bundle alone, to tell when resumption must start afresh.
    ca_digest: [u8; 32],
}

/// Session resumption state, shared by successive configs.
#[derive(Clone)]
struct Resumption {
    cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl Resumption {
    fn new() -> Result<Self, rustls::Error> {
        Ok(Self {
            cache: ServerSessionMemoryCache::new(SESSION_CACHE),
            ticketer: rustls::crypto::ring::Ticketer::new()?,
        })
    }
}

/// A listener's TLS configuration and how to reload it. Cheap to share (`Arc`).
pub struct ServerTls {
    settings: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<Loaded>,
    /// Reloads one at a time, with the resumption state and the digest of the material
    /// last refused.
    reloading: Mutex<(Resumption, Option<[u8; 32]>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Why a server TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerTlsError {
    /// The files' contents fail a check.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// rustls refused the configuration (no usable roots in the client CA bundle, say).
    #[error("{what}: {reason}")]
    Config {
        /// What was being set up, naming the file.
        what: String,
        /// rustls's reason.
        reason: String,
    },
}

impl ServerTls {
    /// Loads the material `settings` names (TLS must be on) and builds the configuration,
    /// offering `alpn` in order of preference ([`crate::H2`], then [`crate::HTTP_1_1`]
    /// where the listener serves HTTP/1.1).
    pub fn load(settings: &TlsConfig, alpn: &[&[u8]]) -> Result<Self, ServerTlsError> {
        let resumption = Resumption::new().map_err(|error| ServerTlsError::Config {
            what: "session tickets".into(),
            reason: error.to_string(),
        })?;
        let files = Files::read(settings)?;
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let loaded = build(settings, &alpn, &files, &resumption)?;
        Ok(Self {
            settings: settings.clone(),
            alpn,
            current: ArcSwap::from_pointee(loaded),
            reloading: Mutex::new((resumption, None)),
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load().config.clone()
    }

    /// An acceptor for one handshake with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    /// What is in use now.
    pub fn status(&self) -> TlsStatus {
        self.current.load().status.clone()
    }

    /// The settings it was loaded from.
    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }

    /// Reads the files again and, when their contents changed and pass every check,
    /// swaps the new configuration in for new handshakes. On error nothing changes.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ServerTlsError> {
        let mut guard = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (resumption, refused) = &mut *guard;
        let files = Files::read(&self.settings)?;
        let current = self.current.load();
        if files.digest == current.digest
            || (trigger == Trigger::Poll && Some(files.digest) == *refused)
        {
            return Ok(Reloaded::Unchanged);
        }
        if files.ca_digest != current.ca_digest {
            *resumption = Resumption::new().map_err(|error| ServerTlsError::Config {
                what: "session tickets".into(),
                reason: error.to_string(),
            })?;
        }
        match build(&self.settings, &self.alpn, &files, resumption) {
            Ok(loaded) => {
                let status = loaded.status.clone();
                self.current.store(Arc::new(loaded));
                *refused = None;
                Ok(Reloaded::Swapped(status))
            }
            Err(error) => {
                *refused = Some(files.digest);
                Err(error)
            }
        }
    }
}

/// The files' contents, read once per load.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    digest: [u8; 32],
    ca_digest: [u8; 32],
}

impl Files {
    fn read(settings: &TlsConfig) -> Result<Self, MaterialError> {
        let cert = material::read(&settings.cert)?;
        let key = material::read(&settings.key)?;
        let client_ca = settings.client_ca().map(material::read).transpose()?;
        let mut all = Sha256::new();
        for part in [
            &cert[..],
            &key[..],
            client_ca.as_deref().unwrap_or_default(),
        ] {
            all.update((part.len() as u64).to_be_bytes());
            all.update(part);
        }
        let ca_digest = Sha256::digest(client_ca.as_deref().unwrap_or_default()).into();
        Ok(Self {
            cert,
            key,
            client_ca,
            digest: all.finalize().into(),
            ca_digest,
        })
    }
}

/// Checks the material and builds a configuration from it.
fn build(
    settings: &TlsConfig,
    alpn: &[Vec<u8>],
    files: &Files,
    resumption: &Resumption,
) -> Result<Loaded, ServerTlsError> {
    let ca_path = settings.client_ca().unwrap_or(Path::new(""));
    let bundle = files
        .client_ca
        .as_deref()
        .map(|pem| CaBundle::from_pem(ca_path, pem))
        .transpose()?;
    let credentials = Credentials::from_pem(
        (&settings.cert, &files.cert),
        (&settings.key, &files.key),
        Role::Server,
        bundle.as_ref(),
        SystemTime::now(),
    )?;
    let provider = crate::provider();
    let verifier: Arc<dyn ClientCertVerifier> = match (&bundle, settings.client_auth) {
        (Some(bundle), ClientAuth::Optional | ClientAuth::Required) => {
            let builder = WebPkiClientVerifier::builder_with_provider(
                bundle.roots().clone(),
                provider.clone(),
            );
            let builder = if settings.client_auth == ClientAuth::Optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            let webpki = builder.build().map_err(|error| ServerTlsError::Config {
                what: format!("client CA bundle {}", ca_path.display()),
                reason: error.to_string(),
            })?;
            Arc::new(SpiffeClientVerifier(webpki))
        }
        _ => WebPkiClientVerifier::no_client_auth(),
    };
    let versions = settings.min_version.versions();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|error| ServerTlsError::Config {
            what: "protocol versions".into(),
            reason: error.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            credentials.certified_key().clone(),
        )));
    config.alpn_protocols = alpn.to_vec();
    config.session_storage = resumption.cache.clone();
    config.ticketer = resumption.ticketer.clone();
    Ok(Loaded {
        config: Arc::new(config),
        status: TlsStatus {
            cert_not_after: credentials.not_after(),
            client_ca_not_after: bundle.as_ref().map(CaBundle::not_after),
            fingerprint: credentials.fingerprint(),
        },
        digest: files.digest,
        ca_digest: files.ca_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_test_support::tls::{Ca, Dir, Leaf};

    fn write(dir: &Dir, leaf: &Leaf) {
        dir.write("server.pem", format!("{}{}", leaf.chain_pem, leaf.key_pem));
    }

    fn fingerprint(leaf: &Leaf) -> [u8; 32] {
        Sha256::digest(&leaf.der).into()
    }

    #[test]
    fn reloads_swap_good_material_keep_the_old_on_bad_and_keep_resumption() {
        let dir = Dir::new();
        let root = Ca::root("Root");
        let first = root.leaf("server").dns("localhost").issue();
        write(&dir, &first);
        let file = dir.path().join("server.pem");
        let mut settings = TlsConfig::new(&file, &file);
        settings.client_ca = dir.write("ca.pem", root.cert_pem());
        settings.client_auth = ClientAuth::Optional;
        let tls = ServerTls::load(&settings, &[crate::H2]).unwrap();
        let before = tls.config();
        assert_eq!(before.alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(tls.status().fingerprint, fingerprint(&first));
        assert_eq!(tls.reload(Trigger::Poll).unwrap(), Reloaded::Unchanged);

        let second = root.leaf("server").dns("localhost").issue();
        write(&dir, &second);
        let Reloaded::Swapped(status) = tls.reload(Trigger::Poll).unwrap() else {
            panic!("new material was not swapped in");
        };
        assert_eq!(status.fingerprint, fingerprint(&second));
        let after = tls.config();
        assert!(Arc::ptr_eq(&before.ticketer, &after.ticketer));
        assert!(Arc::ptr_eq(&before.session_storage, &after.session_storage));

        // A key that is not the certificate's: refused, reported once when polled, again
        // when an operator asks; the second certificate keeps serving.
        let third = root.leaf("server").dns("localhost").issue();
        dir.write(
            "server.pem",
            format!("{}{}", third.chain_pem, second.key_pem),
        );
        let error = tls.reload(Trigger::Poll).unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
        assert_eq!(tls.reload(Trigger::Poll).unwrap(), Reloaded::Unchanged);
        assert!(tls.reload(Trigger::Signal).is_err());
        assert_eq!(tls.status().fingerprint, fingerprint(&second));

        // A new CA bundle starts resumption afresh.
        write(&dir, &second);
        let other = Ca::root("Other");
        dir.write("ca.pem", format!("{}{}", root.cert_pem(), other.cert_pem()));
        assert!(matches!(
            tls.reload(Trigger::Poll),
            Ok(Reloaded::Swapped(_))
        ));
        assert!(!Arc::ptr_eq(&after.ticketer, &tls.config().ticketer));
        assert!(tls.status().client_ca_not_after.is_some());
    }

    #[test]
    fn alpn_follows_the_listener() {
        let dir = Dir::new();
        let leaf = Ca::root("Root").leaf("server").issue();
        let settings = TlsConfig::new(
            dir.write("c.pem", &leaf.chain_pem),
            dir.write("k.pem", &leaf.key_pem),
        );
        let tls = ServerTls::load(&settings, &[crate::H2, crate::HTTP_1_1]).unwrap();
        let config = tls.config();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
