//! `keel interop-client`: the standard gRPC interop client, with the flag names every
//! gRPC implementation's interop client uses, so that interop runners can drive it.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use clap::builder::PossibleValuesParser;
use keel::client::CheckStatus;
use keel_interop::client::{self, TestCase};
use tonic::transport::{Channel, Endpoint};

/// What `--test_case` accepts besides the case names.
const ALL: &str = "all";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `keel interop-client` (underscored, as in every gRPC interop client).
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Runs the cases of the gRPC interop spec (doc/interop-test-descriptions.md in the gRPC \
repository) against any server of grpc.testing.TestService, such as `keel serve`, and \
prints one line per case: `PASS <case>` or `FAIL <case>: <why>`. Exits non-zero if any \
case failed.")]
pub struct InteropArgs {
    /// Host name or IP address of the server.
    #[arg(long = "server_host", value_name = "HOST", default_value = "127.0.0.1")]
    pub server_host: String,

    /// Port of the server.
    #[arg(long = "server_port", value_name = "PORT", default_value_t = 50051)]
    pub server_port: u16,

    /// Case to run, or `all` for every case in order.
    #[arg(
        long = "test_case",
        value_name = "CASE",
        default_value = ALL,
        value_parser = test_case_names(),
    )]
    pub test_case: String,

    /// Use TLS. Only `false` is supported for now: plaintext HTTP/2.
    #[arg(
        long = "use_tls",
        value_name = "BOOL",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
    )]
    pub use_tls: bool,
}

fn test_case_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        std::iter::once(ALL).chain(TestCase::ALL.into_iter().map(TestCase::name)),
    )
}

/// Connects to the server, runs the selected case(s) one after another and prints one
/// `PASS`/`FAIL` line per case on stdout. Fails if the server cannot be reached or any
/// case failed.
pub async fn run(args: InteropArgs) -> anyhow::Result<()> {
    if args.use_tls {
        bail!("--use_tls=true is not supported yet: TLS comes in a later release; use plaintext");
    }
    let cases = selected_cases(&args.test_case)?;
    // tonic's channel, as any interop client would use, but no server can crash it.
    let channel = CheckStatus::new(connect(&args.server_host, args.server_port).await?);

    let mut failed = Vec::new();
    for case in &cases {
        match client::run(channel.clone(), *case).await {
            Ok(()) => println!("PASS {case}"),
            Err(error) => {
                println!("FAIL {case}: {error}");
                failed.push(case.name());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} interop cases failed: {}",
            failed.len(),
            cases.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn selected_cases(name: &str) -> anyhow::Result<Vec<TestCase>> {
    if name == ALL {
        return Ok(TestCase::ALL.to_vec());
    }
    Ok(vec![name.parse::<TestCase>()?])
}

async fn connect(host: &str, port: u16) -> anyhow::Result<Channel> {
    // An IPv6 literal needs brackets in a URI.
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("invalid server address {authority}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_max_header_list_size(keel::client::Http2Config::default().max_header_list_size);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the interop server at {authority}"))
}
