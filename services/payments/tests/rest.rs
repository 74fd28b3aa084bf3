//! The payments service over REST/JSON through keel-gateway, as curl would use it: every
//! route of payments.proto's `google.api.http` rules over real HTTP/1.1, business errors with
//! their HTTP statuses and details, idempotent replays, and streaming lists as NDJSON and SSE.

mod common;

use std::net::SocketAddr;

use common::{Backend, TestDb};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use keel_gateway::{Gateway, GatewayOptions};
use payments::service::Payments;
use serde_json::{Value, json};

/// Payments on SQLite behind a Keel server, and the gateway in front of it over Keel's
/// client channel; returns the gateway's address.
async fn start() -> (SocketAddr, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await;
    let grpc = common::api::serve_payments_at(Payments::new(db.store.clone(), 1000)).await;
    let mut pool = prost_reflect::DescriptorPool::decode(payments::FILE_DESCRIPTOR_SET).unwrap();
    keel::dynamic::add_standard(&mut pool);
    let channel = keel::client::Channel::new(&format!("dns:///{grpc}")).unwrap();
    let gateway = Gateway::new(pool, channel, GatewayOptions::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keel_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    (addr, db)
}

/// One HTTP/1.1 request; the status, headers and body text.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default().to_owned(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (parts.status.as_u16(), parts.headers, text)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// The detail of `@type` google.rpc.`kind` in a Status JSON body.
fn detail<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{kind}"))
        .unwrap_or_else(|| panic!("no {kind} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_payments_and_refunds_over_rest() {
    let (gw, _db) = start().await;

    // POST /v1/accounts (body "*").
    for (id, currency) in [("alice", "USD"), ("bob", "USD"), ("yen", "JPY")] {
        let body = json!({"accountId": id, "currency": currency}).to_string();
        let (status, _, text) = request(gw, "POST", "/v1/accounts", Some(&body), &[]).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(parse(&text)["account"]["accountId"], id);
    }
    // POST /v1/accounts/{account_id}:deposit; the key makes a retry a replay.
    let deposit = json!({"amountMinor": "10000", "idempotencyKey": "dep-1"}).to_string();
    let (status, _, text) = request(
        gw,
        "POST",
        "/v1/accounts/alice:deposit",
        Some(&deposit),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["account"]["balanceMinor"], "10000");
    let (status, _, text) = request(
        gw,
        "POST",
        "/v1/accounts/alice:deposit",
        Some(&deposit),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        parse(&text)["replayed"],
        true,
        "the same key replays: {text}"
    );

    // POST /v1/payments, then GET it.
    let pay = json!({
        "idempotencyKey": "pay-1", "payerAccountId": "alice", "payeeAccountId": "bob",
        "amountMinor": 2500, "currency": "USD", "description": "lunch"
    })
    .to_string();
    let (status, _, text) = request(gw, "POST", "/v1/payments", Some(&pay), &[]).await;
    assert_eq!(status, 200, "{text}");
    let payment_id = parse(&text)["payment"]["paymentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, again) = request(gw, "POST", "/v1/payments", Some(&pay), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        parse(&again)["payment"]["paymentId"],
        payment_id.as_str(),
        "replayed: {again}"
    );
    let (status, _, text) =
        request(gw, "GET", &format!("/v1/payments/{payment_id}"), None, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["payment"]["description"], "lunch");

    // POST /v1/payments/{payment_id}:refund.
    let refund = json!({"amountMinor": "1000", "idempotencyKey": "ref-1"}).to_string();
    let path = format!("/v1/payments/{payment_id}:refund");
    let (status, _, text) = request(gw, "POST", &path, Some(&refund), &[]).await;
    assert_eq!(status, 200, "{text}");
    let (_, _, text) = request(gw, "GET", "/v1/accounts/bob", None, &[]).await;
    assert_eq!(parse(&text)["account"]["balanceMinor"], "1500");

    // GET /v1/accounts/{account_id}/payments: NDJSON by default, SSE on request.
    let (status, headers, text) =
        request(gw, "GET", "/v1/accounts/alice/payments", None, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = text.lines().map(parse).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(
        lines[0]["result"]["payment"]["paymentId"],
        payment_id.as_str()
    );
    let (status, headers, text) = request(
        gw,
        "GET",
        "/v1/accounts/alice/payments",
        None,
        &[("accept", "text/event-stream")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let event = text
        .strip_prefix("data: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .unwrap();
    assert_eq!(parse(event)["payment"]["paymentId"], payment_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_errors_keep_their_http_status_and_details() {
    let (gw, _db) = start().await;
    for (id, currency) in [("alice", "USD"), ("bob", "USD"), ("yen", "JPY")] {
        let body = json!({"accountId": id, "currency": currency}).to_string();
        assert_eq!(
            request(gw, "POST", "/v1/accounts", Some(&body), &[])
                .await
                .0,
            200
        );
    }
    let pay = |key: &str, payee: &str, amount: i64| {
        json!({"idempotencyKey": key, "payerAccountId": "alice", "payeeAccountId": payee,
               "amountMinor": amount, "currency": "USD"})
        .to_string()
    };

    // FAILED_PRECONDITION → 400, with the reason.
    let (status, _, text) =
        request(gw, "POST", "/v1/payments", Some(&pay("k1", "bob", 5)), &[]).await;
    assert_eq!(status, 400, "{text}");
    let body = parse(&text);
    assert_eq!(body["code"], 9);
    assert_eq!(detail(&body, "ErrorInfo")["reason"], "INSUFFICIENT_FUNDS");
    // A currency mismatch is FAILED_PRECONDITION too.
    let (status, _, text) =
        request(gw, "POST", "/v1/payments", Some(&pay("k2", "yen", 5)), &[]).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "CURRENCY_MISMATCH"
    );
    // NOT_FOUND → 404.
    let (status, _, text) = request(gw, "GET", "/v1/accounts/nobody", None, &[]).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "ACCOUNT_NOT_FOUND"
    );
    // ALREADY_EXISTS → 409.
    let body = json!({"accountId": "alice", "currency": "USD"}).to_string();
    let (status, _, text) = request(gw, "POST", "/v1/accounts", Some(&body), &[]).await;
    assert_eq!(status, 409, "{text}");
    // INVALID_ARGUMENT from the service → 400 with BadRequest.
    let (status, _, text) =
        request(gw, "POST", "/v1/payments", Some(&pay("k3", "bob", -1)), &[]).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(parse(&text)["code"], 3);
    detail(&parse(&text), "BadRequest");
    // An error before the first streamed message is a real HTTP status.
    let (status, _, text) = request(gw, "GET", "/v1/accounts/nobody/payments", None, &[]).await;
    println!("list of an unknown account: {status} {text}");
    assert_eq!(status, 404, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "ACCOUNT_NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_4xx_with_a_json_explanation() {
    let (gw, _db) = start().await;
    /// Method, path, body, headers, expected status, a phrase of the message.
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static [(&'static str, &'static str)],
        u16,
        &'static str,
    );
    let cases: [Case; 7] = [
        (
            "GET",
            "/v1/nowhere",
            None,
            &[],
            404,
            "no route for GET /v1/nowhere",
        ),
        ("DELETE", "/v1/accounts/alice", None, &[], 405, "takes GET"),
        (
            "POST",
            "/v1/accounts",
            Some("{not json"),
            &[],
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/accounts",
            Some(r#"{"currency": 5}"#),
            &[],
            400,
            "currency",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("currency=USD"),
            &[("content-type", "application/x-www-form-urlencoded")],
            415,
            "must be JSON",
        ),
        (
            "GET",
            "/v1/accounts/alice",
            None,
            &[("grpc-timeout", "soon")],
            400,
            "Grpc-Timeout",
        ),
        (
            "GET",
            "/v1/accounts/%zz",
            None,
            &[],
            400,
            "not valid percent-encoded",
        ),
    ];
    for (method, path, body, headers, expected, hint) in cases {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        let has_type = all.iter().any(|(name, _)| *name == "content-type");
        let (status, response_headers, text) = if has_type {
            // Send the body with its own content type.
            let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut request = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "x");
            for (name, value) in all.drain(..) {
                request = request.header(name, value);
            }
            let request = request
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.unwrap().to_owned(),
                )))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let text =
                String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
            (parts.status.as_u16(), parts.headers, text)
        } else {
            request(gw, method, path, body, &all).await
        };
        assert_eq!(status, expected, "{method} {path}: {text}");
        assert_eq!(response_headers["content-type"], "application/json");
        let message = parse(&text)["message"].as_str().unwrap().to_owned();
        assert!(message.contains(hint), "{method} {path}: {message}");
    }
    // A body over the limit is 413.
    let big = format!(r#"{{"accountId": "{}"}}"#, "x".repeat(5 * 1024 * 1024));
    let (status, _, text) = request(gw, "POST", "/v1/accounts", Some(&big), &[]).await;
    assert_eq!(status, 413, "{}", &text[..text.len().min(200)]);
}
