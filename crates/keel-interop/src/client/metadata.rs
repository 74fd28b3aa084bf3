//! `custom_metadata`: Echo Metadata, checking that each key comes back in the right place
//! (initial metadata for the ASCII key, trailing metadata for the binary one).
//!
//! tonic's unary client merges headers and trailers into one map, which would hide a
//! server that puts the echo in the wrong place; the UnaryCall is therefore made as a
//! one-message stream, whose headers and trailers tonic keeps apart.

use futures_util::stream;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Streaming};
use tonic_prost::ProstCodec;

use super::streaming::sized;
use super::unary::{LARGE_REQUEST_SIZE, LARGE_RESPONSE_SIZE, large_request};
use super::{CaseError, Transport, rpc, zeros};
use crate::echo_metadata::{ECHO_INITIAL_KEY, ECHO_TRAILING_KEY};
use crate::pb::grpc_testing::test_service_client::TestServiceClient;
use crate::pb::grpc_testing::{SimpleRequest, SimpleResponse, StreamingOutputCallRequest};

const INITIAL_VALUE: &str = "test_initial_metadata_value";
const TRAILING_VALUE: [u8; 3] = [0xab, 0xab, 0xab];
const UNARY_CALL_PATH: &str = "/grpc.testing.TestService/UnaryCall";

/// UnaryCall, then FullDuplexCall (half-closed after one request), both carrying the two
/// echo keys: both succeed, with the ASCII key in the initial metadata and the binary key
/// in the trailing metadata.
pub(super) async fn custom_metadata(channel: Transport) -> Result<(), CaseError> {
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| CaseError::Mismatch(format!("the channel is not ready: {error}")))?;
    let unary = grpc
        .streaming::<_, SimpleRequest, SimpleResponse, _>(
            with_echo_keys(stream::iter([large_request()])),
            PathAndQuery::from_static(UNARY_CALL_PATH),
            ProstCodec::default(),
        )
        .await
        .map_err(rpc("UnaryCall"))?;
    let messages = check_echo("UnaryCall", unary).await?;
    if messages != 1 {
        return Err(CaseError::Mismatch(format!(
            "UnaryCall answered {messages} messages, expected one"
        )));
    }

    let request = StreamingOutputCallRequest {
        response_parameters: vec![sized(LARGE_RESPONSE_SIZE)],
        payload: Some(zeros(LARGE_REQUEST_SIZE)),
        ..StreamingOutputCallRequest::default()
    };
    let duplex = TestServiceClient::new(channel)
        .full_duplex_call(with_echo_keys(stream::iter([request])))
        .await
        .map_err(rpc("FullDuplexCall"))?;
    check_echo("FullDuplexCall", duplex).await?;
    Ok(())
}

fn with_echo_keys<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(ECHO_INITIAL_KEY, MetadataValue::from_static(INITIAL_VALUE));
    metadata.insert_bin(
        ECHO_TRAILING_KEY,
        MetadataValue::from_bytes(&TRAILING_VALUE),
    );
    request
}

/// Reads the call to its end; checks it succeeded and echoed both keys in the right place.
/// Returns how many messages it answered.
async fn check_echo<T>(
    step: &'static str,
    response: Response<Streaming<T>>,
) -> Result<usize, CaseError> {
    let initial = response.metadata().clone();
    let mut messages = response.into_inner();
    let mut count = 0;
    while messages.message().await.map_err(rpc(step))?.is_some() {
        count += 1;
    }
    let trailing = messages
        .trailers()
        .await
        .map_err(rpc(step))?
        .unwrap_or_else(MetadataMap::new);

    match initial.get(ECHO_INITIAL_KEY).map(|value| value.to_str()) {
        Some(Ok(INITIAL_VALUE)) => {}
        Some(_) => {
            return Err(CaseError::Mismatch(format!(
                "{step}: initial metadata {ECHO_INITIAL_KEY} is {:?}, expected {INITIAL_VALUE:?}",
                initial.get(ECHO_INITIAL_KEY)
            )));
        }
        None => {
            return Err(CaseError::Mismatch(format!(
                "{step}: initial metadata has no {ECHO_INITIAL_KEY}{}",
                found_in_other(&trailing, ECHO_INITIAL_KEY, "trailing")
            )));
        }
    }
    match trailing
        .get_bin(ECHO_TRAILING_KEY)
        .map(|value| value.to_bytes())
    {
        Some(Ok(bytes)) if bytes.as_ref() == TRAILING_VALUE => {}
        Some(decoded) => {
            return Err(CaseError::Mismatch(format!(
                "{step}: trailing metadata {ECHO_TRAILING_KEY} is {decoded:?}, expected {TRAILING_VALUE:02x?}"
            )));
        }
        None => {
            return Err(CaseError::Mismatch(format!(
                "{step}: trailing metadata has no {ECHO_TRAILING_KEY}{}",
                found_in_other(&initial, ECHO_TRAILING_KEY, "initial")
            )));
        }
    }
    Ok(count)
}

fn found_in_other(other: &MetadataMap, key: &str, which: &str) -> String {
    if other.contains_key(key) {
        format!(" (it came in the {which} metadata instead)")
    } else {
        String::new()
    }
}
