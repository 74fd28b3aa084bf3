//! Cases over plain unary calls: `empty_unary` (zero-size messages) and `large_unary`
//! (messages big enough to touch flow control).

use super::{CaseError, Transport, check_zeros, int32, rpc, zeros};
use crate::pb::grpc_testing::test_service_client::TestServiceClient;
use crate::pb::grpc_testing::{Empty, SimpleRequest};

/// Request payload of `large_unary` (and of `custom_metadata`'s calls).
pub(super) const LARGE_REQUEST_SIZE: usize = 271_828;
/// Response payload of `large_unary` (and of `custom_metadata`'s calls).
pub(super) const LARGE_RESPONSE_SIZE: usize = 314_159;

/// EmptyCall with the default Empty: the call succeeds with a response.
pub(super) async fn empty_unary(mut client: TestServiceClient<Transport>) -> Result<(), CaseError> {
    // A decoded response is non-null by construction: tonic fails the call when the server
    // sends no message, so success is the whole check.
    client
        .empty_call(Empty {})
        .await
        .map_err(rpc("EmptyCall"))?;
    Ok(())
}

/// UnaryCall with 271828 zero bytes, asking for 314159: the response carries that many zeros.
pub(super) async fn large_unary(mut client: TestServiceClient<Transport>) -> Result<(), CaseError> {
    let response = client
        .unary_call(large_request())
        .await
        .map_err(rpc("UnaryCall"))?
        .into_inner();
    check_zeros(
        "UnaryCall response",
        response.payload.as_ref(),
        LARGE_RESPONSE_SIZE,
    )
}

/// The request of `large_unary`: 271828 zero bytes in, 314159 asked for.
pub(super) fn large_request() -> SimpleRequest {
    SimpleRequest {
        response_size: int32(LARGE_RESPONSE_SIZE),
        payload: Some(zeros(LARGE_REQUEST_SIZE)),
        ..SimpleRequest::default()
    }
}
