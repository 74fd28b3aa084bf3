//! Cases where the client ends a call early: by a deadline (`timeout_on_sleeping_server`) or
//! by cancelling it (`cancel_after_begin`, `cancel_after_first_response`).
//!
//! In tonic a call is cancelled by dropping it: there is then no status to read, the outcome
//! is CANCELLED by construction. What these cases can check, and do, is that the cancel
//! really happened mid-call: the call had begun (or had produced its first response) and
//! had not completed on its own. Dropping the response first and the request stream second
//! makes the transport reset the HTTP/2 stream (RST_STREAM CANCEL), so the server sees a
//! cancellation.

use std::time::Duration;

use futures_util::stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, TimeoutExpired};

use super::streaming::sized;
use super::{CaseError, Transport, describe_status, rpc, zeros};
use crate::pb::grpc_testing::test_service_client::TestServiceClient;
use crate::pb::grpc_testing::{StreamingInputCallRequest, StreamingOutputCallRequest};

/// The deadline of `timeout_on_sleeping_server`.
const SLEEPING_DEADLINE: Duration = Duration::from_millis(1);
/// How long a cancel case waits for the call to reach the point where it cancels.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// FullDuplexCall with a 1 ms deadline, one request and no half-close, so the server has
/// nothing to do but wait: the call ends with DEADLINE_EXCEEDED.
pub(super) async fn timeout_on_sleeping_server(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let deadline = tokio::time::Instant::now() + SLEEPING_DEADLINE;
    let (sender, receiver) = mpsc::channel(1);
    let first = StreamingOutputCallRequest {
        payload: Some(zeros(27_182)),
        ..StreamingOutputCallRequest::default()
    };
    let _ = sender.send(first).await;
    let mut request = Request::new(ReceiverStream::new(receiver));
    // Sent as `grpc-timeout`, so the server knows the deadline too.
    request.set_timeout(SLEEPING_DEADLINE);
    let call = async {
        let mut responses = client.full_duplex_call(request).await?.into_inner();
        responses.message().await
    };
    // tonic enforces the deadline only until the response headers; past them the deadline
    // of the whole call is enforced here, as a gRPC client library does.
    let outcome = tokio::time::timeout_at(deadline, call).await;
    drop(sender);
    let status = match outcome {
        Err(_elapsed) => return Ok(()),
        Ok(Ok(Some(_))) => {
            return Err(CaseError::Mismatch(
                "got a response, expected the call to end with DEADLINE_EXCEEDED".to_owned(),
            ));
        }
        Ok(Ok(None)) => {
            return Err(CaseError::Mismatch(
                "the call ended with OK, expected DEADLINE_EXCEEDED".to_owned(),
            ));
        }
        Ok(Err(status)) => status,
    };
    if status.code() == Code::DeadlineExceeded || is_local_deadline(&status) {
        Ok(())
    } else {
        Err(CaseError::Mismatch(format!(
            "the call ended with {}, expected DEADLINE_EXCEEDED",
            describe_status(&status)
        )))
    }
}

/// tonic's channel reports its own expiry of `grpc-timeout` as CANCELLED "Timeout expired";
/// in gRPC terms that is the client library's DEADLINE_EXCEEDED.
fn is_local_deadline(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message() == TimeoutExpired(()).to_string()
}

/// StreamingInputCall cancelled as soon as it has begun (headers sent, no message yet): the
/// call must still be in flight then, so that its outcome is CANCELLED.
pub(super) async fn cancel_after_begin(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let (begun_sender, begun) = oneshot::channel();
    let (sender, mut receiver) = mpsc::channel::<StreamingInputCallRequest>(1);
    // The transport polls the request stream once the call's headers are sent: that first
    // poll is the "begin" the spec cancels after.
    let mut begun_sender = Some(begun_sender);
    let requests = stream::poll_fn(move |cx| {
        if let Some(begun_sender) = begun_sender.take() {
            let _ = begun_sender.send(());
        }
        receiver.poll_recv(cx)
    });
    // Boxed, so that dropping it below really drops the call (a stack pin would not).
    let mut call = Box::pin(client.streaming_input_call(requests));
    tokio::select! {
        biased;
        outcome = &mut call => {
            return Err(CaseError::Mismatch(format!(
                "the call completed before it was cancelled, with {}",
                describe_outcome(outcome.map(|_| ()))
            )));
        }
        begun = begun => if begun.is_err() {
            return Err(CaseError::Mismatch(
                "the request stream was dropped before the call began".to_owned(),
            ));
        },
        () = tokio::time::sleep(STEP_LIMIT) => {
            return Err(CaseError::Mismatch(format!(
                "the call had not begun after {STEP_LIMIT:?}"
            )));
        }
    }
    // Cancel: drop the call, then end the request stream.
    drop(call);
    drop(sender);
    Ok(())
}

/// FullDuplexCall cancelled once its first response has arrived.
pub(super) async fn cancel_after_first_response(
    mut client: TestServiceClient<Transport>,
) -> Result<(), CaseError> {
    let (sender, receiver) = mpsc::channel(1);
    let first = StreamingOutputCallRequest {
        response_parameters: vec![sized(31_415)],
        payload: Some(zeros(27_182)),
        ..StreamingOutputCallRequest::default()
    };
    let _ = sender.send(first).await;
    let first_response = async {
        let mut responses = client
            .full_duplex_call(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let first = responses.message().await?;
        Ok::<_, Status>((first, responses))
    };
    let responses = match tokio::time::timeout(STEP_LIMIT, first_response).await {
        Err(_elapsed) => {
            return Err(CaseError::Mismatch(format!(
                "no response within {STEP_LIMIT:?}"
            )));
        }
        Ok(Err(status)) => return Err(rpc("FullDuplexCall")(status)),
        Ok(Ok((None, _))) => {
            return Err(CaseError::Mismatch(
                "the call ended with OK before its first response".to_owned(),
            ));
        }
        Ok(Ok((Some(_), responses))) => responses,
    };
    // Cancel: drop the response stream, then end the request stream.
    drop(responses);
    drop(sender);
    Ok(())
}

fn describe_outcome(outcome: Result<(), Status>) -> String {
    match outcome {
        Ok(()) => "OK".to_owned(),
        Err(status) => describe_status(&status),
    }
}
