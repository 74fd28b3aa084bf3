//! `bare-greeter`: the benchmark baseline, a bare tonic server with `helloworld.Greeter` only.
//!
//! It uses `tonic::transport::Server` with tonic's defaults and adds nothing else (no layers,
//! no health, no reflection, no metrics, no logging), on a multi-thread tokio runtime like
//! `keel serve`. `scripts/bench-greeter.sh` compares Keel's full default stack against it.
//!
//! Usage: `bare-greeter [ADDR]` (default `127.0.0.1:50052`). Prints `grpc listening on ADDR`
//! once the listener is bound.

use std::net::SocketAddr;

use tonic::transport::{Server, server::TcpIncoming};

/// The address served when none is given on the command line.
const DEFAULT_ADDR: &str = "127.0.0.1:50052";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    if arg == "-h" || arg == "--help" {
        println!("usage: bare-greeter [ADDR]   (default {DEFAULT_ADDR})");
        return Ok(());
    }
    let addr: SocketAddr = arg
        .parse()
        .map_err(|e| format!("invalid listen address {arg:?}: {e}"))?;

    // Exactly what `Server::serve(addr)` does with tonic's defaults (bind, TCP_NODELAY on, no
    // TCP keepalive), only split so that the "listening" line is printed once connections are
    // accepted, and so that port 0 reports the real port.
    let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    println!("grpc listening on {}", incoming.local_addr()?);

    Server::builder()
        .add_service(keel_interop::Greeter.into_service())
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
