//! Opens the one connection `keel call` uses, for reflection and for the call itself:
//! Keel's own client channel, plaintext or over TLS, which checks every status the server
//! sends and accepts response headers up to Keel's client limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel::client::{Channel, ClientTls, ClientTlsConfig};

use super::Failure;
use super::args::Tls;

/// The connection every call and reflection request goes over.
pub type Connection = Channel;

/// How long connecting (TCP and TLS handshakes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `address` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`), over TLS
/// when `tls` is given or the scheme is `https`, plaintext h2c otherwise.
pub async fn connect(address: &str, tls: Option<Tls>) -> Result<Connection, Failure> {
    let (uri, tls) = target(address, tls)?;
    let host_port = uri.split_once("://").map_or(uri.as_str(), |(_, rest)| rest);
    let mut builder = Channel::builder(host_port)
        .map_err(|error| Failure::Usage(format!("invalid address `{address}`: {error}")))?;
    if let Some(tls) = tls {
        let client = ClientTls::load(&tls_config(&tls)?)
            .map_err(|error| Failure::Usage(format!("TLS settings: {error}")))?;
        builder = builder.tls(client);
    }
    let channel = builder
        .build()
        .map_err(|error| Failure::Usage(format!("invalid address `{address}`: {error}")))?;
    channel
        .connect(CONNECT_TIMEOUT)
        .await
        .map_err(|error| Failure::Other(format!("cannot connect to {uri}: {error}")))?;
    Ok(channel)
}

/// The URI to dial and the TLS settings, from the address and the flags.
fn target(address: &str, tls: Option<Tls>) -> Result<(String, Option<Tls>), Failure> {
    if let Some(rest) = address.strip_prefix("https://") {
        return Ok((format!("https://{rest}"), Some(tls.unwrap_or_default())));
    }
    if address.starts_with("http://") {
        if tls.is_some() {
            return Err(Failure::Usage(format!(
                "`{address}` is plaintext (http://) but TLS flags were given; use https:// or HOST:PORT"
            )));
        }
        return Ok((address.to_owned(), None));
    }
    if address.contains("://") {
        return Err(Failure::Usage(format!(
            "`{address}`: the scheme must be http:// or https://"
        )));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok((format!("{scheme}://{address}"), tls))
}

/// The client TLS settings of the flags, each file checked readable first so that an
/// error names the flag that gave it.
fn tls_config(tls: &Tls) -> Result<ClientTlsConfig, Failure> {
    let mut config = ClientTlsConfig::default();
    if let Some(ca) = &tls.ca_certificate {
        config.ca = readable(ca, "--cacert")?;
    }
    if let Some((cert, key)) = &tls.identity {
        config.cert = readable(cert, "--cert")?;
        config.key = readable(key, "--key")?;
    }
    if let Some(name) = &tls.server_name {
        config.server_name = name.clone();
    }
    config.expected_identities = tls.expected_identities.clone();
    Ok(config)
}

fn readable(file: &Path, flag: &str) -> Result<PathBuf, Failure> {
    std::fs::File::open(file)
        .map(|_| file.to_owned())
        .map_err(|error| Failure::Usage(format!("{flag} {}: {error}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let check = |address: &str, tls: bool, expect: Result<(&str, bool), &str>| {
            let got = target(address, tls.then(Tls::default));
            match expect {
                Ok((uri, with_tls)) => {
                    let (got_uri, got_tls) = got.unwrap();
                    assert_eq!((got_uri.as_str(), got_tls.is_some()), (uri, with_tls));
                }
                Err(part) => {
                    let message = got.unwrap_err().to_string();
                    assert!(message.contains(part), "{address}: {message}");
                }
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
}
