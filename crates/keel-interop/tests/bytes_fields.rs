//! `bytes` fields are generated as `bytes::Bytes` (keel-build) so that decoding slices them
//! out of the receive buffer instead of copying: pinned here by pointer, and through a real
//! server, with 64 KiB bodies.

use std::ops::Range;

use keel_interop::TestService;
use keel_interop::pb::grpc_testing::test_service_client::TestServiceClient;
use keel_interop::pb::grpc_testing::{Payload, SimpleRequest, StreamingInputCallRequest};
use prost::Message;
use prost::bytes::Bytes;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

const BODY: usize = 64 * 1024;

/// A body no field default or zero-filled buffer looks like.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn request(body: Vec<u8>, response_size: i32) -> SimpleRequest {
    SimpleRequest {
        payload: Some(Payload {
            body: body.into(),
            ..Payload::default()
        }),
        response_size,
        ..SimpleRequest::default()
    }
}

fn address_range(bytes: &[u8]) -> Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

#[test]
fn decoded_body_is_a_slice_of_the_receive_buffer() {
    let encoded = Bytes::from(request(patterned(BODY), 0).encode_to_vec());

    let decoded = SimpleRequest::decode(encoded.clone()).expect("decodes");

    let body = decoded.payload.expect("payload").body;
    assert_eq!(body[..], patterned(BODY)[..]);
    let buffer = address_range(&encoded);
    let body = address_range(&body);
    assert!(
        buffer.start <= body.start && body.end <= buffer.end,
        "the decoded body at {body:#x?} was copied out of the buffer at {buffer:#x?}: \
         bytes fields are not generated as bytes::Bytes"
    );
}

/// TestService on an ephemeral loopback port, and a client connected to it.
async fn test_service_client() -> TestServiceClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_routes(Routes::new(TestService.into_service()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    TestServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn unary_call_carries_64_kib_bodies_both_ways() {
    let mut client = test_service_client().await;

    let response = client
        .unary_call(request(patterned(BODY), BODY as i32))
        .await
        .expect("UnaryCall")
        .into_inner();

    let body = response.payload.expect("payload").body;
    assert_eq!(body.len(), BODY);
    assert!(
        body.iter().all(|&byte| byte == 0),
        "TestService sends zeros"
    );
}

#[tokio::test]
async fn streaming_input_call_counts_every_byte_of_64_kib_bodies() {
    let mut client = test_service_client().await;
    let messages = (0..4).map(|_| StreamingInputCallRequest {
        payload: Some(Payload {
            body: patterned(BODY).into(),
            ..Payload::default()
        }),
        ..StreamingInputCallRequest::default()
    });

    let response = client
        .streaming_input_call(tokio_stream::iter(messages))
        .await
        .expect("StreamingInputCall")
        .into_inner();

    assert_eq!(response.aggregated_payload_size, 4 * BODY as i32);
}
