//! Cancellation (seed 2.3): 10,000 streams cancelled at random points leave nothing behind:
//! the live-handler gauge and the runtime's task count return to their baselines within a
//! second, and neither cancelling nor half-closing clients make the server log warnings.
//!
//! Client- and bidi-streaming calls are cancelled over a raw h2 connection with an explicit
//! RST_STREAM(CANCEL): dropping a tonic call does not cancel it on the wire while hyper is
//! still piping its request stream, so tonic alone would leave those streams open.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::KeelServe;
use futures_util::StreamExt;
use keel_interop::pb::grpc_testing::test_service_client::TestServiceClient;
use keel_interop::pb::grpc_testing::{
    Payload, ResponseParameters, StreamingInputCallRequest, StreamingOutputCallRequest,
};
use prost::Message;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

const STREAMS: usize = 10_000;
const CONCURRENCY: usize = 64;

fn outputs(messages: usize, interval: Duration) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_parameters: vec![
            ResponseParameters {
                size: 64,
                interval_us: interval.as_micros() as i32,
                ..Default::default()
            };
            messages
        ],
        ..Default::default()
    }
}

/// A raw HTTP/2 connection, for cancelling streams with RST_STREAM at a chosen point.
#[derive(Clone)]
struct Raw {
    client: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        Self { client, addr }
    }

    /// Opens `method` on TestService, streams `message` every millisecond and reads
    /// responses until `at`, then resets the stream with CANCEL.
    async fn cancel_after(&self, method: &str, message: &impl Message, at: Duration) {
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut framed).unwrap();
        let framed = Bytes::from(framed);
        let request = http::Request::post(format!(
            "http://{}/grpc.testing.TestService/{method}",
            self.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let mut client = self
            .client
            .clone()
            .ready()
            .await
            .expect("h2 connection ready");
        let (response, mut send) = client.send_request(request, false).expect("stream opened");
        let work = async {
            let upload = async {
                loop {
                    if send.send_data(framed.clone(), false).is_err() {
                        return;
                    }
                    // sleep: the upload's pace: a steady client stream is the load under test
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            let download = async {
                if let Ok(response) = response.await {
                    let mut body = response.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::join!(upload, download);
        };
        let _ = tokio::time::timeout(at, work).await;
        send.send_reset(h2::Reason::CANCEL);
    }
}

/// One stream, cancelled (or half-closed) at a random point chosen by `kind` and `at`.
async fn one_stream(channel: Channel, raw: Raw, kind: u8, at: Duration) {
    let mut client = TestServiceClient::new(channel);
    match kind {
        // Cancel before or around the response headers.
        0 => {
            let call = client.streaming_output_call(outputs(20, Duration::from_millis(1)));
            let _ = tokio::time::timeout(at / 4, call).await;
        }
        // Cancel a server stream part-way.
        1 => {
            if let Ok(response) = client
                .streaming_output_call(outputs(50, Duration::from_millis(1)))
                .await
            {
                let mut stream = response.into_inner();
                let _ = tokio::time::timeout(at, async { while stream.next().await.is_some() {} })
                    .await;
            }
        }
        // Cancel a bidi stream while both sides are sending.
        2 => {
            raw.cancel_after("FullDuplexCall", &outputs(1, Duration::ZERO), at)
                .await
        }
        // Cancel a client stream mid-upload.
        3 => {
            let request = StreamingInputCallRequest {
                payload: Some(Payload {
                    body: vec![0; 32].into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            raw.cancel_after("StreamingInputCall", &request, at).await;
        }
        // Half-close: send a few requests, CloseSend, read every response to the end.
        _ => {
            let n = 1 + at.as_millis() as usize % 4;
            let requests = futures_util::stream::iter((0..n).map(|_| outputs(1, Duration::ZERO)));
            let response = client
                .full_duplex_call(requests)
                .await
                .expect("half-close call");
            let received: Vec<_> = response.into_inner().collect().await;
            assert_eq!(received.len(), n, "half-closed stream lost responses");
            assert!(received.iter().all(Result::is_ok), "{received:?}");
        }
    }
}

/// (live handlers, alive tasks) from the admin endpoint.
async fn gauges(admin: SocketAddr) -> (f64, f64) {
    let text = common::scrape(admin).await;
    let get = |name: &str| common::metric(&text, name).unwrap_or_else(|| panic!("{name} missing"));
    (
        get("keel_server_inflight_rpcs{listener=\"grpc\"}"),
        get("keel_runtime_alive_tasks"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cancelled_streams_leave_nothing_behind() {
    let server = KeelServe::start(&[]);
    let mut channels = Vec::new();
    let mut raws = Vec::new();
    for _ in 0..4 {
        let channel = Endpoint::from_shared(server.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let raw = Raw::connect(server.grpc).await;
        // Establish both connections so their tasks count in the baseline.
        one_stream(channel.clone(), raw.clone(), 4, Duration::from_millis(1)).await;
        raw.cancel_after(
            "FullDuplexCall",
            &outputs(1, Duration::ZERO),
            Duration::from_millis(2),
        )
        .await;
        channels.push(channel);
        raws.push(raw);
    }
    // The baseline is taken once the warm-up streams' server tasks have finished: no
    // handler alive and the task count the same in two samples running.
    let warmed = Instant::now();
    let mut previous = gauges(server.admin).await;
    let baseline = loop {
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sample = gauges(server.admin).await;
        if sample.0 == 0.0 && sample == previous {
            break sample;
        }
        assert!(
            warmed.elapsed() < Duration::from_secs(5),
            "handlers still alive before the test: {sample:?}"
        );
        previous = sample;
    };

    let mut rng = rand::rng();
    let plan: Vec<(u8, Duration)> = (0..STREAMS)
        .map(|_| {
            (
                rng.random_range(0..5),
                Duration::from_micros(rng.random_range(0..15_000)),
            )
        })
        .collect();
    futures_util::stream::iter(plan.into_iter().enumerate())
        .for_each_concurrent(CONCURRENCY, |(i, (kind, at))| {
            one_stream(channels[i % 4].clone(), raws[i % 4].clone(), kind, at)
        })
        .await;

    let finished = Instant::now();
    let settled = |(live, tasks): (f64, f64)| live == 0.0 && tasks <= baseline.1;
    let mut last = gauges(server.admin).await;
    while !settled(last) && finished.elapsed() < Duration::from_secs(1) {
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = gauges(server.admin).await;
    }
    assert!(
        settled(last),
        "(live handlers, alive tasks) = {last:?} 1 s after the last cancel; baseline {baseline:?}"
    );

    // The server is still healthy and answers on the same connections.
    one_stream(
        channels[0].clone(),
        raws[0].clone(),
        4,
        Duration::from_millis(2),
    )
    .await;
    let logs = server.logs();
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        noisy.is_empty(),
        "server logged warnings or errors:\n{}",
        noisy.join("\n")
    );
}
