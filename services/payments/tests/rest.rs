//! The payments service over REST/JSON through keel-gateway, as curl would use it: every
//! route of payments.proto's `google.api.http` rules over real HTTP/1.1, business errors with
//! their HTTP statuses and details, idempotent replays, list pages, and streams as NDJSON.

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
    start_with(GatewayOptions::default()).await
}

/// [`start`] with gateway options.
async fn start_with(options: GatewayOptions) -> (SocketAddr, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await;
    let grpc = common::api::serve_payments_at(Payments::new(db.store.clone(), 1000)).await;
    let mut pool = prost_reflect::DescriptorPool::decode(payments::FILE_DESCRIPTOR_SET).unwrap();
    keel::dynamic::add_standard(&mut pool);
    let channel = keel::client::Channel::new(&format!("dns:///{grpc}")).unwrap();
    let gateway = Gateway::new(pool, channel, options).unwrap();
    let mut config = keel::config::ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let server = keel::server::HttpServer::bind(config, "gateway", gateway)
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(std::future::pending()));
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

/// Opens accounts `(id, currency)` over REST.
async fn open_accounts(addr: SocketAddr, accounts: &[(&str, &str)]) {
    for (id, currency) in accounts {
        let body = json!({"accountId": id, "currency": currency}).to_string();
        let (status, _, text) = request(addr, "POST", "/v1/accounts", Some(&body), &[]).await;
        assert_eq!(status, 200, "{text}");
    }
}

/// Deposits `amount` minor units into `account` over REST.
async fn deposit(addr: SocketAddr, account: &str, amount: i64) {
    let body =
        json!({"amountMinor": amount.to_string(), "idempotencyKey": format!("dep-{account}")});
    let path = format!("/v1/accounts/{account}:deposit");
    let (status, _, text) = request(addr, "POST", &path, Some(&body.to_string()), &[]).await;
    assert_eq!(status, 200, "{text}");
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

    // GET /v1/accounts/{account_id}/payments: one page, as JSON.
    let (status, headers, text) =
        request(gw, "GET", "/v1/accounts/alice/payments", None, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    let page = parse(&text);
    assert_eq!(page["payments"].as_array().unwrap().len(), 1, "{text}");
    assert_eq!(page["payments"][0]["paymentId"], payment_id.as_str());
    assert!(page.get("nextPageToken").is_none(), "the last page: {text}");
}

/// `GET /v1/accounts/{account_id}/payments?page_size=N&page_token=T` pages through an
/// account, the token passed back as it came (URL-safe, nothing to escape); a bad size or
/// token is a 400 whose BadRequest names the field, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_over_rest_by_page_size_and_page_token() {
    let (gw, _db) = start().await;
    open_accounts(gw, &[("alice", "USD"), ("bob", "USD")]).await;
    deposit(gw, "alice", 1000).await;
    let mut made = Vec::new();
    for n in 0..5 {
        let pay = json!({"idempotencyKey": format!("p{n}"), "payerAccountId": "alice",
                         "payeeAccountId": "bob", "amountMinor": "10", "currency": "USD"});
        let (status, _, text) =
            request(gw, "POST", "/v1/payments", Some(&pay.to_string()), &[]).await;
        assert_eq!(status, 200, "{text}");
        made.push(parse(&text)["payment"]["paymentId"].clone());
    }

    // Query parameters by their proto names, or their JSON names.
    let mut listed = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/v1/accounts/bob/payments?page_size=2".to_owned();
    loop {
        let (status, _, text) = request(gw, "GET", &path, None, &[]).await;
        assert_eq!(status, 200, "{path}: {text}");
        let page = parse(&text);
        let payments = page["payments"].as_array().unwrap();
        sizes.push(payments.len());
        listed.extend(payments.iter().map(|p| p["paymentId"].clone()));
        let Some(token) = page["nextPageToken"].as_str() else {
            break;
        };
        path = format!("/v1/accounts/bob/payments?pageSize=2&pageToken={token}");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(listed, made, "each payment once, oldest first");

    let first = request(
        gw,
        "GET",
        "/v1/accounts/alice/payments?page_size=1",
        None,
        &[],
    )
    .await;
    let token = parse(&first.2)["nextPageToken"]
        .as_str()
        .unwrap()
        .to_owned();
    for (query, field) in [
        ("page_size=-1", "page_size"),
        ("page_token=garbage", "page_token"),
        ("page_token=AQ%2B%2F%3D", "page_token"),
        (&format!("page_token={token}")[..], "page_token"), // alice's token for bob
    ] {
        let path = format!("/v1/accounts/bob/payments?{query}");
        let (status, headers, text) = request(gw, "GET", &path, None, &[]).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert_eq!(headers["content-type"], "application/json");
        let body = parse(&text);
        assert_eq!(body["code"], 3, "{text}");
        let violations = &detail(&body, "BadRequest")["fieldViolations"];
        assert_eq!(violations[0]["field"], field, "{path}: {text}");
    }
    // Out of int32's range: refused by the gateway, before the service.
    let path = "/v1/accounts/bob/payments?page_size=99999999999";
    let (status, _, text) = request(gw, "GET", path, None, &[]).await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_errors_keep_their_http_status_and_details() {
    let (gw, _db) = start().await;
    open_accounts(gw, &[("alice", "USD"), ("bob", "USD"), ("yen", "JPY")]).await;
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
    // Money in, one payment, then the errors that follow from it.
    deposit(gw, "alice", 1000).await;
    let (status, _, text) = request(
        gw,
        "POST",
        "/v1/payments",
        Some(&pay("p1", "bob", 100)),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let payment_id = parse(&text)["payment"]["paymentId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The same key with other parameters: FAILED_PRECONDITION → 400.
    let (status, _, text) = request(
        gw,
        "POST",
        "/v1/payments",
        Some(&pay("p1", "bob", 101)),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "IDEMPOTENCY_KEY_REUSED"
    );
    // Refunding more than was paid: 400.
    let refund = json!({"amountMinor": "500", "idempotencyKey": "r1"}).to_string();
    let path = format!("/v1/payments/{payment_id}:refund");
    let (status, _, text) = request(gw, "POST", &path, Some(&refund), &[]).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "REFUND_EXCEEDS_PAYMENT"
    );
    // An unknown payment: 404.
    let (status, _, text) = request(gw, "GET", "/v1/payments/pay_nope", None, &[]).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "PAYMENT_NOT_FOUND"
    );

    // Listing an unknown account: 404.
    let (status, _, text) = request(gw, "GET", "/v1/accounts/nobody/payments", None, &[]).await;
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

/// A gRPC message frame: flag, length, bytes.
fn frame(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    framed
}

/// The data message and the trailer text of a gRPC-Web response body.
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 == 0 {
            messages.push(payload.to_vec());
        } else {
            trailers.push_str(&String::from_utf8_lossy(payload));
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

/// A POST of raw bytes with `content_type`; the status, headers and body bytes.
async fn post_bytes(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    // As grpc-web clients do, ask for answers in the request's encoding.
    let request = http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_binary_and_text_and_plain_grpc_share_the_port() {
    use base64::Engine as _;
    use payments::pb::v1::{CreateAccountRequest, GetAccountRequest, GetAccountResponse};
    use prost::Message as _;

    let (gw, _db) = start().await;
    open_accounts(gw, &[("web", "EUR")]).await;
    let get = GetAccountRequest {
        account_id: "web".into(),
    };
    let path = "/payments.v1.AccountService/GetAccount";

    // gRPC-Web, binary, over HTTP/1.1.
    let (status, headers, body) =
        post_bytes(gw, path, "application/grpc-web+proto", frame(&get)).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web")
    );
    let (messages, trailers) = unframe(&body);
    let account = GetAccountResponse::decode(&messages[0][..])
        .unwrap()
        .account
        .unwrap();
    assert_eq!(
        (account.account_id.as_str(), account.currency.as_str()),
        ("web", "EUR")
    );
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // gRPC-Web, text (base64).
    let text = base64::engine::general_purpose::STANDARD.encode(frame(&get));
    let (status, _, body) =
        post_bytes(gw, path, "application/grpc-web-text", text.into_bytes()).await;
    assert_eq!(status, 200);
    // Each frame is its own base64 chunk (padding may end one mid-body).
    let text = String::from_utf8(body).unwrap();
    let mut decoded = Vec::new();
    let mut chunk = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        chunk.push(c);
        if c == '=' && chars.peek() != Some(&'=') || chars.peek().is_none() {
            decoded.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(&chunk)
                    .unwrap(),
            );
            chunk.clear();
        }
    }
    let (messages, _) = unframe(&decoded);
    assert_eq!(
        GetAccountResponse::decode(&messages[0][..])
            .unwrap()
            .account
            .unwrap()
            .account_id,
        "web"
    );

    // A gRPC-Web error: trailers-only, so the status is in the headers.
    let missing = GetAccountRequest {
        account_id: "nobody".into(),
    };
    let (status, headers, body) =
        post_bytes(gw, path, "application/grpc-web+proto", frame(&missing)).await;
    assert_eq!(status, 200);
    let (_, trailers) = unframe(&body);
    assert!(
        headers.get("grpc-status").is_some_and(|code| code == "5")
            || trailers.contains("grpc-status:5"),
        "{headers:?} {trailers}"
    );

    // Plain gRPC (h2c) on the same port, through Keel's client.
    let channel = keel::client::Channel::new(&format!("dns:///{gw}")).unwrap();
    let mut accounts = payments::pb::v1::account_service_client::AccountServiceClient::new(channel);
    let created = accounts
        .create_account(CreateAccountRequest {
            account_id: "grpc".into(),
            currency: "USD".into(),
        })
        .await
        .unwrap();
    assert_eq!(created.into_inner().account.unwrap().account_id, "grpc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_for_allowed_origins() {
    let options = GatewayOptions {
        cors: Some(keel_gateway::CorsOptions {
            allowed_origins: vec!["https://app.example".into()],
            max_age: Some(std::time::Duration::from_secs(600)),
        }),
        ..GatewayOptions::default()
    };
    let (gw, _db) = start_with(options).await;
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-grpc-web,content-type"),
    ];
    let (status, headers, _) = request(gw, "OPTIONS", "/v1/accounts", None, &preflight).await;
    assert!((200..300).contains(&status), "{status}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(headers["access-control-max-age"], "600");

    let (_, headers, _) = request(
        gw,
        "GET",
        "/v1/accounts/nobody",
        None,
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("grpc-status")
    );

    let (_, headers, _) = request(
        gw,
        "GET",
        "/v1/accounts/nobody",
        None,
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "another origin is not allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_get_a_5xx() {
    let (gw, _db) = start().await;
    open_accounts(gw, &[("alice", "USD")]).await;
    let paths = [
        "/v1/accounts",
        "/v1/accounts/alice",
        "/v1/accounts/alice:deposit",
        "/v1/accounts/alice/payments",
        "/v1/payments",
        "/v1/payments/p%2F1",
        "/v1/payments/x:refund",
        "/v1/payments:batch",
        "/v1/payments:stream",
        "/v1/%zz/",
        "/",
    ];
    let pieces = [
        "{",
        "}",
        "\"amountMinor\"",
        ":",
        "-1",
        "\"9223372036854775808\"",
        "\"USD\"",
        ",",
        "\"idempotencyKey\"",
        "\"k\"",
        "[",
        "]",
        "null",
        "true",
        "\"currency\"",
        "\"accountId\"",
        "\"payerAccountId\"",
        "\"alice\"",
        "1e999",
        "\"\\u0000\"",
        "\"metadata\"",
    ];
    let queries = [
        "",
        "?account_id=alice",
        "?page_size=-5",
        "?page_size=2&page_token=AQ",
        "?page_token=%zz",
        "?x=%zz",
        "?amount_minor=abc",
        "?a.b.c=1&a=2",
        "?currency=%00",
    ];
    let mut state = 0x5eed_u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    for _ in 0..400 {
        let method = ["GET", "POST", "PATCH", "DELETE"][next(4)];
        let path = format!(
            "{}{}",
            paths[next(paths.len())],
            queries[next(queries.len())]
        );
        let body: String = (0..next(12)).map(|_| pieces[next(pieces.len())]).collect();
        let body = (method != "GET").then_some(body.as_str());
        let (status, _, text) = request(gw, method, &path, body, &[]).await;
        assert!(status < 500, "{method} {path} {body:?} → {status} {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_rest_and_grpc_share_the_services_port() {
    use payments::pb::v1::GetAccountRequest;

    let db = TestDb::new(Backend::Sqlite).await;
    let port = common::api::serve_payments_with_rest(Payments::new(db.store.clone(), 1000)).await;

    // REST over HTTP/1.1 on the gRPC port.
    let body = json!({"accountId": "both", "currency": "USD"}).to_string();
    let (status, _, text) = request(port, "POST", "/v1/accounts", Some(&body), &[]).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = request(port, "GET", "/v1/accounts/none", None, &[]).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(
        detail(&parse(&text), "ErrorInfo")["reason"],
        "ACCOUNT_NOT_FOUND"
    );

    // gRPC (h2c) on the same port sees what REST created.
    let channel = keel::client::Channel::new(&format!("dns:///{port}")).unwrap();
    let mut accounts = payments::pb::v1::account_service_client::AccountServiceClient::new(channel);
    let account = accounts
        .get_account(GetAccountRequest {
            account_id: "both".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(account.currency, "USD");

    // gRPC-Web too.
    let get = GetAccountRequest {
        account_id: "both".into(),
    };
    let (status, _, body) = post_bytes(
        port,
        "/payments.v1.AccountService/GetAccount",
        "application/grpc-web+proto",
        frame(&get),
    )
    .await;
    assert_eq!(status, 200);
    let (messages, trailers) = unframe(&body);
    assert_eq!(messages.len(), 1);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_429_with_quota_and_retry_details() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = common::api::serve_payments_with_rest(Payments::new(db.store.clone(), 1)).await;
    open_accounts(port, &[("alice", "USD"), ("bob", "USD")]).await;
    deposit(port, "alice", 1000).await;
    let mut limited = None;
    for n in 0..10 {
        let pay = json!({"idempotencyKey": format!("k{n}"), "payerAccountId": "alice",
                         "payeeAccountId": "bob", "amountMinor": 1, "currency": "USD"})
        .to_string();
        let (status, _, text) = request(port, "POST", "/v1/payments", Some(&pay), &[]).await;
        if status != 200 {
            limited = Some((status, text));
            break;
        }
    }
    let (status, text) = limited.expect("one payment a second: the second is limited");
    assert_eq!(status, 429, "{text}");
    let body = parse(&text);
    assert_eq!(detail(&body, "ErrorInfo")["reason"], "RATE_LIMITED");
    detail(&body, "QuotaFailure");
    detail(&body, "RetryInfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_bidi_streams_take_one_json_object_per_message() {
    let (gw, _db) = start().await;
    open_accounts(gw, &[("alice", "USD"), ("bob", "USD")]).await;
    deposit(gw, "alice", 1000).await;
    let item = |key: &str, amount: i64| {
        json!({"request": {"idempotencyKey": key, "payerAccountId": "alice",
               "payeeAccountId": "bob", "amountMinor": amount, "currency": "USD"}})
        .to_string()
    };
    // Client streaming: three messages, one per line; the third overdraws.
    let body = [item("b1", 100), item("b2", 200), item("b3", 5000)].join("\n");
    let (status, _, text) = request(gw, "POST", "/v1/payments:batch", Some(&body), &[]).await;
    assert_eq!(status, 200, "{text}");
    let batch = parse(&text);
    assert_eq!(
        (batch["accepted"].as_u64(), batch["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{batch}"
    );
    assert_eq!(batch["results"].as_array().unwrap().len(), 3);

    // Bidi streaming: objects back to back, one NDJSON result line per message.
    let body = format!("{}{}", item("s1", 10), item("s2", 20));
    let (status, headers, text) =
        request(gw, "POST", "/v1/payments:stream", Some(&body), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = text.lines().map(parse).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[1]["result"]["result"]["index"], 1, "{text}");
}
