//! `auth.*` over real connections: bearer tokens checked against a watched JWKS file, and
//! a watched grpc-go authz policy, for gRPC calls and for REST calls through keel-gateway
//! served in-process on the same port.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestServer;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use keel::authz::testing::{self, TestIssuer};
use keel::error::Details;
use keel::server::{GrpcStack, HttpService};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_test_support::eventually_async;
use serde_json::{Value, json};
use tonic::Code;
use tower::util::BoxCloneSyncService;

const ISSUER: &str = "https://issuer.keel.test";
const AUDIENCE: &str = "greeter";

/// A directory for one test's files, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keel-auth-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `name` atomically (a temporary file renamed over it), as rotation tools do.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let temporary = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The REST face: helloworld.Greeter's `POST /v1/hello` through keel-gateway, calling the
/// server's own stack in-process.
fn rest(grpc: GrpcStack) -> HttpService {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler =
        protox::Compiler::new([root.join("tests/auth"), root.join("../../proto")]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("greeter_http.proto").unwrap();
    let pool =
        prost_reflect::DescriptorPool::decode(&*compiler.encode_file_descriptor_set()).unwrap();
    let gateway =
        keel_gateway::Gateway::new(pool, grpc, keel_gateway::GatewayOptions::default()).unwrap();
    BoxCloneSyncService::new(
        tower::ServiceExt::<http::Request<tonic::body::Body>>::map_response(
            gateway,
            |response: http::Response<axum::body::Body>| response.map(tonic::body::Body::new),
        ),
    )
}

/// A server with the Greeter, its REST face and `auth` as configured by `set`.
async fn start(set: impl FnOnce(&mut keel::config::AuthConfig)) -> TestServer {
    let mut config = common::config();
    set(&mut config.auth);
    TestServer::start_with(config, |builder| builder.http_fallback(rest)).await
}

/// SayHello over gRPC with `headers`; the status code and, when refused, the reason.
async fn say_hello(server: &TestServer, headers: &[(&str, &str)]) -> (Code, Option<String>) {
    let mut client = GreeterClient::new(server.channel().await);
    let mut request = tonic::Request::new(HelloRequest {
        name: "keel".into(),
    });
    for (key, value) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()).unwrap();
        request.metadata_mut().insert(key, value.parse().unwrap());
    }
    match client.say_hello(request).await {
        Ok(_) => (Code::Ok, None),
        Err(status) => (
            status.code(),
            Details::from_status(&status).reason().map(str::to_owned),
        ),
    }
}

/// `POST /v1/hello` over HTTP/1.1 with `headers`; the HTTP status and the JSON body.
async fn post_hello(server: &TestServer, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, body) = post_hello_challenged(server, headers).await;
    (status, body)
}

/// [`post_hello`], with the answer's `WWW-Authenticate` header.
async fn post_hello_challenged(
    server: &TestServer,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::post("/v1/hello")
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(r#"{"name": "keel"}"#));
    let response = sender
        .send_request(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenges: Vec<String> = response
        .headers()
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    assert!(challenges.len() <= 1, "{challenges:?}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, challenges.into_iter().next(), body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_over_grpc_and_401_over_rest() {
    let files = Files::new("tokens");
    let (key, stranger) = (TestIssuer::ed25519("k1"), TestIssuer::ed25519("k2"));
    let jwks = files.write("jwks.json", &testing::jwks(&[&key]));
    let server = start(|auth| {
        auth.jwks = jwks;
        auth.issuer = ISSUER.into();
        auth.audience = AUDIENCE.into();
    })
    .await;

    let now = testing::now();
    let valid = testing::claims(ISSUER, AUDIENCE, "alice");
    let with = |field: &str, value: Value| {
        let mut claims = valid.clone();
        claims[field] = value;
        key.sign(&claims)
    };
    let cases = [
        ("TOKEN_EXPIRED", with("exp", json!(now - 600))),
        ("TOKEN_NOT_YET_VALID", with("nbf", json!(now + 600))),
        ("TOKEN_WRONG_AUDIENCE", with("aud", json!("ledger"))),
        (
            "TOKEN_WRONG_ISSUER",
            with("iss", json!("https://evil.test")),
        ),
        ("TOKEN_BAD_SIGNATURE", stranger.forge_as(&key, &valid)),
        (
            "TOKEN_UNSUPPORTED_ALGORITHM",
            testing::unsigned("k1", &valid),
        ),
        (
            "TOKEN_UNSUPPORTED_ALGORITHM",
            testing::hmac("k1", b"k1", &valid),
        ),
    ];
    for (reason, token) in &cases {
        let header = bearer(token);
        let headers = [("authorization", header.as_str())];
        assert_eq!(
            say_hello(&server, &headers).await,
            (Code::Unauthenticated, Some((*reason).to_owned())),
            "gRPC, {reason}"
        );
        let (status, challenge, body) = post_hello_challenged(&server, &headers).await;
        assert_eq!(status, 401, "REST, {reason}: {body}");
        assert_eq!(body["code"], 16, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("WWW-Authenticate: Bearer error="),
            "{body}"
        );
        // RFC 6750's challenge, as a header too.
        let challenge = challenge.unwrap_or_else(|| panic!("REST, {reason}: no challenge"));
        assert!(
            challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#),
            "{reason}: {challenge}"
        );
        if *reason == "TOKEN_EXPIRED" {
            assert_eq!(
                challenge,
                r#"Bearer error="invalid_token", error_description="the token has expired: get a new one""#
            );
        }
    }
    assert_eq!(
        say_hello(&server, &[]).await,
        (Code::Unauthenticated, Some("TOKEN_MISSING".into()))
    );
    // No token at all: a bare challenge, without an error code (RFC 6750 §3.1).
    let (status, challenge, body) = post_hello_challenged(&server, &[]).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer")),
        "{body}"
    );

    let good = bearer(&key.sign(&valid));
    assert_eq!(
        say_hello(&server, &[("authorization", &good)]).await,
        (Code::Ok, None)
    );
    let (status, body) = post_hello(&server, &[("authorization", &good)]).await;
    assert_eq!(
        (status, &body["message"]),
        (200, &json!("Hello keel")),
        "{body}"
    );

    let refused = (cases.len() + 1) * 2;
    assert_eq!(
        server
            .metric(r#"keel_auth_decisions_total{outcome="unauthenticated"}"#)
            .await,
        Some(refused as f64)
    );
    assert_eq!(
        server
            .metric(r#"keel_auth_decisions_total{outcome="allowed"}"#)
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_rotated_jwks_is_picked_up_without_a_restart() {
    let files = Files::new("rotation");
    let (old, new) = (TestIssuer::es256("2024"), TestIssuer::ed25519("2025"));
    let jwks = files.write("jwks.json", &testing::jwks(&[&old]));
    let server = start(|auth| {
        auth.jwks = jwks;
        auth.issuer = ISSUER.into();
        auth.audience = AUDIENCE.into();
        // Reloads only when asked, so the test knows when the new keys apply.
        auth.reload_interval = Duration::ZERO;
    })
    .await;
    let auth = server.auth.clone().expect("auth is configured");

    let claims = testing::claims(ISSUER, AUDIENCE, "alice");
    let (old_token, new_token) = (bearer(&old.sign(&claims)), bearer(&new.sign(&claims)));
    assert_eq!(
        say_hello(&server, &[("authorization", &old_token)]).await.0,
        Code::Ok
    );
    assert_eq!(
        say_hello(&server, &[("authorization", &new_token)]).await,
        (Code::Unauthenticated, Some("TOKEN_UNKNOWN_KEY".into()))
    );

    files.write("jwks.json", &testing::jwks(&[&new]));
    tokio::task::spawn_blocking(move || auth.reload())
        .await
        .unwrap();
    assert_eq!(
        say_hello(&server, &[("authorization", &old_token)]).await,
        (Code::Unauthenticated, Some("TOKEN_UNKNOWN_KEY".into()))
    );
    assert_eq!(
        say_hello(&server, &[("authorization", &new_token)]).await.0,
        Code::Ok
    );
    assert_eq!(
        post_hello(&server, &[("authorization", &new_token)])
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .metric(r#"keel_auth_reloads_total{file="jwks",outcome="reloaded"}"#)
            .await,
        Some(1.0)
    );
}

/// Denies calls with `x-block`, allows SayHello to alice-like subjects, allows
/// SayHelloAgain to any caller with a certificate (so to no plaintext caller), and
/// lets gRPC health checks through.
const POLICY: &str = r#"{
    "name": "greeter",
    "deny_rules": [
        {"name": "blocked", "request": {"headers": [{"key": "X-Block", "values": ["*"]}]}}
    ],
    "allow_rules": [
        {"name": "alices", "source": {"claims": [{"key": "sub", "values": ["alice*"]}]},
         "request": {"paths": ["/helloworld.Greeter/SayHello"]}},
        {"name": "workloads", "source": {"principals": ["*"]},
         "request": {"paths": ["*/SayHelloAgain"]}},
        {"name": "health", "request": {"paths": ["/grpc.health.v1.Health/*"]}}
    ]
}"#;

#[tokio::test]
async fn the_policy_decides_and_survives_a_bad_reload() {
    let files = Files::new("policy");
    let key = TestIssuer::ed25519("k1");
    let jwks = files.write("jwks.json", &testing::jwks(&[&key]));
    let policy = files.write("policy.json", POLICY);
    let server = start(|auth| {
        auth.jwks = jwks;
        auth.issuer = ISSUER.into();
        auth.audience = AUDIENCE.into();
        auth.require_token = false;
        auth.policy = policy;
        auth.reload_interval = Duration::from_millis(20);
    })
    .await;
    let token = |subject: &str| bearer(&key.sign(&testing::claims(ISSUER, AUDIENCE, subject)));
    let (alice, bob) = (token("alice-1"), token("bob"));

    assert_eq!(
        say_hello(&server, &[("authorization", &alice)]).await.0,
        Code::Ok
    );
    let denied = (Code::PermissionDenied, Some("POLICY_DENIED".to_owned()));
    assert_eq!(say_hello(&server, &[("authorization", &bob)]).await, denied);
    assert_eq!(say_hello(&server, &[]).await, denied, "no token: no claims");
    assert_eq!(
        say_hello(&server, &[("authorization", &alice), ("x-block", "1")]).await,
        denied,
        "deny beats allow"
    );

    // The refusal names the policy and the deciding rule, and nothing else of the policy.
    let mut client = GreeterClient::new(server.channel().await);
    let mut request = tonic::Request::new(HelloRequest { name: "k".into() });
    request
        .metadata_mut()
        .insert("authorization", alice.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-block", "1".parse().unwrap());
    let status = client.say_hello(request).await.unwrap_err();
    assert_eq!(
        status.message(),
        r#"denied by rule "blocked" of authorization policy "greeter""#
    );
    let details = Details::from_status(&status);
    assert_eq!(details.metadata()["rule"], "blocked");
    assert_eq!(details.metadata()["policy"], "greeter");
    let status = client
        .say_hello_again(HelloRequest { name: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "plaintext has no principal"
    );
    assert_eq!(
        status.message(),
        r#"no rule of authorization policy "greeter" allows this call"#
    );
    let mut health = keel::health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(keel::health::pb::HealthCheckRequest::default())
        .await
        .expect("health is allowed by path");

    // REST: the same layer, 403 with the status as JSON.
    let (status, body) = post_hello(&server, &[("authorization", &bob)]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], 7, "{body}");
    assert_eq!(
        post_hello(&server, &[("authorization", &alice)]).await.0,
        200
    );

    // A broken policy is refused and counted; the old one stays in force.
    files.write(
        "policy.json",
        r#"{"name": "greeter", "allow_rules": [{"nam": "typo"}]}"#,
    );
    let failed = r#"keel_auth_reloads_total{file="policy",outcome="failed"}"#;
    eventually_async(
        "the broken policy is counted",
        Duration::from_secs(5),
        || async { server.metric(failed).await == Some(1.0) },
    )
    .await;
    assert_eq!(
        say_hello(&server, &[("authorization", &alice)]).await.0,
        Code::Ok
    );
    assert_eq!(say_hello(&server, &[("authorization", &bob)]).await, denied);

    // A good one replaces it.
    files.write(
        "policy.json",
        r#"{"name": "bobs", "allow_rules": [{"name": "bob",
            "source": {"claims": [{"key": "sub", "values": ["bob"]}]}}]}"#,
    );
    eventually_async(
        "the new policy is in force",
        Duration::from_secs(5),
        || async { say_hello(&server, &[("authorization", &bob)]).await.0 == Code::Ok },
    )
    .await;
    assert_eq!(
        say_hello(&server, &[("authorization", &alice)]).await,
        denied
    );
    assert_eq!(server.metric(failed).await, Some(1.0), "counted once");
    assert!(
        server
            .metric(r#"keel_auth_decisions_total{outcome="denied"}"#)
            .await
            .unwrap()
            >= 7.0
    );
}

#[tokio::test]
async fn a_server_does_not_start_without_its_policy() {
    let files = Files::new("startup");
    let policy = files.write("policy.json", r#"{"name": "p", "allow_rules": []}"#);
    let mut config = common::config();
    config.auth.policy = policy.clone();
    let error = keel::Server::builder(config.clone())
        .bind()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "auth.policy = {}: allow_rules: is not present (a policy without allow rules \
             refuses every call)",
            policy.display()
        )
    );
    // An HTTP server has no gRPC stack to authorize in: it refuses `auth.*`.
    let error = keel::server::HttpServer::bind(config, "gateway", ())
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("invalid setting auth = "),
        "{error}"
    );
}
