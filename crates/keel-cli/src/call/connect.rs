//! Opens the one connection `keel call` uses, for reflection and for the call itself:
//! Keel's own client channel for plaintext, tonic's for TLS until Keel's client speaks TLS.
//! Both check every status the server sends (`keel::client::CheckStatus` around tonic's)
//! and accept response headers up to Keel's client limit.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use keel::client::CheckStatus;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Failure;
use super::args::Tls;

/// The connection every call and reflection request goes over.
#[derive(Clone)]
pub enum Connection {
    /// Plaintext HTTP/2, through `keel::client::Channel`.
    Keel(keel::client::Channel),
    /// TLS, through tonic's channel, with Keel's status check in front.
    Tls(CheckStatus<Channel>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Keel(channel) => channel.poll_ready(cx).map_err(Into::into),
            Self::Tls(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            Self::Keel(channel) => {
                let response = channel.call(request);
                Box::pin(async move { Ok(response.await?.map(tonic::body::Body::new)) })
            }
            Self::Tls(channel) => {
                let response = channel.call(request);
                Box::pin(async move {
                    match response.await {
                        Ok(response) => Ok(response.map(tonic::body::Body::new)),
                        // tonic would only say "h2 protocol error: http2 error".
                        Err(error) => {
                            Err(keel::client::broken_protocol_status(&error, header_limit())
                                .map_or_else(|| error.into(), Into::into))
                        }
                    }
                })
            }
        }
    }
}

/// The largest response header list accepted: Keel's client default, on both paths.
fn header_limit() -> u32 {
    keel::client::Http2Config::default().max_header_list_size
}

/// How long connecting (TCP and TLS handshakes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `address` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`), over TLS
/// when `tls` is given or the scheme is `https`, plaintext h2c otherwise.
pub async fn connect(address: &str, tls: Option<Tls>) -> Result<Connection, Failure> {
    let (uri, tls) = target(address, tls)?;
    if tls.is_none() {
        let channel = keel::client::Channel::new(&uri)
            .map_err(|error| Failure::Usage(format!("invalid address `{address}`: {error}")))?;
        channel
            .connect(CONNECT_TIMEOUT)
            .await
            .map_err(|error| Failure::Other(format!("cannot connect to {uri}: {error}")))?;
        return Ok(Connection::Keel(channel));
    }
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|error| Failure::Usage(format!("invalid address `{address}`: {error}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_max_header_list_size(header_limit());
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls_config(&tls)?)
            .map_err(|error| Failure::Usage(format!("TLS settings: {}", chain(&error))))?;
    }
    endpoint
        .connect()
        .await
        .map(|channel| Connection::Tls(CheckStatus::new(channel)))
        .map_err(|error| Failure::Other(format!("cannot connect to {uri}: {}", chain(&error))))
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

fn tls_config(tls: &Tls) -> Result<ClientTlsConfig, Failure> {
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_certificate {
        Some(file) => config.ca_certificate(Certificate::from_pem(read(file, "--cacert")?)),
        None => config.with_webpki_roots(),
    };
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(
            read(cert, "--cert")?,
            read(key, "--key")?,
        ));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name);
    }
    Ok(config)
}

fn read(file: &Path, flag: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(file)
        .map_err(|error| Failure::Usage(format!("{flag} {}: {error}", file.display())))
}

/// An error with its sources, which is where transport errors say what happened.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Layers often repeat their cause's words; say them once.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
