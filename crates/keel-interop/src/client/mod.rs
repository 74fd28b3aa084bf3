//! The standard gRPC interop client cases, run over any gRPC transport (a tonic `Channel`,
//! Keel's, either behind `keel::client::CheckStatus`) against any server of
//! `grpc.testing.TestService`, each checking exactly what the interop spec asks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_interop::client::{self, TestCase};
//! let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect().await?;
//! for case in TestCase::ALL {
//!     client::run(channel.clone(), case).await?;
//! }
//! # Ok(())
//! # }
//! ```

mod cancel;
mod metadata;
mod status;
mod streaming;
mod unary;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tonic::Status;
use tonic::codegen::{Bytes, StdError};
use tower::ServiceExt as _;
use tower::util::BoxCloneService;

use crate::pb::grpc_testing::test_service_client::TestServiceClient;
use crate::pb::grpc_testing::{Payload, PayloadType};

/// The longest any one case may take before it is reported as failed: it bounds a case
/// against a server that never answers.
pub const CASE_TIME_LIMIT: Duration = Duration::from_secs(30);

/// One standard interop case, named as in the spec (`empty_unary`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestCase {
    /// EmptyCall with an empty message succeeds.
    EmptyUnary,
    /// UnaryCall with 271828 bytes in, 314159 bytes out.
    LargeUnary,
    /// StreamingInputCall of four payloads; the server sums their sizes.
    ClientStreaming,
    /// StreamingOutputCall answered by four payloads of the requested sizes.
    ServerStreaming,
    /// FullDuplexCall, one response after each of four requests.
    PingPong,
    /// FullDuplexCall with no message either way.
    EmptyStream,
    /// FullDuplexCall with a 1 ms deadline against a server that waits: DEADLINE_EXCEEDED.
    TimeoutOnSleepingServer,
    /// StreamingInputCall cancelled once started, before any message.
    CancelAfterBegin,
    /// FullDuplexCall cancelled after its first response.
    CancelAfterFirstResponse,
    /// Echo Status over UnaryCall and FullDuplexCall.
    StatusCodeAndMessage,
    /// Echo Status with whitespace and non-ASCII characters in the message.
    SpecialStatusMessage,
    /// Echo Metadata: initial and trailing (binary) metadata over UnaryCall and FullDuplexCall.
    CustomMetadata,
    /// A method the service does not implement answers UNIMPLEMENTED.
    UnimplementedMethod,
    /// A service the server does not have answers UNIMPLEMENTED.
    UnimplementedService,
}

impl TestCase {
    /// Every case, in the order the spec lists them.
    pub const ALL: [TestCase; 14] = [
        TestCase::EmptyUnary,
        TestCase::LargeUnary,
        TestCase::ClientStreaming,
        TestCase::ServerStreaming,
        TestCase::PingPong,
        TestCase::EmptyStream,
        TestCase::TimeoutOnSleepingServer,
        TestCase::CancelAfterBegin,
        TestCase::CancelAfterFirstResponse,
        TestCase::StatusCodeAndMessage,
        TestCase::SpecialStatusMessage,
        TestCase::CustomMetadata,
        TestCase::UnimplementedMethod,
        TestCase::UnimplementedService,
    ];

    /// The spec's snake_case name, e.g. `empty_unary`.
    pub const fn name(self) -> &'static str {
        match self {
            TestCase::EmptyUnary => "empty_unary",
            TestCase::LargeUnary => "large_unary",
            TestCase::ClientStreaming => "client_streaming",
            TestCase::ServerStreaming => "server_streaming",
            TestCase::PingPong => "ping_pong",
            TestCase::EmptyStream => "empty_stream",
            TestCase::TimeoutOnSleepingServer => "timeout_on_sleeping_server",
            TestCase::CancelAfterBegin => "cancel_after_begin",
            TestCase::CancelAfterFirstResponse => "cancel_after_first_response",
            TestCase::StatusCodeAndMessage => "status_code_and_message",
            TestCase::SpecialStatusMessage => "special_status_message",
            TestCase::CustomMetadata => "custom_metadata",
            TestCase::UnimplementedMethod => "unimplemented_method",
            TestCase::UnimplementedService => "unimplemented_service",
        }
    }
}

impl fmt::Display for TestCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TestCase {
    type Err = UnknownTestCase;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TestCase::ALL
            .into_iter()
            .find(|case| case.name() == name)
            .ok_or_else(|| UnknownTestCase(name.to_owned()))
    }
}

/// A name that is not one of [`TestCase::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTestCase(pub String);

impl fmt::Display for UnknownTestCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown interop test case `{}`; known cases:", self.0)?;
        for case in TestCase::ALL {
            write!(f, " {case}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownTestCase {}

/// Why a case failed.
#[derive(Debug)]
pub enum CaseError {
    /// A call the case needs to succeed failed.
    Rpc {
        /// Which call of the case, e.g. `UnaryCall`.
        step: &'static str,
        /// The status it failed with.
        status: Status,
    },
    /// The server answered, but not as the spec requires.
    Mismatch(String),
    /// The case did not finish within [`CASE_TIME_LIMIT`].
    TimedOut(Duration),
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::Rpc { step, status } => {
                write!(f, "{step} failed: {}", describe_status(status))
            }
            CaseError::Mismatch(why) => f.write_str(why),
            CaseError::TimedOut(limit) => write!(f, "did not finish within {limit:?}"),
        }
    }
}

impl std::error::Error for CaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaseError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// The transport the cases run over: whatever [`run`] was given, boxed once so that the
/// cases need no type parameters.
type Transport =
    BoxCloneService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, StdError>;

/// Runs one case over `channel` (any gRPC transport), bounded by [`CASE_TIME_LIMIT`].
pub async fn run<S, B>(channel: S, case: TestCase) -> Result<(), CaseError>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<StdError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    let transport = BoxCloneService::new(
        channel
            .map_response(|response| response.map(tonic::body::Body::new))
            .map_err(Into::into),
    );
    tokio::time::timeout(CASE_TIME_LIMIT, run_unbounded(transport, case))
        .await
        .unwrap_or(Err(CaseError::TimedOut(CASE_TIME_LIMIT)))
}

async fn run_unbounded(channel: Transport, case: TestCase) -> Result<(), CaseError> {
    let client = TestServiceClient::new(channel.clone());
    match case {
        TestCase::EmptyUnary => unary::empty_unary(client).await,
        TestCase::LargeUnary => unary::large_unary(client).await,
        TestCase::ClientStreaming => streaming::client_streaming(client).await,
        TestCase::ServerStreaming => streaming::server_streaming(client).await,
        TestCase::PingPong => streaming::ping_pong(client).await,
        TestCase::EmptyStream => streaming::empty_stream(client).await,
        TestCase::TimeoutOnSleepingServer => cancel::timeout_on_sleeping_server(client).await,
        TestCase::CancelAfterBegin => cancel::cancel_after_begin(client).await,
        TestCase::CancelAfterFirstResponse => cancel::cancel_after_first_response(client).await,
        TestCase::StatusCodeAndMessage => status::status_code_and_message(client).await,
        TestCase::SpecialStatusMessage => status::special_status_message(client).await,
        TestCase::CustomMetadata => metadata::custom_metadata(channel).await,
        TestCase::UnimplementedMethod => status::unimplemented_method(channel).await,
        TestCase::UnimplementedService => status::unimplemented_service(channel).await,
    }
}

/// `Code (number): "message"`, the parts of a status a case cares about.
fn describe_status(status: &Status) -> String {
    format!(
        "{:?} ({}): {:?}",
        status.code(),
        status.code() as i32,
        status.message()
    )
}

/// Maps a failed call of `step` to [`CaseError::Rpc`].
fn rpc(step: &'static str) -> impl FnOnce(Status) -> CaseError {
    move |status| CaseError::Rpc { step, status }
}

/// A COMPRESSABLE payload of `size` zero bytes.
fn zeros(size: usize) -> Payload {
    Payload {
        r#type: PayloadType::Compressable.into(),
        body: vec![0; size].into(),
    }
}

/// `size` as the proto's int32 field; all sizes in the cases are small constants.
fn int32(size: usize) -> i32 {
    i32::try_from(size).expect("interop sizes fit in int32")
}

/// Checks that a response payload is `expected` zero bytes.
fn check_zeros(what: &str, payload: Option<&Payload>, expected: usize) -> Result<(), CaseError> {
    let Some(payload) = payload else {
        return Err(CaseError::Mismatch(format!("{what} has no payload")));
    };
    if payload.body.len() != expected {
        return Err(CaseError::Mismatch(format!(
            "{what} payload is {} bytes, expected {expected}",
            payload.body.len()
        )));
    }
    if let Some(at) = payload.body.iter().position(|&byte| byte != 0) {
        return Err(CaseError::Mismatch(format!(
            "{what} payload byte {at} is {:#04x}, expected only zeros",
            payload.body[at]
        )));
    }
    Ok(())
}
