//! [`TlsConfig`]: one listener's TLS settings, as the server's configuration nests them
//! (`tls.cert`, `admin_tls.client_auth`, ...), with the rules [`Validate`] checks before
//! anything is loaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_core::settings::{Checks, Validate};
use serde::{Deserialize, Serialize};

/// TLS for one listener. Off (plaintext) unless `cert` is set.
///
/// Files are PEM and are re-read when they change (every `reload_interval`, and on
/// SIGHUP): new material is checked and used for new handshakes only; material that fails
/// the checks is logged and counted, and the old stays in use.
///
/// ```
/// use keel_core::settings::Validate;
/// use keel_tls::TlsConfig;
///
/// let mut tls = TlsConfig::default();
/// assert!(!tls.enabled());
/// tls.cert = "server.pem".into();
/// assert_eq!(
///     tls.validate().unwrap_err().to_string(),
///     "cert = server.pem: must come with key (the certificate's private key)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first then the intermediates (empty: TLS off, the
    /// listener is plaintext). The leaf must be valid now, match `key`, and allow server
    /// authentication; the intermediates are presented to clients so they can build the
    /// chain to their root.
    pub cert: PathBuf,
    /// The private key of `cert`, PEM: PKCS#8, SEC1 (EC) or PKCS#1 (RSA), unencrypted
    /// (required when `cert` is set, and only then).
    pub key: PathBuf,
    /// CA bundle, PEM, that client certificates must chain to (required when
    /// `client_auth` is `optional` or `required`, and only then). Only these roots are
    /// trusted; intermediates a client presents are used to build its chain, never as
    /// anchors.
    pub client_ca: PathBuf,
    /// Whether clients present a certificate: `none` (default: server-only TLS),
    /// `optional` (verified when presented; a client without one is still served, with no
    /// peer identity) or `required` (mutual TLS: a handshake without a valid client
    /// certificate fails).
    pub client_auth: ClientAuth,
    /// The lowest TLS version accepted: `"1.2"` (default: what every gRPC client
    /// supports) or `"1.3"` (only 1.3). Older versions are never accepted.
    pub min_version: TlsVersion,
    /// How often `cert`, `key` and `client_ca` are read to see whether their contents
    /// changed (`0s`: only on SIGHUP; at most a year). 10 s takes up a rotated certificate
    /// well within any agent's renewal margin, for a read of three small files.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            client_auth: ClientAuth::None,
            min_version: TlsVersion::Tls12,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Server-only TLS from a chain and its key, with the other settings' defaults.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ..Self::default()
        }
    }

    /// Whether TLS is on (`cert` is set).
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// The client CA bundle, if set.
    pub fn client_ca(&self) -> Option<&Path> {
        (!self.client_ca.as_os_str().is_empty()).then_some(self.client_ca.as_path())
    }
}

impl Validate for TlsConfig {
    fn check(&self, checks: &mut Checks) {
        // Each rule names the key that was set, whose value is the one to reconsider.
        let set = |path: &Path| !path.as_os_str().is_empty();
        let (cert, ca) = (set(&self.cert), set(&self.client_ca));
        check_pair(checks, &self.cert, &self.key);
        checks.require(
            cert || !ca,
            "client_ca",
            self.client_ca.display(),
            "must come with cert: client certificates are verified only over TLS",
        );
        checks.require(
            self.client_auth == ClientAuth::None || ca,
            "client_auth",
            self.client_auth,
            "must come with client_ca (the roots client certificates are verified against)",
        );
        checks.require(
            self.client_auth != ClientAuth::None || !ca,
            "client_ca",
            self.client_ca.display(),
            "must come with client_auth = optional or required (alone it would ask no \
             client for a certificate)",
        );
        checks.duration("reload_interval", self.reload_interval);
    }
}

/// A certificate chain and its key are set together or not at all.
pub(crate) fn check_pair(checks: &mut Checks, cert: &Path, key: &Path) {
    let (has_cert, has_key) = (!cert.as_os_str().is_empty(), !key.as_os_str().is_empty());
    checks.require(
        !has_cert || has_key,
        "cert",
        cert.display(),
        "must come with key (the certificate's private key)",
    );
    checks.require(
        has_cert || !has_key,
        "key",
        key.display(),
        "must come with cert (the certificate chain of the key)",
    );
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Not asked: server-only TLS.
    None,
    /// Asked, verified when presented, not required.
    Optional,
    /// Required and verified: mutual TLS.
    Required,
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        })
    }
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// The protocol versions a configuration with this minimum enables, newest first.
    pub fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::Tls12 => &BOTH,
            TlsVersion::Tls13 => &ONLY_13,
        }
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: &TlsConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn off_by_default_and_every_combination_is_checked() {
        assert_eq!(TlsConfig::default().validate(), Ok(()));
        assert!(!TlsConfig::default().enabled());
        let on = TlsConfig::new("c.pem", "k.pem");
        assert!(on.enabled());
        assert_eq!(on.validate(), Ok(()));

        let key_only = TlsConfig {
            key: "k.pem".into(),
            ..TlsConfig::default()
        };
        assert_eq!(
            refusal(&key_only),
            "key = k.pem: must come with cert (the certificate chain of the key)"
        );

        let mut required = on.clone();
        required.client_auth = ClientAuth::Required;
        assert_eq!(
            refusal(&required),
            "client_auth = required: must come with client_ca (the roots client certificates \
             are verified against)"
        );
        required.client_ca = "ca.pem".into();
        assert_eq!(required.validate(), Ok(()));

        let mut ca_alone = on.clone();
        ca_alone.client_ca = "ca.pem".into();
        assert!(refusal(&ca_alone).starts_with("client_ca = ca.pem: must come with client_auth"));

        let plaintext_ca = TlsConfig {
            client_ca: "ca.pem".into(),
            client_auth: ClientAuth::Optional,
            ..TlsConfig::default()
        };
        assert!(refusal(&plaintext_ca).starts_with("client_ca = ca.pem: must come with cert"));

        let mut slow = on;
        slow.reload_interval = Duration::from_secs(100_000_000);
        assert!(refusal(&slow).starts_with("reload_interval = "));
    }

    #[test]
    fn versions_and_client_auth_read_as_written() {
        #[derive(Deserialize)]
        struct Outer {
            tls: TlsConfig,
        }
        let outer: Outer = toml_like(
            r#"{"tls": {"cert": "c", "key": "k", "min_version": "1.3",
                "client_auth": "optional", "client_ca": "ca", "reload_interval": "1m"}}"#,
        );
        assert_eq!(outer.tls.min_version, TlsVersion::Tls13);
        assert_eq!(outer.tls.client_auth, ClientAuth::Optional);
        assert_eq!(outer.tls.reload_interval, Duration::from_secs(60));
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
