//! Cases about the status a call ends with: Echo Status (`status_code_and_message`,
//! `special_status_message`) and UNIMPLEMENTED for unknown methods and services.

use futures_util::stream;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

use super::{CaseError, Transport, describe_status};
use crate::pb::grpc_testing::test_service_client::TestServiceClient;
use crate::pb::grpc_testing::unimplemented_service_client::UnimplementedServiceClient;
use crate::pb::grpc_testing::{EchoStatus, Empty, SimpleRequest, StreamingOutputCallRequest};

/// The status `status_code_and_message` asks the server to end with.
const ECHO_CODE: Code = Code::Unknown;
const ECHO_MESSAGE: &str = "test status message";
/// The message of `special_status_message`: whitespace, a BMP and a non-BMP character.
const SPECIAL_MESSAGE: &str = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n";
/// The method `unimplemented_method` calls, which the interop server must not implement.
const UNIMPLEMENTED_METHOD_PATH: &str = "/grpc.testing.TestService/UnimplementedCall";

/// UnaryCall, then FullDuplexCall (half-closed after one request), each asking for status
/// 2 "test status message": both end with exactly that code and message.
pub(super) async fn status_code_and_message(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let unary = client.unary_call(echo_unary(ECHO_MESSAGE)).await;
    check_status("UnaryCall", unary.map(|_| ()), ECHO_CODE, ECHO_MESSAGE)?;

    let request = StreamingOutputCallRequest {
        response_status: Some(echo_status(ECHO_MESSAGE)),
        ..StreamingOutputCallRequest::default()
    };
    let duplex = async {
        let mut responses = client
            .full_duplex_call(stream::iter([request]))
            .await?
            .into_inner();
        // The status comes after any messages; the spec asks for none, and checks none.
        while responses.message().await?.is_some() {}
        Ok(())
    };
    check_status("FullDuplexCall", duplex.await, ECHO_CODE, ECHO_MESSAGE)
}

/// UnaryCall asking for status 2 with [`SPECIAL_MESSAGE`]: the message survives the trip
/// byte for byte (it is percent-encoded on the wire).
pub(super) async fn special_status_message(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let unary = client.unary_call(echo_unary(SPECIAL_MESSAGE)).await;
    check_status("UnaryCall", unary.map(|_| ()), ECHO_CODE, SPECIAL_MESSAGE)
}

/// `grpc.testing.TestService/UnimplementedCall` with an Empty: UNIMPLEMENTED.
pub(super) async fn unimplemented_method(channel: Transport) -> Result<(), CaseError> {
    let mut grpc = Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| CaseError::Mismatch(format!("the channel is not ready: {error}")))?;
    let outcome = grpc
        .unary::<Empty, Empty, _>(
            Request::new(Empty {}),
            PathAndQuery::from_static(UNIMPLEMENTED_METHOD_PATH),
            ProstCodec::default(),
        )
        .await;
    check_code(
        "TestService/UnimplementedCall",
        outcome.map(|_| ()),
        Code::Unimplemented,
    )
}

/// `grpc.testing.UnimplementedService/UnimplementedCall` with an Empty: UNIMPLEMENTED.
pub(super) async fn unimplemented_service(channel: Transport) -> Result<(), CaseError> {
    let outcome = UnimplementedServiceClient::new(channel)
        .unimplemented_call(Empty {})
        .await;
    check_code(
        "UnimplementedService/UnimplementedCall",
        outcome.map(|_| ()),
        Code::Unimplemented,
    )
}

fn echo_status(message: &str) -> EchoStatus {
    EchoStatus {
        code: ECHO_CODE as i32,
        message: message.to_owned(),
    }
}

fn echo_unary(message: &str) -> SimpleRequest {
    SimpleRequest {
        response_status: Some(echo_status(message)),
        ..SimpleRequest::default()
    }
}

/// Checks that `step` ended with `code`.
fn check_code(step: &str, outcome: Result<(), Status>, code: Code) -> Result<(), CaseError> {
    match outcome {
        Ok(()) => Err(CaseError::Mismatch(format!(
            "{step} succeeded, expected {code:?}"
        ))),
        Err(status) if status.code() == code => Ok(()),
        Err(status) => Err(CaseError::Mismatch(format!(
            "{step} ended with {}, expected {code:?}",
            describe_status(&status)
        ))),
    }
}

/// Checks that `step` ended with `code` and exactly `message`.
fn check_status(
    step: &str,
    outcome: Result<(), Status>,
    code: Code,
    message: &str,
) -> Result<(), CaseError> {
    let expected = format!("{code:?} ({}): {message:?}", code as i32);
    match outcome {
        Err(status) if status.code() == code && status.message() == message => Ok(()),
        Err(status) => Err(CaseError::Mismatch(format!(
            "{step} ended with {}, expected {expected}",
            describe_status(&status)
        ))),
        Ok(()) => Err(CaseError::Mismatch(format!(
            "{step} succeeded, expected {expected}"
        ))),
    }
}
