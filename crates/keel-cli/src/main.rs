//! `keel`: one binary for Keel's tools. It parses arguments, builds configuration, calls the
//! libraries and maps errors to exit codes; nothing else lives here.

mod bench;
mod bridge;
mod call;
mod certs;
mod gateway;
mod interop;
mod serve;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, not the system allocator: it returns the memory of closed connections to the
/// OS, where glibc malloc kept a connection flood's peak (docs/ARCHITECTURE.md, "Memory
/// after a connection flood").
#[cfg(not(feature = "count-allocs"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A benchmark build (`--features count-allocs`): the system allocator, counted; `keel serve`
/// prints the totals on SIGUSR1 (scripts/bench-greeter.sh, allocations per call).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOCATOR: alloc_counter::Counting = alloc_counter::COUNTING;

/// Keel: production gRPC services for Rust.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve helloworld.Greeter and grpc.testing.TestService with Keel's full default stack
    /// (health, reflection, admin endpoints, graceful shutdown); plaintext unless tls.cert
    /// is set.
    Serve(serve::ServeArgs),
    /// Run the standard gRPC interop test cases against a server.
    InteropClient(interop::InteropArgs),
    /// Call any server with reflection: list services, describe types, invoke methods with
    /// JSON (like grpcurl).
    Call(call::CallArgs),
    /// Serve a gRPC service's google.api.http rules as REST/JSON, forwarding to it over
    /// gRPC; descriptors from its reflection, reloaded on SIGHUP.
    Gateway(gateway::GatewayArgs),
    /// Carry device requests from MQTT to a gRPC method through a durable log, with exactly
    /// one effect per request.
    Bridge(bridge::BridgeArgs),
    /// Load-test any gRPC method: closed loop or at a fixed rate, with a latency summary,
    /// status codes and errors (like ghz).
    Bench(bench::BenchArgs),
    /// Make a development CA and server and client certificates (PEM), for TLS and mTLS.
    Certs(certs::CertsArgs),
    /// TLS tools: `keel tls doctor HOST:PORT` performs a handshake and explains what is wrong.
    Tls(tls::TlsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = keel::logging::init("KEEL") {
        eprintln!("keel: {error:#}");
        return ExitCode::from(2);
    }
    // The certificate tools are synchronous (files, one blocking handshake).
    let command = match cli.command {
        Command::Certs(args) => return certs::run(args),
        Command::Tls(args) => return tls::run(args),
        command => command,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keel: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve(args) => {
                let _telemetry = keel::telemetry::init("keel")?;
                #[cfg(feature = "count-allocs")]
                alloc_counter::report_on_sigusr1()?;
                serve::run(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::InteropClient(args) => interop::run(args).await.map(|()| ExitCode::SUCCESS),
            // `keel call` reports its own failures: its exit status tells the gRPC code.
            Command::Call(args) => Ok(call::run(args).await),
            // `keel bench` reports its own failures, like `keel call`.
            Command::Bench(args) => Ok(bench::run(args).await),
            Command::Gateway(args) => Ok(gateway::run(args).await),
            Command::Bridge(args) => Ok(bridge::run(args).await),
            Command::Certs(_) | Command::Tls(_) => unreachable!("run before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keel: {error:#}");
            ExitCode::FAILURE
        }
    }
}
