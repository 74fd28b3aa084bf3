//! `bare-greeter`: the benchmark baseline, a bare tonic server with `helloworld.Greeter` only.
//!
//! It uses `tonic::transport::Server` with tonic's defaults and adds nothing else (no layers,
//! no health, no reflection, no metrics, no logging), on a multi-thread tokio runtime like
//! `keel serve`. `scripts/bench-greeter.sh` compares Keel's full default stack against it;
//! `scripts/bench-tls.sh` does the same over TLS, where tonic's own TLS (`ServerTlsConfig`
//! with an identity and nothing else: rustls with ring, ALPN h2) is the baseline; `--tls`
//! needs the `tls` feature.
//!
//! Usage: `bare-greeter [ADDR] [--tls CERT KEY]` (default `127.0.0.1:50052`, plaintext).
//! Prints `grpc listening on ADDR` once the listener is bound.

use std::net::SocketAddr;

use tonic::transport::{Server, server::TcpIncoming};

/// A benchmark build (`--features count-allocs`): the system allocator, counted, with the
/// totals printed on SIGUSR1 (scripts/bench-greeter.sh, allocations per call).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOCATOR: alloc_counter::Counting = alloc_counter::COUNTING;

/// The address served when none is given on the command line.
const DEFAULT_ADDR: &str = "127.0.0.1:50052";

/// The usage line printed for `--help` and with a refusal.
const USAGE: &str =
    "usage: bare-greeter [ADDR] [--tls CERT.pem KEY.pem]   (default 127.0.0.1:50052, plaintext)";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut tls = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--tls" => {
                let (Some(cert), Some(key)) = (args.next(), args.next()) else {
                    return Err(format!("--tls needs CERT and KEY\n{USAGE}").into());
                };
                tls = Some((std::fs::read(&cert)?, std::fs::read(&key)?));
            }
            _ => addr = arg,
        }
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("invalid listen address {addr:?}: {e}\n{USAGE}"))?;

    // Exactly what `Server::serve(addr)` does with tonic's defaults (bind, TCP_NODELAY on, no
    // TCP keepalive), only split so that the "listening" line is printed once connections are
    // accepted, and so that port 0 reports the real port.
    let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    #[cfg(feature = "count-allocs")]
    alloc_counter::report_on_sigusr1()?;
    println!("grpc listening on {}", incoming.local_addr()?);

    let mut server = Server::builder();
    if let Some((cert, key)) = tls {
        server = with_tls(server, cert, key)?;
    }
    server
        .add_service(keel_interop::Greeter.into_service())
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Serves TLS with tonic's defaults: an identity and nothing else.
#[cfg(feature = "tls")]
fn with_tls(
    server: Server,
    cert: Vec<u8>,
    key: Vec<u8>,
) -> Result<Server, Box<dyn std::error::Error>> {
    use tonic::transport::{Identity, ServerTlsConfig};
    Ok(server.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?)
}

/// Refuses `--tls` in a build without tonic's TLS.
#[cfg(not(feature = "tls"))]
fn with_tls(
    _server: Server,
    _cert: Vec<u8>,
    _key: Vec<u8>,
) -> Result<Server, Box<dyn std::error::Error>> {
    Err("--tls needs a build with TLS: cargo build --release -p bare-greeter --features tls".into())
}
