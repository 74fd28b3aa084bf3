//! One TLS handshake with rustls (ring), recording what a diagnosis needs: the chain the
//! server presented (taken by a verifier that accepts everything, so the handshake goes on
//! and later problems show too; the chain is verified afterwards), whether the server asked
//! for a client certificate, the first bytes it sent, and how it answered after the
//! handshake (HTTP/2 SETTINGS, an alert, silence). Blocking sockets, every wait bounded.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a gRPC client sends
/// first, so an HTTP/2 server answers with its SETTINGS.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// How long to wait for the server's first words after the handshake.
const AFTER_HANDSHAKE: Duration = Duration::from_secs(2);

/// What to probe and with what.
pub struct Request {
    pub address: SocketAddr,
    pub server_name: ServerName<'static>,
    pub alpn: Vec<Vec<u8>>,
    pub client: Option<Arc<CertifiedKey>>,
    pub timeout: Duration,
}

/// Why the TCP connection failed.
pub enum ConnectFailure {
    Refused,
    TimedOut,
    Other(io::Error),
}

/// How the handshake ended.
pub enum HandshakeEnd {
    Done,
    /// rustls failed (a TLS alert from the server, a malformed message, ...).
    Tls(rustls::Error),
    /// The server closed the connection.
    Closed,
    /// The server said nothing for the whole timeout.
    Silent,
    Io(io::Error),
}

/// What the server did after the handshake, to our HTTP/2 preface (if h2 was agreed).
pub enum After {
    /// It sent application data (the first bytes).
    Answered(Vec<u8>),
    /// It sent an alert (in TLS 1.3, how a rejected client certificate shows).
    Alert(AlertDescription),
    /// It closed the connection.
    Closed,
    /// It said nothing within the wait.
    Silent,
    Failed(String),
}

/// Everything one handshake showed.
pub struct Handshake {
    pub end: HandshakeEnd,
    pub version: Option<rustls::ProtocolVersion>,
    pub suite: Option<rustls::CipherSuite>,
    pub alpn: Option<Vec<u8>>,
    pub chain: Vec<CertificateDer<'static>>,
    /// The CA names of the server's CertificateRequest, if it sent one.
    pub client_cert_request: Option<Vec<Vec<u8>>>,
    pub first_bytes: Vec<u8>,
    pub after: Option<After>,
}

/// The ring provider, the one Keel's servers use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Resolves `host:port`.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Opens the TCP connection, bounded by `timeout`.
pub fn connect(address: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectFailure> {
    TcpStream::connect_timeout(&address, timeout).map_err(|error| match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnectFailure::TimedOut,
        _ => ConnectFailure::Other(error),
    })
}

/// Runs the handshake over `socket` and records what happened.
pub fn handshake(request: &Request, socket: TcpStream) -> Handshake {
    let provider = provider();
    let recorder = Arc::new(Recorder {
        provider: provider.clone(),
        chain: Mutex::new(Vec::new()),
        request: Mutex::new(None),
        client: request.client.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_client_cert_resolver(recorder.clone());
    config.alpn_protocols = request.alpn.clone();
    let mut handshake = Handshake {
        end: HandshakeEnd::Done,
        version: None,
        suite: None,
        alpn: None,
        chain: Vec::new(),
        client_cert_request: None,
        first_bytes: Vec::new(),
        after: None,
    };
    let mut connection = match ClientConnection::new(Arc::new(config), request.server_name.clone())
    {
        Ok(connection) => connection,
        Err(error) => {
            handshake.end = HandshakeEnd::Tls(error);
            return handshake;
        }
    };
    let _ = socket.set_read_timeout(Some(request.timeout));
    let _ = socket.set_write_timeout(Some(request.timeout));
    let mut tap = Tap {
        inner: socket,
        first: Vec::new(),
    };
    while connection.is_handshaking() {
        if let Err(error) = connection.complete_io(&mut tap) {
            handshake.end = classify(error);
            break;
        }
    }
    handshake.version = connection.protocol_version();
    handshake.suite = connection
        .negotiated_cipher_suite()
        .map(|suite| suite.suite());
    handshake.alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
    if matches!(handshake.end, HandshakeEnd::Done) {
        handshake.after = Some(after(&mut connection, &mut tap, request.timeout));
    }
    handshake.chain = std::mem::take(&mut recorder.chain.lock().unwrap());
    handshake.client_cert_request = recorder.request.lock().unwrap().take();
    handshake.first_bytes = tap.first;
    handshake
}

fn classify(error: io::Error) -> HandshakeEnd {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => HandshakeEnd::Closed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HandshakeEnd::Silent,
        _ => match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => HandshakeEnd::Tls(tls.clone()),
            None => HandshakeEnd::Io(error),
        },
    }
}

/// Sends the HTTP/2 preface when h2 was agreed, and reads the server's first answer.
fn after(connection: &mut ClientConnection, tap: &mut Tap, timeout: Duration) -> After {
    let _ = tap
        .inner
        .set_read_timeout(Some(timeout.min(AFTER_HANDSHAKE)));
    let mut stream = rustls::Stream::new(connection, tap);
    if stream.conn.alpn_protocol() == Some(b"h2") {
        if let Err(error) = stream.write_all(H2_PREFACE).and_then(|()| stream.flush()) {
            return after_error(error);
        }
    }
    let mut buffer = [0; 64];
    match stream.read(&mut buffer) {
        Ok(0) => After::Closed,
        Ok(n) => After::Answered(buffer[..n].to_vec()),
        Err(error) => after_error(error),
    }
}

fn after_error(error: io::Error) -> After {
    match classify(error) {
        HandshakeEnd::Tls(rustls::Error::AlertReceived(alert)) => After::Alert(alert),
        HandshakeEnd::Closed => After::Closed,
        HandshakeEnd::Silent => After::Silent,
        HandshakeEnd::Tls(error) => After::Failed(error.to_string()),
        HandshakeEnd::Io(error) => After::Failed(error.to_string()),
        HandshakeEnd::Done => After::Silent,
    }
}

/// Opens a second connection and speaks plaintext HTTP/2 to it: the first bytes back, if
/// any (to tell a plaintext server from one that is not there).
pub fn plaintext_answer(address: SocketAddr, timeout: Duration) -> Vec<u8> {
    let Ok(mut socket) = TcpStream::connect_timeout(&address, timeout) else {
        return Vec::new();
    };
    let _ = socket.set_read_timeout(Some(timeout.min(AFTER_HANDSHAKE)));
    let _ = socket.set_write_timeout(Some(timeout));
    if socket.write_all(H2_PREFACE).is_err() {
        return Vec::new();
    }
    let mut buffer = vec![0; 64];
    let start = Instant::now();
    let mut filled = 0;
    while filled < 9 && start.elapsed() < AFTER_HANDSHAKE {
        match socket.read(&mut buffer[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    buffer.truncate(filled);
    buffer
}

/// What plaintext protocol `bytes` (a server's first bytes) look like, if any.
pub fn plaintext_protocol(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"HTTP/") {
        return Some("HTTP/1.1");
    }
    // An HTTP/2 frame header: 24-bit length, type, flags, stream 0 (SETTINGS 4, GOAWAY 7).
    if bytes.len() >= 9 && matches!(bytes[3], 4 | 7) && bytes[5..9] == [0, 0, 0, 0] {
        return Some("HTTP/2");
    }
    None
}

/// The socket, keeping the first bytes the server sent.
struct Tap {
    inner: TcpStream,
    first: Vec<u8>,
}

impl Read for Tap {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buffer)?;
        let room = 64usize.saturating_sub(self.first.len()).min(n);
        self.first.extend_from_slice(&buffer[..room]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.inner.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Accepts any server certificate, keeping the chain to verify after the handshake, and
/// answers a CertificateRequest with the client certificate, if any, noting it was asked.
/// Signatures are still checked, so the chain recorded is the one the server holds keys for.
#[derive(Debug)]
struct Recorder {
    provider: Arc<CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
    request: Mutex<Option<Vec<Vec<u8>>>>,
    client: Option<Arc<CertifiedKey>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|der| der.clone().into_owned()));
        *self.chain.lock().unwrap() = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ResolvesClientCert for Recorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        *self.request.lock().unwrap() = Some(
            root_hint_subjects
                .iter()
                .map(|name| name.to_vec())
                .collect(),
        );
        self.client.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
