//! `keel tls doctor`: one TLS handshake, explained. `probe.rs` performs it with rustls and
//! records what the server did; `doctor.rs` follows the seed's decision flow (TCP, TLS,
//! ALPN, the certificate chain, the client certificate, HTTP/2) and says, for each problem,
//! what is wrong and the fix.
//!
//! `client.rs` is the client side the other commands share: the TLS flags of `keel call`
//! and `keel gateway` (its upstream's), read the same way into Keel's channel.

pub mod client;
mod doctor;
mod probe;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use keel_certs::{certificates_from_pem, trust_anchors};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivateKeyDer, ServerName, TrustAnchor};
use rustls::sign::CertifiedKey;

/// TLS tools.
#[derive(Debug, Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Connect to a TLS server, perform the handshake, and explain what is wrong (and how
    /// to fix it): refused connections, plaintext servers, ALPN without h2, untrusted or
    /// incomplete chains, name mismatches, expired certificates, client certificates
    /// demanded or rejected.
    Doctor(DoctorArgs),
}

/// Performs a TLS handshake with HOST:PORT (rustls, TLS 1.2 and 1.3) and explains it:
/// TCP, TLS version and cipher suite, SNI, ALPN, the chain the server presented and where
/// its verification fails, and the client certificate the server asked for or refused.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  keel tls doctor 127.0.0.1:50051 --ca certs/ca.pem --server-name localhost
  keel tls doctor localhost:50051 --ca certs/ca.pem --cert certs/client.pem --key certs/client.key
  keel tls doctor api.example.com:443                      # public roots (Mozilla's)
  keel tls doctor 10.0.0.7:8443 --ca ca.pem --json | jq .problems

The server's chain is recorded during the handshake and verified afterwards, against --ca
(else the Mozilla roots), for the server name (--server-name, else HOST), so the doctor
goes on past a bad certificate and reports everything it sees. Then it sends the HTTP/2
preface, as a gRPC client does, to see the server accept the connection (in TLS 1.3 a
rejected client certificate shows only then).

Exit status: 0 the handshake is fully good; 1 a problem was found (each with a fix);
2 bad flags or unreadable files.")]
pub struct DoctorArgs {
    /// The server: HOST:PORT (https://HOST:PORT and [IPv6]:PORT work too; port 443 if none)
    #[arg(value_name = "HOST:PORT")]
    target: String,
    /// CA certificates (PEM) to verify the server with, instead of the Mozilla roots
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that ask for one (mTLS)
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Name to send in SNI and verify the certificate for, instead of HOST
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// ALPN protocol to offer (repeatable)
    #[arg(long, value_name = "PROTOCOL", default_values = ["h2"])]
    alpn: Vec<String>,
    /// Time allowed to connect and for each read
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// Runs `keel tls`.
pub fn run(args: TlsArgs) -> ExitCode {
    match args.command {
        TlsCommand::Doctor(args) => match Inputs::read(&args) {
            Ok(inputs) => {
                let report = doctor::examine(&inputs);
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", report.human());
                }
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(message) => {
                eprintln!("keel tls doctor: {message}");
                ExitCode::from(2)
            }
        },
    }
}

/// The checked flags.
pub struct Inputs {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    roots: Vec<TrustAnchor<'static>>,
    /// `--ca FILE`, or `None` for the Mozilla roots.
    ca: Option<PathBuf>,
    client: Option<Arc<CertifiedKey>>,
    client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    alpn: Vec<String>,
    timeout: Duration,
}

impl Inputs {
    fn read(args: &DoctorArgs) -> Result<Self, String> {
        let (host, port) = split_target(&args.target)?;
        let name = args.server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| format!("{name:?} is not a DNS name or IP address to verify"))?;
        let roots = match &args.ca {
            Some(path) => {
                let pem = keel_certs::read(path).map_err(|error| error.to_string())?;
                let certs = certificates_from_pem(&pem, &path.display().to_string())
                    .map_err(|error| error.to_string())?;
                let anchors = trust_anchors(&certs);
                if anchors.is_empty() {
                    return Err(format!("{}: no usable CA certificate", path.display()));
                }
                anchors
            }
            None => webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let (client, client_chain) = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => {
                let pem = keel_certs::read(cert).map_err(|error| error.to_string())?;
                let chain = certificates_from_pem(&pem, &cert.display().to_string())
                    .map_err(|error| error.to_string())?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                    format!("{}: no usable private key ({error})", key.display())
                })?;
                let certified = CertifiedKey::from_der(chain.clone(), key_der, &probe::provider())
                    .map_err(|error| {
                        format!(
                            "{} and {} do not make a client certificate: {error}",
                            cert.display(),
                            key.display()
                        )
                    })?;
                (Some(Arc::new(certified)), chain)
            }
            _ => (None, Vec::new()),
        };
        if args.alpn.iter().any(String::is_empty) {
            return Err("--alpn takes a protocol name, e.g. h2".into());
        }
        Ok(Self {
            host,
            port,
            server_name,
            roots,
            ca: args.ca.clone(),
            client,
            client_chain,
            alpn: args.alpn.clone(),
            timeout: args.timeout,
        })
    }
}

/// `HOST:PORT`, `https://HOST:PORT/`, `[::1]:443`, `HOST` (443).
fn split_target(target: &str) -> Result<(String, u16), String> {
    let bare = target
        .strip_prefix("https://")
        .unwrap_or(target)
        .trim_end_matches('/');
    if bare.contains("://") {
        return Err(format!(
            "{target:?}: give HOST:PORT (a TLS doctor has nothing to say about http://)"
        ));
    }
    let (host, port) = if let Some(rest) = bare.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{target:?}: unclosed '[' in an IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match bare.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (bare, None),
        }
    };
    let port = match port {
        Some(port) => port
            .parse()
            .map_err(|_| format!("{target:?}: {port:?} is not a port"))?,
        None => 443,
    };
    if host.is_empty() {
        return Err(format!("{target:?}: no host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn targets_are_read_as_people_write_them() {
        let ok = |target: &str| split_target(target).unwrap();
        assert_eq!(ok("localhost:50051"), ("localhost".into(), 50051));
        assert_eq!(
            ok("https://api.example.com/"),
            ("api.example.com".into(), 443)
        );
        assert_eq!(ok("[::1]:8443"), ("::1".into(), 8443));
        assert_eq!(ok("10.0.0.7"), ("10.0.0.7".into(), 443));
        assert!(split_target("http://x:1").is_err());
        assert!(split_target("x:port").is_err());
    }
}
