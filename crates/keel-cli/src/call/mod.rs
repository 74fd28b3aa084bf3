//! `keel call`: a grpcurl-like client for any server with reflection. Lists services,
//! describes types and invokes methods in all four modes with JSON in and out.
//!
//! `args` reads the flags, `connect` opens the one connection, `reflection` finds
//! descriptors through `keel::reflect` (`types` adds the standard ones a server may not
//! send), `input` turns JSON into request messages, `codec` carries them, `invoke` makes the
//! call, and `output`, `describe` and `status` print, with `escape` keeping the server's
//! text from acting on the terminal.

pub(crate) mod args;
pub(crate) mod connect;
mod describe;
mod escape;
mod input;
mod invoke;
mod output;
pub(crate) mod reflection;
mod status;

use std::fmt;
use std::process::ExitCode;

use args::Action;
pub use args::CallArgs;
use output::Printer;
use reflection::Reflection;
use tonic::Code;

/// Why `keel call` did not succeed, and so its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or input, an unknown service or method: exit 2.
    Usage(String),
    /// The server could not be reached, its reflection failed, or output failed: exit 1.
    Other(String),
    /// The RPC ended with this non-OK code, already reported on stderr: exit 64 + code.
    Status(Code),
    /// stdout was closed by its reader (`| head`): stop quietly, exit 0.
    ClosedOutput,
}

impl Failure {
    /// The exit status this failure maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Other(_) => 1,
            // Codes are 1..=16, so this is 65..=80.
            Self::Status(code) => 64 + *code as u8,
            Self::ClosedOutput => 0,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Other(message) => f.write_str(message),
            Self::Status(code) => {
                write!(f, "the call failed with {}", keel::code::code_name(*code))
            }
            Self::ClosedOutput => f.write_str("stdout closed"),
        }
    }
}

/// Runs `keel call`, reporting any failure on stderr, and returns the exit status.
pub async fn run(args: CallArgs) -> ExitCode {
    match call(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if matches!(failure, Failure::Usage(_) | Failure::Other(_)) {
                eprintln!("keel call: {}", escape::lines(&failure.to_string()));
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn call(args: CallArgs) -> Result<(), Failure> {
    // Everything the flags can get wrong is found before connecting.
    let action = args.action()?;
    let metadata = args.metadata()?;
    let printer = Printer::new(args.output());
    let channel = connect::connect(args.address(), &args.tls()).await?;
    let mut reflection = Reflection::new(channel.clone(), metadata.clone());
    let result = match action {
        Action::List(None) => {
            let services = reflection.services().await?;
            printer.text(&lines(services))
        }
        Action::List(Some(service)) => {
            let service = reflection.service(&service).await?;
            printer.text(&lines(service.methods().map(|m| m.full_name().to_owned())))
        }
        Action::Describe(symbol) => {
            let symbol = reflection.symbol(&symbol).await?;
            printer.text(&describe::describe(&symbol))
        }
        Action::Invoke(method) => {
            let method = reflection.method(&method).await?;
            let requests = input::requests(&method, &args.data())?;
            if let Some(version) = reflection.version() {
                printer.note(&format!("reflection: {}", version.service_name()));
            }
            let call = invoke::Call {
                method,
                requests,
                metadata,
                deadline: args.deadline(),
            };
            invoke::invoke(channel, call, printer).await
        }
    };
    match result {
        Err(Failure::ClosedOutput) => Ok(()),
        other => other,
    }
}

/// One item per line.
fn lines(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().map(|item| item + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
        assert_eq!(Failure::Other(String::new()).exit_code(), 1);
        assert_eq!(Failure::Status(Code::Cancelled).exit_code(), 65);
        assert_eq!(Failure::Status(Code::NotFound).exit_code(), 69);
        assert_eq!(Failure::Status(Code::Unauthenticated).exit_code(), 80);
        assert_eq!(Failure::ClosedOutput.exit_code(), 0);
    }
}
