//! The client side of TLS as the commands that dial a gRPC server take it from their flags
//! (`keel call`'s `--cacert`, `--cert`, `--key`, `--server-name`, `--expect-identity`;
//! `keel gateway`'s same flags for its upstream, `--upstream-cacert` and so on), with one
//! meaning for both: any TLS flag asks for TLS, an `https://` address alone means TLS
//! verified with the webpki (Mozilla) roots, and an `http://` address with TLS flags is a
//! mistake said as one. Errors name the flag as the command spells it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use keel::client::{Channel, ClientTls, ClientTlsConfig};

/// The client TLS flags `keel call` and `keel bench` take, as clap reads them.
#[derive(Debug, Args)]
pub struct ClientTlsArgs {
    /// Use TLS, verifying the server with the webpki (Mozilla) roots unless --cacert is given
    #[arg(long)]
    tls: bool,

    /// Verify the server with this PEM CA certificate instead (implies --tls)
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// Client certificate chain (PEM) for mutual TLS; needs --key (implies --tls)
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,

    /// Private key (PEM) of --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,

    /// Name to verify the server certificate against, instead of ADDR's host (implies --tls)
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,

    /// Accept only a server with this identity: a SPIFFE ID or DNS name (repeatable; implies
    /// --tls). A server with another fails the call, and the error says what it presented
    #[arg(long = "expect-identity", value_name = "ID")]
    expect_identity: Vec<String>,
}

impl ClientTlsArgs {
    /// The flags as one meaning (plaintext when none is given and ADDR is not https://).
    pub fn flags(&self) -> ClientFlags {
        ClientFlags {
            prefix: "",
            tls: self.tls,
            ca: self.cacert.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
            server_name: self.server_name.clone(),
            expected_identities: self.expect_identity.clone(),
        }
    }
}

/// The client TLS flags of one command, as given.
#[derive(Debug, Clone, Default)]
pub struct ClientFlags {
    /// What the command's TLS flags start with after `--`: `""` for `--cacert`,
    /// `"upstream-"` for `--upstream-cacert`.
    pub prefix: &'static str,
    /// TLS asked for without any other flag (`keel call --tls`).
    pub tls: bool,
    /// PEM CA certificate to verify the server with, instead of the webpki roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and its key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server certificate against, instead of the address's host.
    pub server_name: Option<String>,
    /// Identities the server may have (SPIFFE IDs or DNS names); empty: any.
    pub expected_identities: Vec<String>,
}

impl ClientFlags {
    /// Whether the flags ask for TLS: `tls`, or any other TLS flag given.
    pub fn wanted(&self) -> bool {
        self.tls
            || self.ca.is_some()
            || self.identity.is_some()
            || self.server_name.is_some()
            || !self.expected_identities.is_empty()
    }

    /// The URI `address` names and whether it is dialled over TLS: `https://HOST:PORT`
    /// always (the webpki roots unless the flags say otherwise), `http://HOST:PORT` never
    /// (TLS flags with it are an error), a bare `HOST:PORT` when the flags ask for TLS.
    pub fn target(&self, address: &str) -> Result<(String, bool), String> {
        if let Some(rest) = address.strip_prefix("https://") {
            return Ok((format!("https://{rest}"), true));
        }
        if address.starts_with("http://") {
            if self.wanted() {
                return Err(format!(
                    "`{address}` is plaintext (http://) but TLS flags were given; use \
                     https://HOST:PORT"
                ));
            }
            return Ok((address.to_owned(), false));
        }
        if address.contains("://") {
            return Err(format!(
                "`{address}`: the scheme must be http:// or https://"
            ));
        }
        let tls = self.wanted();
        let scheme = if tls { "https" } else { "http" };
        Ok((format!("{scheme}://{address}"), tls))
    }

    /// A channel to `address` ([`Self::target`] says how), with its URI for messages. Over
    /// TLS, the files are read and checked now, and re-read every `reload_interval` while
    /// the channel lives (zero: never). Connecting starts in the background; an error here
    /// is always the flags' (a bad address, an unreadable file, settings that do not fit).
    pub fn channel(
        &self,
        address: &str,
        reload_interval: Duration,
    ) -> Result<(String, Channel), String> {
        let (uri, tls) = self.client_tls(address, reload_interval)?;
        let host_port = uri.split_once("://").map_or(uri.as_str(), |(_, rest)| rest);
        let invalid =
            |error: &dyn std::fmt::Display| format!("invalid address `{address}`: {error}");
        let mut builder = Channel::builder(host_port).map_err(|error| invalid(&error))?;
        if let Some(client) = tls {
            builder = builder.tls(client);
        }
        let channel = builder.build().map_err(|error| invalid(&error))?;
        Ok((uri, channel))
    }

    /// The URI for `address` ([`Self::target`] says how) and, when it is over TLS, the
    /// client TLS of the flags, its files read and checked now and re-read every
    /// `reload_interval` (zero: never).
    pub fn client_tls(
        &self,
        address: &str,
        reload_interval: Duration,
    ) -> Result<(String, Option<ClientTls>), String> {
        let (uri, tls) = self.target(address)?;
        if !tls {
            return Ok((uri, None));
        }
        let mut config = self.config()?;
        config.reload_interval = reload_interval;
        let client = ClientTls::load(&config).map_err(|error| format!("TLS settings: {error}"))?;
        Ok((uri, Some(client)))
    }

    /// The client TLS settings of the flags, each file checked readable first so that an
    /// error names the flag that gave it.
    fn config(&self) -> Result<ClientTlsConfig, String> {
        let mut config = ClientTlsConfig::default();
        if let Some(ca) = &self.ca {
            config.ca = self.readable(ca, "cacert")?;
        }
        if let Some((cert, key)) = &self.identity {
            config.cert = self.readable(cert, "cert")?;
            config.key = self.readable(key, "key")?;
        }
        if let Some(name) = &self.server_name {
            config.server_name = name.clone();
        }
        config.expected_identities = self.expected_identities.clone();
        Ok(config)
    }

    /// `file` if it can be opened; else an error naming `--PREFIX{flag}` and why.
    fn readable(&self, file: &Path, flag: &str) -> Result<PathBuf, String> {
        std::fs::File::open(file)
            .map(|_| file.to_owned())
            .map_err(|error| format!("--{}{flag} {}: {error}", self.prefix, file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let check = |address: &str, tls: bool, expect: Result<(&str, bool), &str>| {
            let flags = ClientFlags {
                tls,
                ..ClientFlags::default()
            };
            match (flags.target(address), expect) {
                (Ok((uri, with_tls)), Ok(want)) => {
                    assert_eq!((uri.as_str(), with_tls), want, "{address}");
                }
                (Err(message), Err(part)) => {
                    assert!(message.contains(part), "{address}: {message}");
                }
                (got, _) => panic!("{address}: {got:?}"),
            }
        };
        check(
            "127.0.0.1:50051",
            false,
            Ok(("http://127.0.0.1:50051", false)),
        );
        check(
            "127.0.0.1:50051",
            true,
            Ok(("https://127.0.0.1:50051", true)),
        );
        check("http://h:1", false, Ok(("http://h:1", false)));
        check("https://h:1", false, Ok(("https://h:1", true)));
        check("https://h:1", true, Ok(("https://h:1", true)));
        check("[::1]:50051", false, Ok(("http://[::1]:50051", false)));
        check("http://h:1", true, Err("plaintext (http://)"));
        check("ftp://h:1", false, Err("must be http:// or https://"));
    }

    #[test]
    fn every_flag_asks_for_tls() {
        assert!(!ClientFlags::default().wanted());
        let path = || Some(PathBuf::from("x.pem"));
        for flags in [
            ClientFlags {
                tls: true,
                ..ClientFlags::default()
            },
            ClientFlags {
                ca: path(),
                ..ClientFlags::default()
            },
            ClientFlags {
                identity: path().zip(path()),
                ..ClientFlags::default()
            },
            ClientFlags {
                server_name: Some("localhost".into()),
                ..ClientFlags::default()
            },
            ClientFlags {
                expected_identities: vec!["spiffe://keel.test/api".into()],
                ..ClientFlags::default()
            },
        ] {
            assert!(flags.wanted(), "{flags:?}");
        }
    }

    #[test]
    fn an_unreadable_file_is_named_by_its_flag() {
        let flags = ClientFlags {
            prefix: "upstream-",
            ca: Some("/nonexistent/ca.pem".into()),
            ..ClientFlags::default()
        };
        let message = flags.config().unwrap_err();
        assert!(
            message.starts_with("--upstream-cacert /nonexistent/ca.pem: "),
            "{message}"
        );
        let flags = ClientFlags {
            identity: Some(("/nonexistent/c.pem".into(), "/nonexistent/c.key".into())),
            ..ClientFlags::default()
        };
        let message = flags.config().unwrap_err();
        assert!(
            message.starts_with("--cert /nonexistent/c.pem: "),
            "{message}"
        );
    }
}
