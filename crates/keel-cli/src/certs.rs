//! `keel certs`: a development CA, intermediates, and server and client certificates as
//! PEM files, for trying TLS and mTLS in a minute. The work is keel-certs'; this module
//! reads flags, refuses to overwrite files, and says what was written and what to run next.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use keel_certs::{
    Authority, CaOptions, Error, KeyAlgorithm, LeafOptions, Pair, PrivateKey, SpiffeId, Usage,
    Validity, format_time, inspect,
};

/// Makes a development certificate authority and the certificates TLS and mTLS need, as
/// PEM files: certificate chains (`NAME.pem`, leaf first, root left out) beside PKCS#8 keys
/// (`NAME.key`, mode 0600). For development and tests, not production: a real deployment
/// gets its certificates from its PKI (cert-manager, Vault, SPIRE).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  keel certs dev --out certs                      # CA + server (localhost) + client, at once
  keel certs ca --out certs/ca --name 'Team CA' --validity 730d
  keel certs intermediate --ca certs/ca --out certs/intermediate
  keel certs issue --ca certs/intermediate --out certs/payments \\
    --dns payments.internal --ip 10.0.0.7 --spiffe spiffe://keel.test/payments --both
  keel certs issue --ca certs/ca --out certs/old --dns localhost \\
    --not-before -30d --validity 1d                 # already expired, for tests
  keel tls doctor 127.0.0.1:50051 --ca certs/ca.pem --cert certs/client.pem --key certs/client.key

Files: --out certs/server writes certs/server.pem and certs/server.key; --ca certs/ca
reads certs/ca.pem and certs/ca.key. Existing files are never overwritten without --force.

Exit status: 0 written; 2 bad flags or input (invalid SPIFFE ID, no CA key, a file
exists); 1 a file could not be written.")]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// A CA, a server certificate and a client certificate in one go (the one-minute mTLS
    /// setup): DIR/ca.pem, DIR/server.pem, DIR/client.pem and their keys.
    Dev(DevArgs),
    /// A root CA: PREFIX.pem (give it to whoever must trust the certificates it issues)
    /// and PREFIX.key.
    Ca(CaArgs),
    /// An intermediate CA issued by --ca; the certificates it issues carry it in their chain.
    Intermediate(IntermediateArgs),
    /// A server or client certificate issued by --ca (a root or an intermediate).
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Directory to write into (created if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// DNS names of the server certificate (repeatable)
    #[arg(long, value_name = "NAME", default_values = ["localhost"])]
    dns: Vec<String>,
    /// IP addresses of the server certificate (repeatable)
    #[arg(long, value_name = "IP", default_values = ["127.0.0.1", "::1"])]
    ip: Vec<IpAddr>,
    /// SPIFFE ID of the client certificate
    #[arg(long, value_name = "ID", default_value = "spiffe://keel.test/client", value_parser = spiffe)]
    spiffe: SpiffeId,
    /// SPIFFE ID of the server certificate (none by default)
    #[arg(long, value_name = "ID", value_parser = spiffe)]
    server_spiffe: Option<SpiffeId>,
    /// Also make DIR/intermediate.pem and issue both certificates from it
    #[arg(long)]
    intermediate: bool,
    #[command(flatten)]
    key: KeyArgs,
    /// Overwrite existing files
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct CaArgs {
    /// Where to write: PREFIX.pem and PREFIX.key
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// The CA's name (subject CN)
    #[arg(long, default_value = "Keel Dev CA")]
    name: String,
    #[command(flatten)]
    validity: ValidityArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Overwrite existing files
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct IntermediateArgs {
    /// The issuing CA: PREFIX.pem and PREFIX.key
    #[arg(long, value_name = "PREFIX")]
    ca: PathBuf,
    /// Where to write: PREFIX.pem (the intermediate, then the chain above it) and PREFIX.key
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// The intermediate's name (subject CN)
    #[arg(long, default_value = "Keel Dev Intermediate CA")]
    name: String,
    #[command(flatten)]
    validity: ValidityArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Overwrite existing files
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// The issuing CA: PREFIX.pem and PREFIX.key
    #[arg(long, value_name = "PREFIX")]
    ca: PathBuf,
    /// Where to write: PREFIX.pem (the certificate, then any intermediates) and PREFIX.key
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// DNS name to be valid for (repeatable; `*.example.internal` for a wildcard)
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// IP address to be valid for (repeatable)
    #[arg(long, value_name = "IP")]
    ip: Vec<IpAddr>,
    /// SPIFFE ID (the one URI SAN): spiffe://trust-domain/path
    #[arg(long, value_name = "ID", value_parser = spiffe)]
    spiffe: Option<SpiffeId>,
    /// Subject common name (default: the first DNS name, else the SPIFFE ID, else the IP)
    #[arg(long)]
    name: Option<String>,
    /// For servers (extended key usage serverAuth; the default)
    #[arg(long, group = "usage")]
    server: bool,
    /// For clients (clientAuth): mTLS callers
    #[arg(long, group = "usage")]
    client: bool,
    /// For both: a workload that serves and calls with one certificate
    #[arg(long, group = "usage")]
    both: bool,
    #[command(flatten)]
    validity: ValidityArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Overwrite existing files
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ValidityArgs {
    /// How long it is valid, e.g. 90d, 12h (default: 365d for CAs, 90d for certificates)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    validity: Option<Duration>,
    /// When validity starts: an RFC 3339 time (2030-01-01T00:00:00Z) or an offset from now
    /// (-30d, +1h). Default: a minute ago
    #[arg(long, value_name = "WHEN", value_parser = moment, allow_hyphen_values = true)]
    not_before: Option<SystemTime>,
}

impl ValidityArgs {
    fn validity(&self, default: Duration) -> Validity {
        let lasting = self.validity.unwrap_or(default);
        match self.not_before {
            Some(start) => Validity::between(start, start + lasting),
            None => Validity::for_next(lasting),
        }
    }
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Key to generate: ecdsa-p256 (default), ecdsa-p384, ed25519 (ring cannot generate
    /// RSA: make one with openssl and pass --key)
    #[arg(long, value_name = "TYPE", value_parser = key_type, default_value = "ecdsa-p256")]
    key_type: KeyAlgorithm,
    /// Use this existing PKCS#8 key instead of generating one (ECDSA, Ed25519 or RSA)
    #[arg(long, value_name = "FILE", conflicts_with = "key_type")]
    key: Option<PathBuf>,
}

impl KeyArgs {
    /// The existing key, if one was given.
    fn existing(&self) -> Result<Option<PrivateKey>, Error> {
        self.key
            .as_deref()
            .map(|path| PrivateKey::from_pem(&keel_certs::read(path)?, &path.display().to_string()))
            .transpose()
    }

    fn ca(&self, options: CaOptions) -> Result<CaOptions, Error> {
        Ok(match self.existing()? {
            Some(key) => options.key(key),
            None => options.key_algorithm(self.key_type),
        })
    }

    fn leaf(&self, options: LeafOptions) -> Result<LeafOptions, Error> {
        Ok(match self.existing()? {
            Some(key) => options.key(key),
            None => options.key_algorithm(self.key_type),
        })
    }
}

fn spiffe(value: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(value).map_err(|error| error.to_string())
}

fn key_type(value: &str) -> Result<KeyAlgorithm, String> {
    value.parse().map_err(|error: Error| error.to_string())
}

/// `-30d` / `+1h` from now, or an RFC 3339 time.
fn moment(value: &str) -> Result<SystemTime, String> {
    let offset = |rest: &str| humantime::parse_duration(rest).map_err(|error| error.to_string());
    if let Some(rest) = value.strip_prefix('-') {
        Ok(SystemTime::now() - offset(rest)?)
    } else if let Some(rest) = value.strip_prefix('+') {
        Ok(SystemTime::now() + offset(rest)?)
    } else {
        humantime::parse_rfc3339_weak(value).map_err(|_| {
            format!("{value:?} is neither an RFC 3339 time (2030-01-01T00:00:00Z) nor an offset (-30d, +1h)")
        })
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Runs `keel certs`; the exit status says what failed.
pub fn run(args: CertsArgs) -> ExitCode {
    let result = match args.command {
        CertsCommand::Dev(args) => dev(args),
        CertsCommand::Ca(args) => ca(args),
        CertsCommand::Intermediate(args) => intermediate(args),
        CertsCommand::Issue(args) => issue(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let hint = match &error {
                Error::Exists(_) => " (pass --force to overwrite)",
                Error::NoServerName => " (pass --dns or --ip; for a client certificate, --client)",
                _ => "",
            };
            eprintln!("keel certs: {error}{hint}");
            let write_failed = matches!(&error, Error::Io { action, .. } if *action != "read");
            ExitCode::from(if write_failed { 1 } else { 2 })
        }
    }
}

fn dev(args: DevArgs) -> Result<(), Error> {
    let pairs: Vec<Pair> = ["ca", "intermediate", "server", "client"]
        .into_iter()
        .filter(|name| args.intermediate || *name != "intermediate")
        .map(|name| Pair::new(&args.out.join(name)))
        .collect();
    if !args.force {
        refuse_existing(&pairs)?;
    }
    let root = Authority::root(args.key.ca(CaOptions::new("Keel Dev CA"))?)?;
    let mut written = vec![write_authority(&pairs[0], &root, args.force)?];
    let intermediate = if args.intermediate {
        let intermediate = root.intermediate(args.key.ca(
            CaOptions::new("Keel Dev Intermediate CA").validity(Validity::for_next(180 * DAY)),
        )?)?;
        written.push(write_authority(&pairs[1], &intermediate, args.force)?);
        Some(intermediate)
    } else {
        None
    };
    let issuer = intermediate.as_ref().unwrap_or(&root);
    let mut server = LeafOptions::server();
    for name in &args.dns {
        server = server.dns(name);
    }
    for ip in &args.ip {
        server = server.ip(*ip);
    }
    if let Some(id) = &args.server_spiffe {
        server = server.spiffe(id.clone());
    }
    let leaves = pairs.len() - 2;
    written.push(write_leaf(
        &pairs[leaves],
        issuer,
        args.key.leaf(server)?,
        args.force,
    )?);
    let client = args
        .key
        .leaf(LeafOptions::client().spiffe(args.spiffe.clone()))?;
    written.push(write_leaf(&pairs[leaves + 1], issuer, client, args.force)?);
    println!("{}", written.join("\n"));
    let dir = args.out.display();
    let host = args.dns.first().map(String::as_str).unwrap_or("localhost");
    println!(
        "\nNext: serve with mutual TLS (payments takes the same settings under server.):\n  \
         keel serve --set tls.cert={dir}/server.pem --set tls.key={dir}/server.key \\\n    \
         --set tls.client_ca={dir}/ca.pem --set tls.client_auth=required\n\
         then call it with the client certificate, and check the handshake:\n  \
         keel call https://{host}:50051 --cacert {dir}/ca.pem --cert {dir}/client.pem \
         --key {dir}/client.key list\n  \
         keel tls doctor {host}:50051 --ca {dir}/ca.pem --cert {dir}/client.pem --key {dir}/client.key"
    );
    Ok(())
}

fn ca(args: CaArgs) -> Result<(), Error> {
    let pair = Pair::new(&args.out);
    if !args.force {
        refuse_existing(std::slice::from_ref(&pair))?;
    }
    let options = CaOptions::new(&args.name).validity(args.validity.validity(365 * DAY));
    let root = Authority::root(args.key.ca(options)?)?;
    println!("{}", write_authority(&pair, &root, args.force)?);
    println!(
        "\nNext: issue a certificate with it:\n  keel certs issue --ca {} --out server --dns localhost --ip 127.0.0.1",
        prefix(&pair).display()
    );
    Ok(())
}

fn intermediate(args: IntermediateArgs) -> Result<(), Error> {
    let pair = Pair::new(&args.out);
    if !args.force {
        refuse_existing(std::slice::from_ref(&pair))?;
    }
    let parent = Pair::new(&args.ca).read_authority()?;
    let options = CaOptions::new(&args.name).validity(args.validity.validity(365 * DAY));
    let intermediate = parent.intermediate(args.key.ca(options)?)?;
    println!("{}", write_authority(&pair, &intermediate, args.force)?);
    println!(
        "\nNext: issue certificates from it (their chains will carry it):\n  \
         keel certs issue --ca {} --out server --dns localhost --ip 127.0.0.1",
        prefix(&pair).display()
    );
    Ok(())
}

fn issue(args: IssueArgs) -> Result<(), Error> {
    let pair = Pair::new(&args.out);
    if !args.force {
        refuse_existing(std::slice::from_ref(&pair))?;
    }
    let authority = Pair::new(&args.ca).read_authority()?;
    let usage = if args.both {
        Usage::Both
    } else if args.client {
        Usage::Client
    } else {
        Usage::Server
    };
    let mut options = LeafOptions::new(usage).validity(args.validity.validity(90 * DAY));
    for name in &args.dns {
        options = options.dns(name);
    }
    for ip in &args.ip {
        options = options.ip(*ip);
    }
    if let Some(id) = &args.spiffe {
        options = options.spiffe(id.clone());
    }
    if let Some(name) = &args.name {
        options = options.common_name(name);
    }
    println!(
        "{}",
        write_leaf(&pair, &authority, args.key.leaf(options)?, args.force)?
    );
    let ca = Pair::new(&args.ca);
    let (cert, key) = (pair.cert.display(), pair.key.display());
    let next = match usage {
        Usage::Client => format!(
            "call with --cert {cert} --key {key}, e.g.\n  keel tls doctor HOST:PORT --ca CA.pem --cert {cert} --key {key}"
        ),
        _ => format!(
            "serve with {cert} and {key}; clients trust the root CA of {}, e.g.\n  \
             keel tls doctor HOST:PORT --ca ROOT.pem",
            ca.cert.display()
        ),
    };
    println!("\nNext: {next}");
    Ok(())
}

fn refuse_existing(pairs: &[Pair]) -> Result<(), Error> {
    for pair in pairs {
        for path in [&pair.cert, &pair.key] {
            if path.exists() {
                return Err(Error::Exists(path.clone()));
            }
        }
    }
    Ok(())
}

fn prefix(pair: &Pair) -> PathBuf {
    pair.cert.with_extension("")
}

fn write_authority(pair: &Pair, authority: &Authority, force: bool) -> Result<String, Error> {
    pair.write(&authority.cert_pem(), &authority.key_pem(), force)?;
    let info = authority.info();
    let role = if authority.is_root() {
        "root CA: the trust anchor clients and servers are given"
    } else {
        "intermediate CA, followed by the chain above it"
    };
    Ok(format!(
        "{}  \"{}\" ({role}), valid until {}\n{}  its private key (mode 0600; keep it private)",
        display(&pair.cert),
        info.subject,
        format_time(info.not_after),
        display(&pair.key),
    ))
}

fn write_leaf(
    pair: &Pair,
    authority: &Authority,
    options: LeafOptions,
    force: bool,
) -> Result<String, Error> {
    let issued = authority.issue(options)?;
    pair.write(&issued.chain_pem(), &issued.key().pem(), force)?;
    let info = inspect(issued.leaf())?;
    let usage = match info.extended_usage {
        Some((true, true)) => "server and client",
        Some((false, true)) => "client",
        _ => "server",
    };
    let chain = match issued.chain().len() {
        1 => String::new(),
        n => format!(", chain of {n}"),
    };
    Ok(format!(
        "{}  {usage} certificate for {}{chain}, valid {} to {}\n{}  its private key (PKCS#8, mode 0600)",
        display(&pair.cert),
        info.names().join(", "),
        format_time(info.not_before),
        format_time(info.not_after),
        display(&pair.key),
    ))
}

fn display(path: &Path) -> String {
    format!("wrote {}", path.display())
}
