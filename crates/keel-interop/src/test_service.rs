//! `grpc.testing.TestService`: the server side of the gRPC interop cases.
//!
//! Server features, as the interop spec names them: EmptyCall, UnaryCall, StreamingInputCall,
//! StreamingOutputCall, FullDuplexCall, HalfDuplexCall, Echo Status, Echo Metadata (through
//! [`EchoMetadata`], see [`TestService::into_service`]) and `interval_us` pacing. Compression
//! and authentication features are not supported: a request that expects a compressed
//! message is refused with `INVALID_ARGUMENT`, as the spec asks of a server without it.
//!
//! Every response stream is a plain [`Stream`] owning all of its state (the inbound stream,
//! the pending sleep): nothing is spawned, so when the client cancels and tonic drops the
//! response, all work for the call stops at once. A client going away is not an error of
//! this service and is never logged as one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::echo_metadata::EchoMetadata;
use crate::pb::grpc_testing::test_service_server::{self, TestServiceServer};
use crate::pb::grpc_testing::{
    BoolValue, EchoStatus, Empty, Payload, PayloadType, ResponseParameters, SimpleRequest,
    SimpleResponse, StreamingInputCallRequest, StreamingInputCallResponse,
    StreamingOutputCallRequest, StreamingOutputCallResponse,
};

/// Largest payload a client may ask for in one response (4 MiB, the default receive limit
/// of gRPC clients): larger requests are refused with `INVALID_ARGUMENT` instead of making
/// the server allocate whatever a request names.
pub const MAX_RESPONSE_SIZE: usize = 4 * 1024 * 1024;

/// A response stream of the test service.
pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamingOutputCallResponse, Status>> + Send + 'static>>;

/// `grpc.testing.TestService` as the gRPC interop spec describes it. Stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestService;

impl TestService {
    /// The tonic service to register on a server, wrapped in [`EchoMetadata`] so that the
    /// Echo Metadata feature works for every method, including trailers of unary calls
    /// (a bare `TestServiceServer` cannot add trailers to a successful unary response).
    pub fn into_service(self) -> EchoMetadata<TestServiceServer<Self>> {
        EchoMetadata::new(TestServiceServer::new(self))
    }
}

#[tonic::async_trait]
impl test_service_server::TestService for TestService {
    async fn empty_call(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        let request = request.into_inner();
        echo_status(request.response_status.as_ref())?;
        refuse_expected_compression(request.expect_compressed)?;
        check_payload_type(request.response_type)?;
        let payload = zero_payload(request.response_size)?;
        Ok(Response::new(SimpleResponse {
            payload: Some(payload),
            ..SimpleResponse::default()
        }))
    }

    type StreamingOutputCallStream = ResponseStream;

    async fn streaming_output_call(
        &self,
        request: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<Self::StreamingOutputCallStream>, Status> {
        let request = request.into_inner();
        let parameters = check_output_request(&request)?;
        let responses = stream::unfold(parameters, |mut parameters| async move {
            let parameters_now = parameters.pop_front()?;
            Some((paced_response(parameters_now).await, parameters))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn streaming_input_call(
        &self,
        request: Request<Streaming<StreamingInputCallRequest>>,
    ) -> Result<Response<StreamingInputCallResponse>, Status> {
        let mut inbound = request.into_inner();
        let mut total: usize = 0;
        // An error here is usually the client cancelling; returning it is all there is to do.
        while let Some(message) = inbound.message().await? {
            refuse_expected_compression(message.expect_compressed)?;
            let size = message.payload.map_or(0, |payload| payload.body.len());
            total = total.saturating_add(size);
        }
        let aggregated_payload_size = i32::try_from(total).map_err(|_| {
            Status::out_of_range(format!(
                "aggregated payload size {total} does not fit the int32 response field"
            ))
        })?;
        Ok(Response::new(StreamingInputCallResponse {
            aggregated_payload_size,
        }))
    }

    type FullDuplexCallStream = ResponseStream;

    async fn full_duplex_call(
        &self,
        request: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<Self::FullDuplexCallStream>, Status> {
        let state = FullDuplex {
            inbound: Some(request.into_inner()),
            pending: VecDeque::new(),
        };
        Ok(Response::new(Box::pin(stream::unfold(
            state,
            FullDuplex::next,
        ))))
    }

    type HalfDuplexCallStream = ResponseStream;

    async fn half_duplex_call(
        &self,
        request: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<Self::HalfDuplexCallStream>, Status> {
        let inbound = request.into_inner();
        // First read every request until half-close, then answer them in order; both phases
        // run inside the response stream, so a cancelled call stops wherever it is.
        let collected = stream::once(collect_half_duplex(inbound));
        let responses = collected.flat_map(|collected| match collected {
            Ok(parameters) => stream::unfold(parameters, |mut parameters| async move {
                let parameters_now = parameters.pop_front()?;
                Some((paced_response(parameters_now).await, parameters))
            })
            .left_stream(),
            Err(status) => stream::once(async move { Err(status) }).right_stream(),
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn unimplemented_call(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented(
            "grpc.testing.TestService/UnimplementedCall is deliberately not implemented",
        ))
    }
}

/// State of one FullDuplexCall: the inbound stream (until it ends or fails) and the
/// responses still owed for the requests read so far.
struct FullDuplex {
    inbound: Option<Streaming<StreamingOutputCallRequest>>,
    pending: VecDeque<ResponseParameters>,
}

type Step = Option<(Result<StreamingOutputCallResponse, Status>, FullDuplex)>;

impl FullDuplex {
    /// Produces the next response: owed ones first, in order, then the next request's.
    async fn next(mut self) -> Step {
        loop {
            if let Some(parameters) = self.pending.pop_front() {
                return Some((paced_response(parameters).await, self));
            }
            let inbound = self.inbound.as_mut()?;
            let failure = match inbound.message().await {
                Ok(Some(request)) => match check_output_request(&request) {
                    Ok(parameters) => {
                        self.pending = parameters;
                        continue;
                    }
                    Err(status) => status,
                },
                // Half-close: every owed response is sent, the call ends with OK.
                Ok(None) => return None,
                // The client went away or sent garbage; end the call with that status.
                Err(status) => status,
            };
            self.inbound = None;
            return Some((Err(failure), self));
        }
    }
}

/// Reads a HalfDuplexCall's requests until half-close, checking each.
async fn collect_half_duplex(
    mut inbound: Streaming<StreamingOutputCallRequest>,
) -> Result<VecDeque<ResponseParameters>, Status> {
    let mut all = VecDeque::new();
    while let Some(request) = inbound.message().await? {
        all.extend(check_output_request(&request)?);
    }
    Ok(all)
}

/// Applies Echo Status and the request checks of StreamingOutputCall/FullDuplexCall, and
/// returns the parameters of the responses to send.
fn check_output_request(
    request: &StreamingOutputCallRequest,
) -> Result<VecDeque<ResponseParameters>, Status> {
    echo_status(request.response_status.as_ref())?;
    check_payload_type(request.response_type)?;
    for parameters in &request.response_parameters {
        response_size(parameters.size)?;
        if parameters.interval_us < 0 {
            return Err(Status::invalid_argument(format!(
                "interval_us must not be negative, got {}",
                parameters.interval_us
            )));
        }
        if parameters.compressed.is_some_and(|c| c.value) {
            return Err(Status::invalid_argument(
                "compressed responses are not supported by this server",
            ));
        }
    }
    Ok(request.response_parameters.iter().copied().collect())
}

/// Sleeps `interval_us` (relative to the previous response), then builds the response.
async fn paced_response(
    parameters: ResponseParameters,
) -> Result<StreamingOutputCallResponse, Status> {
    if parameters.interval_us > 0 {
        let micros = u64::try_from(parameters.interval_us).unwrap_or_default();
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
    Ok(StreamingOutputCallResponse {
        payload: Some(zero_payload(parameters.size)?),
    })
}

/// Echo Status: a request naming a non-OK status ends the call with exactly that status.
fn echo_status(status: Option<&EchoStatus>) -> Result<(), Status> {
    match status {
        Some(echo) if echo.code != 0 => {
            Err(Status::new(Code::from_i32(echo.code), echo.message.clone()))
        }
        _ => Ok(()),
    }
}

/// This server cannot receive compressed messages, so a request that says it was
/// compressed was not (the spec's answer for that is `INVALID_ARGUMENT`).
fn refuse_expected_compression(expect_compressed: Option<BoolValue>) -> Result<(), Status> {
    if expect_compressed.is_some_and(|e| e.value) {
        return Err(Status::invalid_argument(
            "expected a compressed request, but this server does not support compression",
        ));
    }
    Ok(())
}

fn check_payload_type(response_type: i32) -> Result<(), Status> {
    match PayloadType::try_from(response_type) {
        Ok(PayloadType::Compressable) => Ok(()),
        Err(_) => Err(Status::invalid_argument(format!(
            "unsupported response_type {response_type}"
        ))),
    }
}

fn response_size(size: i32) -> Result<usize, Status> {
    match usize::try_from(size) {
        Ok(size) if size <= MAX_RESPONSE_SIZE => Ok(size),
        Ok(_) => Err(Status::invalid_argument(format!(
            "response size {size} exceeds this server's limit of {MAX_RESPONSE_SIZE} bytes"
        ))),
        Err(_) => Err(Status::invalid_argument(format!(
            "response size must not be negative, got {size}"
        ))),
    }
}

/// A COMPRESSABLE payload of `size` zero bytes.
fn zero_payload(size: i32) -> Result<Payload, Status> {
    Ok(Payload {
        r#type: PayloadType::Compressable.into(),
        body: vec![0; response_size(size)?].into(),
    })
}
