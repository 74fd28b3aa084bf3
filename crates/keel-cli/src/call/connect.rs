//! Opens the one connection `keel call` uses, for reflection and for the call itself:
//! Keel's own client channel, plaintext or over TLS (the flags read by
//! `crate::tls::client`), which checks every status the server sends and accepts response
//! headers up to Keel's client limit.

use std::time::Duration;

use keel::client::Channel;

use super::Failure;
use crate::tls::client::ClientFlags;

/// The connection every call and reflection request goes over.
pub type Connection = Channel;

/// How long connecting (TCP and TLS handshakes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `address` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`), over TLS
/// when the scheme is `https` or a TLS flag is given, plaintext h2c otherwise. A call is
/// short-lived: its TLS files are read once.
pub async fn connect(address: &str, tls: &ClientFlags) -> Result<Connection, Failure> {
    let (uri, channel) = tls
        .channel(address, Duration::ZERO)
        .map_err(Failure::Usage)?;
    channel
        .connect(CONNECT_TIMEOUT)
        .await
        .map_err(|error| Failure::Other(format!("cannot connect to {uri}: {error}")))?;
    Ok(channel)
}
