//! Cases over streaming calls that complete normally: `client_streaming`,
//! `server_streaming`, `ping_pong` and `empty_stream`.

use futures_util::stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{CaseError, Transport, check_zeros, int32, rpc, zeros};
use crate::pb::grpc_testing::test_service_client::TestServiceClient;
use crate::pb::grpc_testing::{
    ResponseParameters, StreamingInputCallRequest, StreamingOutputCallRequest,
};

/// Payload sizes the client sends (client_streaming, ping_pong).
const REQUEST_SIZES: [usize; 4] = [27_182, 8, 1_828, 45_904];
/// Payload sizes the server is asked to send back (server_streaming, ping_pong).
const RESPONSE_SIZES: [usize; 4] = [31_415, 9, 2_653, 58_979];

/// StreamingInputCall with four payloads, then half-close: the server reports their sum.
pub(super) async fn client_streaming(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let requests = REQUEST_SIZES.map(|size| StreamingInputCallRequest {
        payload: Some(zeros(size)),
        ..StreamingInputCallRequest::default()
    });
    let response = client
        .streaming_input_call(stream::iter(requests))
        .await
        .map_err(rpc("StreamingInputCall"))?
        .into_inner();
    let expected = REQUEST_SIZES.iter().sum::<usize>();
    if response.aggregated_payload_size != int32(expected) {
        return Err(CaseError::Mismatch(format!(
            "aggregated_payload_size is {}, expected {expected}",
            response.aggregated_payload_size
        )));
    }
    Ok(())
}

/// StreamingOutputCall asking for four sizes: exactly four responses of those sizes, in order.
pub(super) async fn server_streaming(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let request = StreamingOutputCallRequest {
        response_parameters: RESPONSE_SIZES.iter().map(|&size| sized(size)).collect(),
        ..StreamingOutputCallRequest::default()
    };
    let mut responses = client
        .streaming_output_call(request)
        .await
        .map_err(rpc("StreamingOutputCall"))?
        .into_inner();
    let mut received = 0;
    while let Some(response) = responses
        .message()
        .await
        .map_err(rpc("StreamingOutputCall"))?
    {
        let Some(&expected) = RESPONSE_SIZES.get(received) else {
            return Err(CaseError::Mismatch(format!(
                "more than the {} responses asked for",
                RESPONSE_SIZES.len()
            )));
        };
        check_zeros(
            &format!("response {}", received + 1),
            response.payload.as_ref(),
            expected,
        )?;
        received += 1;
    }
    if received != RESPONSE_SIZES.len() {
        return Err(CaseError::Mismatch(format!(
            "{received} responses, expected {}",
            RESPONSE_SIZES.len()
        )));
    }
    Ok(())
}

/// FullDuplexCall, sending each request only after the previous response: four responses of
/// the asked sizes, then OK after half-close.
pub(super) async fn ping_pong(mut client: TestServiceClient<Transport>) -> Result<(), CaseError> {
    let (sender, receiver) = mpsc::channel(1);
    // The first request is queued before the call starts, so a server that sends its
    // headers only with its first response cannot deadlock the case.
    send_ping(&sender, 0).await?;
    let mut responses = client
        .full_duplex_call(ReceiverStream::new(receiver))
        .await
        .map_err(rpc("FullDuplexCall"))?
        .into_inner();
    for (index, expected) in RESPONSE_SIZES.into_iter().enumerate() {
        if index > 0 {
            send_ping(&sender, index).await?;
        }
        let Some(response) = responses.message().await.map_err(rpc("FullDuplexCall"))? else {
            return Err(CaseError::Mismatch(format!(
                "the call ended after {index} responses, expected {}",
                RESPONSE_SIZES.len()
            )));
        };
        check_zeros(
            &format!("response {}", index + 1),
            response.payload.as_ref(),
            expected,
        )?;
    }
    drop(sender); // half-close
    match responses.message().await.map_err(rpc("FullDuplexCall"))? {
        None => Ok(()),
        Some(_) => Err(CaseError::Mismatch(format!(
            "more than the {} responses asked for",
            RESPONSE_SIZES.len()
        ))),
    }
}

/// Sends ping `index` of [`ping_pong`].
async fn send_ping(
    sender: &mpsc::Sender<StreamingOutputCallRequest>,
    index: usize,
) -> Result<(), CaseError> {
    let request = StreamingOutputCallRequest {
        response_parameters: vec![sized(RESPONSE_SIZES[index])],
        payload: Some(zeros(REQUEST_SIZES[index])),
        ..StreamingOutputCallRequest::default()
    };
    sender.send(request).await.map_err(|_| {
        CaseError::Mismatch(format!(
            "the call stopped taking requests before request {}",
            index + 1
        ))
    })
}

/// FullDuplexCall that half-closes at once: no response, status OK.
pub(super) async fn empty_stream(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let mut responses = client
        .full_duplex_call(stream::empty::<StreamingOutputCallRequest>())
        .await
        .map_err(rpc("FullDuplexCall"))?
        .into_inner();
    let mut received = 0;
    while responses
        .message()
        .await
        .map_err(rpc("FullDuplexCall"))?
        .is_some()
    {
        received += 1;
    }
    if received != 0 {
        return Err(CaseError::Mismatch(format!(
            "{received} responses, expected none"
        )));
    }
    Ok(())
}

/// Response parameters asking for `size` bytes, sent without delay.
pub(super) fn sized(size: usize) -> ResponseParameters {
    ResponseParameters {
        size: int32(size),
        ..ResponseParameters::default()
    }
}
