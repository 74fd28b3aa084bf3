//! How a subchannel reaches its backend: a [`Connector`] opens the byte stream to an
//! address, and the subchannel runs the HTTP/2 handshake over it.
//!
//! Keel dials TCP and Unix sockets ([`Dial`]). The trait is the seam where the channel's
//! unit tests put in-memory backends, so that connection failures, reconnection backoff
//! and load run under tokio's paused time.

use tokio::io::{AsyncRead, AsyncWrite};

use super::resolver::BoxFuture;
use super::target::Address;

/// A connection's byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens byte streams to backends.
pub(crate) trait Connector: Send + Sync + 'static {
    /// A stream to `address`, or why there is none (the error names the address).
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, Result<Box<dyn Io>, String>>;
}

/// Dials the address: TCP (with Nagle's algorithm off) or a Unix socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial;

impl Connector for Dial {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, Result<Box<dyn Io>, String>> {
        Box::pin(async move {
            match address {
                Address::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|error| format!("connecting to {addr}: {error}"))?;
                    let _ = stream.set_nodelay(true);
                    Ok(Box::new(stream) as Box<dyn Io>)
                }
                Address::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|error| format!("connecting to {}: {error}", path.display()))?;
                    Ok(Box::new(stream) as Box<dyn Io>)
                }
            }
        })
    }
}
