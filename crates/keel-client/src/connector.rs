//! How a subchannel reaches its backend: a [`Connector`] opens the byte stream to an
//! address, and the subchannel runs the HTTP/2 handshake over it.
//!
//! Keel dials TCP and Unix sockets ([`Dial`]), and runs TLS over them ([`TlsDial`]). The
//! trait is the seam where the channel's unit tests put in-memory backends, so that
//! connection failures, reconnection backoff and load run under tokio's paused time.

use std::pin::Pin;
use std::task::{Context, Poll};

use keel_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

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

/// Dials like [`Dial`], then runs the TLS handshake and its checks (`h2` chosen, the
/// server's identity expected) before the stream is used.
#[derive(Debug, Clone)]
pub(crate) struct TlsDial {
    pub(crate) tls: ClientTls,
    /// The host of a DNS target, which its servers' certificates name; backends of other
    /// targets are verified against their IP address (or `localhost` for Unix sockets),
    /// unless `server_name` is set.
    pub(crate) host: Option<String>,
}

impl Connector for TlsDial {
    fn connect<'a>(&'a self, address: &'a Address) -> BoxFuture<'a, Result<Box<dyn Io>, String>> {
        Box::pin(async move {
            let host = match (&self.host, address) {
                (Some(host), _) => host.clone(),
                (None, Address::Tcp(addr)) => addr.ip().to_string(),
                (None, Address::Unix(_)) => "localhost".to_owned(),
            };
            let name = self
                .tls
                .name_for(&host)
                .map_err(|error| error.to_string())?;
            let stream = Dial.connect(address).await?;
            let mut stream = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|error| format!("{address}: {error}"))?;
            // Ready only once the server has spoken (its HTTP/2 SETTINGS), as grpc-go
            // waits for the server's preface: in TLS 1.3 a server judges the client's
            // certificate after the client's handshake is over, and its refusal is the
            // first thing read.
            // A server may also just close (grpc-core does when a client certificate it
            // requires is missing or refused): said as such, with the likely causes.
            let closed = || {
                let hint = if self.tls.presents_certificate() {
                    "did it refuse this client's certificate?"
                } else {
                    "if it requires a client certificate, set cert and key"
                };
                format!(
                    "{address}: the server closed the connection right after the TLS \
                     handshake, without saying why ({hint})"
                )
            };
            let mut first = vec![0; 4096];
            let read = stream.read(&mut first).await.map_err(|error| {
                if error.kind() == std::io::ErrorKind::UnexpectedEof {
                    return closed();
                }
                let reason = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<keel_tls::rustls::Error>())
                    .map_or_else(|| error.to_string(), keel_tls::client::explain);
                format!("{address}: TLS: {reason}")
            })?;
            if read == 0 {
                return Err(closed());
            }
            first.truncate(read);
            Ok(Box::new(Replay::new(first, stream)) as Box<dyn Io>)
        })
    }
}

pin_project_lite::pin_project! {
    /// A stream whose first bytes were read already: they are read again first.
    struct Replay<S> {
        read: Vec<u8>,
        at: usize,
        #[pin]
        stream: S,
    }
}

impl<S> Replay<S> {
    fn new(read: Vec<u8>, stream: S) -> Self {
        Self {
            read,
            at: 0,
            stream,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if *this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - *this.at);
            buf.put_slice(&this.read[*this.at..*this.at + n]);
            *this.at += n;
            if *this.at == this.read.len() {
                *this.read = Vec::new();
                *this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.stream.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}
