//! The flags of `keel call` and what they mean once checked: the action, the target, the
//! request metadata and where the request JSON comes from.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, MetadataMap};

use super::Failure;
use crate::tls::client::{ClientFlags, ClientTlsArgs};

/// Calls any gRPC server that offers reflection (grpc.reflection.v1, or v1alpha): lists its
/// services, describes its types, and invokes its methods with JSON in and out.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  keel call 127.0.0.1:50051 list
  keel call 127.0.0.1:50051 list grpc.testing.TestService
  keel call 127.0.0.1:50051 describe helloworld.Greeter
  keel call 127.0.0.1:50051 describe grpc.testing.SimpleRequest
  keel call 127.0.0.1:50051 helloworld.Greeter/SayHello -d '{\"name\":\"Ada\"}'
  keel call 127.0.0.1:50051 helloworld.Greeter.SayHello -d @request.json
  printf '%s\\n' '{\"payload\":{\"body\":\"AAE=\"}}' '{\"payload\":{\"body\":\"AgME\"}}' |
    keel call 127.0.0.1:50051 grpc.testing.TestService/StreamingInputCall -d @
  keel call 127.0.0.1:50051 helloworld.Greeter/SayHello -d '{\"name\":\"Ada\"}' \\
    -H 'authorization: Bearer TOKEN' -H 'trace-bin: AAEC' --deadline 2s -v
  keel call --tls api.example.com:443 list
  keel call https://10.0.0.7:8443 list --cacert ca.pem --server-name api.internal \\
    --cert client.pem --key client.key --expect-identity spiffe://example.org/api

Input: -d takes JSON in the proto3 JSON mapping (field names as in the .proto or in
lowerCamelCase; 64-bit integers as strings or numbers; bytes in base64). For client and
bidi streaming, give several JSON values in sequence (one per line, or concatenated); the
input is read in full before the call starts. Without -d, unary and server-streaming
methods get one empty message {} and client-streaming methods none.

Output: every response message as JSON on stdout (pretty, or one line each with
--compact). With -v, response headers and trailers go to stderr. An error status goes to
stderr: its code as gRPC spells it (InvalidArgument, NotFound, ...), its message, and
each google.rpc.Status detail (ErrorInfo, BadRequest, RetryInfo, ...) as JSON.

Exit status:
  0       the call succeeded
  1       the server could not be reached, its reflection failed, or output failed
  2       usage or input error (bad flags, JSON, header, unknown service or method)
  64+N    the RPC failed with gRPC status code N, e.g. 69 for NOT_FOUND (5),
          73 for FAILED_PRECONDITION (9), 68 for DEADLINE_EXCEEDED (4)")]
pub struct CallArgs {
    /// Server address: HOST:PORT, or a URI (http://HOST:PORT for plaintext h2c,
    /// https://HOST:PORT for TLS)
    #[arg(value_name = "ADDR")]
    address: String,

    /// What to do: `list [SERVICE]`, `describe SYMBOL`, or a method to invoke as
    /// pkg.Service/Method (or pkg.Service.Method)
    #[arg(value_name = "ACTION", required = true, num_args = 1..)]
    action: Vec<String>,

    /// Request JSON; `@FILE` reads FILE, `@` reads stdin
    #[arg(short = 'd', long = "data", value_name = "JSON|@FILE|@")]
    data: Option<String>,

    /// Request metadata `key: value` (repeatable); keys ending in -bin take base64 values
    #[arg(short = 'H', long = "header", value_name = "'KEY: VALUE'")]
    headers: Vec<String>,

    /// Time the call may take, e.g. 500ms, 5s, 1m (sent as grpc-timeout, enforced here too)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,

    #[command(flatten)]
    tls: ClientTlsArgs,

    /// One line per response message instead of pretty JSON
    #[arg(long)]
    compact: bool,

    /// Print fields that hold their default value (0, "", false, empty lists)
    #[arg(long)]
    emit_defaults: bool,

    /// Also print response headers and trailers (to stderr)
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// What `keel call` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// List the services, or the methods of one service.
    List(Option<String>),
    /// Describe a service, method, message or enum.
    Describe(String),
    /// Invoke a method, named as written (`pkg.Service/Method` or `pkg.Service.Method`).
    Invoke(String),
}

/// Where the request JSON comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// No `-d`: the method's default input.
    Absent,
    /// The text given on the command line.
    Inline(String),
    /// `-d @`: standard input.
    Stdin,
    /// `-d @FILE`.
    File(PathBuf),
}

/// How to print messages.
#[derive(Debug, Clone, Copy)]
pub struct OutputOptions {
    /// One line per message.
    pub compact: bool,
    /// Print default-valued fields.
    pub emit_defaults: bool,
    /// Print headers and trailers.
    pub verbose: bool,
}

impl CallArgs {
    /// The action, checked for its number of words.
    pub fn action(&self) -> Result<Action, Failure> {
        let words: Vec<&str> = self.action.iter().map(String::as_str).collect();
        let action = match words.as_slice() {
            ["list"] => Action::List(None),
            ["list", service] => Action::List(Some((*service).to_owned())),
            ["list", ..] => return Err(usage("`list` takes at most one SERVICE")),
            ["describe", symbol] => Action::Describe((*symbol).to_owned()),
            ["describe", ..] => return Err(usage("`describe` takes exactly one SYMBOL")),
            [method] => Action::Invoke((*method).to_owned()),
            [method, extra, ..] => {
                return Err(usage(format!(
                    "unexpected argument `{extra}` after method `{method}` (request JSON goes in -d)"
                )));
            }
            [] => return Err(usage("no ACTION given")),
        };
        if !matches!(action, Action::Invoke(_)) && self.data.is_some() {
            return Err(usage("-d applies only when invoking a method"));
        }
        Ok(action)
    }

    /// The server address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where the request JSON comes from.
    pub fn data(&self) -> Data {
        match self.data.as_deref() {
            None => Data::Absent,
            Some("@") => Data::Stdin,
            Some(text) => match text.strip_prefix('@') {
                Some(file) => Data::File(PathBuf::from(file)),
                None => Data::Inline(text.to_owned()),
            },
        }
    }

    /// The request metadata from every `-H`.
    pub fn metadata(&self) -> Result<MetadataMap, Failure> {
        let mut metadata = MetadataMap::new();
        for header in &self.headers {
            add_header(&mut metadata, header)?;
        }
        Ok(metadata)
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The TLS flags (plaintext when none is given and ADDR is not https://).
    pub fn tls(&self) -> ClientFlags {
        self.tls.flags()
    }

    /// How to print messages.
    pub fn output(&self) -> OutputOptions {
        OutputOptions {
            compact: self.compact,
            emit_defaults: self.emit_defaults,
            verbose: self.verbose,
        }
    }
}

/// Adds one `key: value` header; `-bin` keys take base64 (padded or not).
pub(crate) fn add_header(metadata: &mut MetadataMap, header: &str) -> Result<(), Failure> {
    let (key, value) = header
        .split_once(':')
        .ok_or_else(|| usage(format!("header `{header}` is not `key: value`")))?;
    let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
    let bad_key = |_| {
        usage(format!(
            "header `{header}`: `{key}` is not a valid metadata key"
        ))
    };
    if key.ends_with("-bin") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(value))
            .map_err(|error| {
                usage(format!(
                    "header `{header}`: a -bin value must be base64 ({error})"
                ))
            })?;
        let key = BinaryMetadataKey::from_str(&key).map_err(bad_key)?;
        metadata.append_bin(
            key,
            tonic::metadata::BinaryMetadataValue::from_bytes(&bytes),
        );
    } else {
        let key = AsciiMetadataKey::from_str(&key).map_err(bad_key)?;
        // gRPC allows printable ASCII only; HTTP would take more.
        let value = value
            .bytes()
            .all(|byte| (b' '..=b'~').contains(&byte))
            .then(|| AsciiMetadataValue::from_str(value).ok())
            .flatten()
            .ok_or_else(|| {
                usage(format!(
                    "header `{header}`: the value must be printable ASCII (use a -bin key for bytes)"
                ))
            })?;
        metadata.append(key, value);
    }
    Ok(())
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CallArgs,
    }

    fn parse(args: &[&str]) -> CallArgs {
        Cli::try_parse_from(std::iter::once("call").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn actions() {
        let check = |args: &[&str], expect: Result<Action, &str>| {
            let got = parse(args).action().map_err(|f| f.to_string());
            match expect {
                Ok(action) => assert_eq!(got.unwrap(), action, "{args:?}"),
                Err(part) => {
                    let message = got.unwrap_err();
                    assert!(message.contains(part), "{args:?}: {message}");
                }
            }
        };
        check(&["a:1", "list"], Ok(Action::List(None)));
        check(
            &["a:1", "list", "p.S"],
            Ok(Action::List(Some("p.S".into()))),
        );
        check(&["a:1", "list", "p.S", "x"], Err("at most one"));
        check(
            &["a:1", "describe", "p.M"],
            Ok(Action::Describe("p.M".into())),
        );
        check(&["a:1", "describe"], Err("exactly one SYMBOL"));
        check(
            &["a:1", "p.S/M", "-d", "{}"],
            Ok(Action::Invoke("p.S/M".into())),
        );
        check(&["a:1", "p.S/M", "{}"], Err("unexpected argument `{}`"));
        check(&["a:1", "list", "-d", "{}"], Err("-d applies only"));
    }

    #[test]
    fn data_sources() {
        assert_eq!(parse(&["a:1", "p.S/M"]).data(), Data::Absent);
        assert_eq!(parse(&["a:1", "p.S/M", "-d", "@"]).data(), Data::Stdin);
        assert_eq!(
            parse(&["a:1", "p.S/M", "-d", "@in.json"]).data(),
            Data::File("in.json".into())
        );
        assert_eq!(
            parse(&["a:1", "p.S/M", "-d", "{}"]).data(),
            Data::Inline("{}".into())
        );
    }

    #[test]
    fn headers() {
        let args = parse(&[
            "a:1",
            "list",
            "-H",
            "X-Token: abc ",
            "-H",
            "trace-bin: AAEC",
            "-H",
            "raw-bin:AAE",
        ]);
        let metadata = args.metadata().unwrap();
        assert_eq!(metadata.get("x-token").unwrap(), "abc");
        let trace = metadata.get_bin("trace-bin").unwrap().to_bytes().unwrap();
        assert_eq!(trace.as_ref(), [0, 1, 2]);
        let raw = metadata.get_bin("raw-bin").unwrap().to_bytes().unwrap();
        assert_eq!(raw.as_ref(), [0, 1]);

        for (bad, part) in [
            ("no colon", "not `key: value`"),
            ("bad key!: x", "not a valid metadata key"),
            ("x-bin: not base64!", "must be base64"),
            ("x: caf\u{e9}", "printable ASCII"),
        ] {
            let message = parse(&["a:1", "list", "-H", bad])
                .metadata()
                .unwrap_err()
                .to_string();
            assert!(message.contains(part), "{bad}: {message}");
        }
    }

    #[test]
    fn tls_flags_imply_tls() {
        assert!(!parse(&["a:1", "list"]).tls().wanted());
        assert!(parse(&["a:1", "list", "--tls"]).tls().wanted());
        let tls = parse(&["a:1", "list", "--cacert", "ca.pem", "--server-name", "x"]).tls();
        assert!(tls.wanted());
        assert_eq!(tls.ca.as_deref(), Some("ca.pem".as_ref()));
        assert_eq!(tls.server_name.as_deref(), Some("x"));
        let tls = parse(&["a:1", "list", "--cert", "c.pem", "--key", "k.pem"]).tls();
        assert!(tls.wanted() && tls.identity.is_some());
        let tls = parse(&["a:1", "list", "--expect-identity", "spiffe://t/s"]).tls();
        assert!(tls.wanted());
        assert_eq!(tls.expected_identities, ["spiffe://t/s"]);
        assert!(
            Cli::try_parse_from(["call", "a:1", "list", "--cert", "c.pem"]).is_err(),
            "--cert without --key"
        );
    }

    #[test]
    fn deadlines_are_human_durations() {
        let args = parse(&["a:1", "list", "--deadline", "1m 5s"]);
        assert_eq!(args.deadline(), Some(Duration::from_secs(65)));
        assert!(Cli::try_parse_from(["call", "a:1", "list", "--deadline", "soon"]).is_err());
    }
}
