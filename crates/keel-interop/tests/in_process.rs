//! Runs `TestService` on an in-process tonic server and the interop client against it, so
//! the service and the cases are tested without the `keel` binary; a deliberately wrong
//! server shows that the cases catch what they check.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{self, Stream};
use keel_interop::client::{self, CaseError, TestCase};
use keel_interop::pb::grpc_testing::test_service_client::TestServiceClient;
use keel_interop::pb::grpc_testing::test_service_server::{self, TestServiceServer};
use keel_interop::pb::grpc_testing::{
    EchoStatus, Empty, Payload, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};
use keel_interop::{ECHO_INITIAL_KEY, ECHO_TRAILING_KEY, TestService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};

/// Serves `routes` on an ephemeral loopback port until the test's runtime ends.
async fn serve(routes: Routes) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn test_service_channel() -> Channel {
    connect(serve(Routes::new(TestService.into_service())).await).await
}

#[tokio::test]
async fn every_case_passes_against_test_service() {
    let channel = test_service_channel().await;
    let mut failures = Vec::new();
    for case in TestCase::ALL {
        if let Err(error) = client::run(channel.clone(), case).await {
            failures.push(format!("{case}: {error}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn case_names_round_trip_and_unknown_names_are_refused() {
    assert_eq!(TestCase::ALL.len(), 14);
    for case in TestCase::ALL {
        assert_eq!(case.to_string().parse::<TestCase>(), Ok(case));
    }
    let error = "large_unray".parse::<TestCase>().unwrap_err().to_string();
    assert!(error.contains("large_unray"), "{error}");
    assert!(
        error.contains("large_unary"),
        "lists the known cases: {error}"
    );
}

#[tokio::test]
async fn echo_reaches_an_error_status_too() {
    // An error ends a unary call with a trailers-only response: both keys must be there.
    let mut client = TestServiceClient::new(test_service_channel().await);
    let mut request = Request::new(SimpleRequest {
        response_status: Some(EchoStatus {
            code: Code::NotFound as i32,
            message: "nope".to_owned(),
        }),
        ..SimpleRequest::default()
    });
    request
        .metadata_mut()
        .insert(ECHO_INITIAL_KEY, MetadataValue::from_static("hello"));
    request
        .metadata_mut()
        .insert_bin(ECHO_TRAILING_KEY, MetadataValue::from_bytes(b"\x01\x02"));
    let status = client.unary_call(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "nope");
    assert_eq!(status.metadata().get(ECHO_INITIAL_KEY).unwrap(), "hello");
    let trailing = status.metadata().get_bin(ECHO_TRAILING_KEY).unwrap();
    assert_eq!(trailing.to_bytes().unwrap().as_ref(), b"\x01\x02");
}

#[tokio::test]
async fn out_of_range_sizes_are_invalid_arguments() {
    let mut client = TestServiceClient::new(test_service_channel().await);
    for size in [-1, i32::MAX] {
        let request = SimpleRequest {
            response_size: size,
            ..SimpleRequest::default()
        };
        let status = client.unary_call(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "size {size}: {status:?}"
        );
    }
}

#[tokio::test]
async fn streamed_responses_are_paced_by_interval_us() {
    let mut client = TestServiceClient::new(test_service_channel().await);
    let paced = ResponseParameters {
        size: 1,
        interval_us: 150_000,
        ..ResponseParameters::default()
    };
    let request = StreamingOutputCallRequest {
        response_parameters: vec![paced, paced],
        ..StreamingOutputCallRequest::default()
    };
    let start = std::time::Instant::now();
    let mut responses = client
        .streaming_output_call(request)
        .await
        .unwrap()
        .into_inner();
    let mut arrivals = Vec::new();
    while responses.message().await.unwrap().is_some() {
        arrivals.push(start.elapsed());
    }
    assert_eq!(arrivals.len(), 2);
    // Each interval is a sleep before its response, so they add up.
    assert!(arrivals[0] >= Duration::from_millis(150), "{arrivals:?}");
    assert!(arrivals[1] >= Duration::from_millis(300), "{arrivals:?}");
}

#[tokio::test]
async fn half_duplex_answers_only_after_half_close() {
    let mut client = TestServiceClient::new(test_service_channel().await);
    let (sender, receiver) = mpsc::channel(4);
    for size in [3, 5] {
        let request = StreamingOutputCallRequest {
            response_parameters: vec![ResponseParameters {
                size,
                ..ResponseParameters::default()
            }],
            ..StreamingOutputCallRequest::default()
        };
        sender.send(request).await.unwrap();
    }
    let mut responses = client
        .half_duplex_call(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let early = tokio::time::timeout(Duration::from_millis(200), responses.message()).await;
    assert!(early.is_err(), "answered before half-close: {early:?}");
    drop(sender);
    let mut sizes = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        sizes.push(response.payload.unwrap().body.len());
    }
    assert_eq!(sizes, [3, 5]);
}

#[tokio::test]
async fn cancelled_streams_leave_no_task_behind() {
    let channel = test_service_channel().await;
    let mut client = TestServiceClient::new(channel.clone());
    // Warm the connection up so its own tasks are in the baseline.
    client.empty_call(Empty {}).await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    // Streams the server is in the middle of pacing (a long sleep before the second response) when
    // the client goes away.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (sender, receiver) = mpsc::channel(1);
        let request = StreamingOutputCallRequest {
            response_parameters: vec![
                ResponseParameters::default(),
                ResponseParameters {
                    size: 1,
                    interval_us: i32::MAX, // about 36 minutes
                    ..ResponseParameters::default()
                },
            ],
            ..StreamingOutputCallRequest::default()
        };
        sender.send(request).await.unwrap();
        let mut responses = client
            .full_duplex_call(ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        responses.message().await.unwrap().unwrap();
        calls.push((responses, sender));
    }
    assert!(metrics.num_alive_tasks() > baseline, "the calls are live");
    for (responses, sender) in calls {
        drop(responses);
        drop(sender);
    }
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.num_alive_tasks() > baseline {
            // sleep: poll interval of a bounded poll on the condition
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "{} tasks alive 10 s after cancelling, {baseline} before the calls",
        metrics.num_alive_tasks()
    );
}

/// A server that gets every observable detail wrong, to show that the cases check them.
#[derive(Clone, Copy)]
struct Wrong;

type WrongStream =
    Pin<Box<dyn Stream<Item = Result<StreamingOutputCallResponse, Status>> + Send + 'static>>;

fn one_byte() -> StreamingOutputCallResponse {
    StreamingOutputCallResponse {
        payload: Some(Payload {
            body: vec![0].into(),
            ..Payload::default()
        }),
    }
}

#[tonic::async_trait]
impl test_service_server::TestService for Wrong {
    async fn empty_call(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Err(Status::internal("wrong on purpose"))
    }

    async fn unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        // Ignores response_status, and sends one byte too few (not zeros either).
        let size = usize::try_from(request.into_inner().response_size).unwrap_or(1);
        Ok(Response::new(SimpleResponse {
            payload: Some(Payload {
                body: vec![1; size.saturating_sub(1)].into(),
                ..Payload::default()
            }),
            ..SimpleResponse::default()
        }))
    }

    type StreamingOutputCallStream = WrongStream;

    async fn streaming_output_call(
        &self,
        _: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<WrongStream>, Status> {
        Ok(Response::new(Box::pin(stream::iter([Ok(one_byte())]))))
    }

    async fn streaming_input_call(
        &self,
        _: Request<Streaming<StreamingInputCallRequest>>,
    ) -> Result<Response<StreamingInputCallResponse>, Status> {
        Ok(Response::new(StreamingInputCallResponse {
            aggregated_payload_size: 1,
        }))
    }

    type FullDuplexCallStream = WrongStream;

    async fn full_duplex_call(
        &self,
        _: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<WrongStream>, Status> {
        // One response whatever was asked, then OK without waiting for the client.
        Ok(Response::new(Box::pin(stream::iter([Ok(one_byte())]))))
    }

    type HalfDuplexCallStream = WrongStream;

    async fn half_duplex_call(
        &self,
        _: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<WrongStream>, Status> {
        Ok(Response::new(Box::pin(stream::empty())))
    }

    async fn unimplemented_call(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
}

#[tokio::test]
async fn cases_fail_against_a_wrong_server() {
    // Served bare, without the Echo Metadata wrapper.
    let wrong = TestServiceServer::new(Wrong);
    assert_eq!(
        <TestServiceServer<Wrong> as NamedService>::NAME,
        "grpc.testing.TestService"
    );
    let channel = connect(serve(Routes::new(wrong)).await).await;
    let expectations = [
        (TestCase::EmptyUnary, "wrong on purpose"),
        (TestCase::LargeUnary, "314158 bytes, expected 314159"),
        (
            TestCase::ClientStreaming,
            "aggregated_payload_size is 1, expected 74922",
        ),
        (
            TestCase::ServerStreaming,
            "response 1 payload is 1 bytes, expected 31415",
        ),
        (
            TestCase::PingPong,
            "response 1 payload is 1 bytes, expected 31415",
        ),
        (TestCase::EmptyStream, "1 responses, expected none"),
        (TestCase::StatusCodeAndMessage, "UnaryCall succeeded"),
        (TestCase::SpecialStatusMessage, "UnaryCall succeeded"),
        (
            TestCase::CustomMetadata,
            "initial metadata has no x-grpc-test-echo-initial",
        ),
    ];
    for (case, why) in expectations {
        match client::run(channel.clone(), case).await {
            Err(error) => {
                let error = error.to_string();
                assert!(
                    error.contains(why),
                    "{case} failed for another reason: {error}"
                );
            }
            Ok(()) => panic!("{case} passed against a wrong server"),
        }
    }
}

#[tokio::test]
async fn a_server_without_the_service_fails_with_rpc_errors() {
    // Only the unimplemented cases pass against a server without TestService.
    let channel = connect(serve(Routes::default()).await).await;
    for case in TestCase::ALL {
        let outcome = client::run(channel.clone(), case).await;
        match case {
            TestCase::UnimplementedMethod | TestCase::UnimplementedService => {
                assert!(outcome.is_ok(), "{case}: {outcome:?}");
            }
            // These end the call before the server could answer anything.
            TestCase::TimeoutOnSleepingServer | TestCase::CancelAfterBegin => {}
            _ => assert!(
                matches!(outcome, Err(CaseError::Rpc { .. } | CaseError::Mismatch(_))),
                "{case} passed against a server without TestService"
            ),
        }
    }
}
