//! The OpenAPI document is valid OpenAPI 3.1 by an independent validator (Python
//! `openapi-spec-validator`), not only by our own reading of it, and the gateway serves it at
//! `GET /openapi.json`.

mod common;

use std::convert::Infallible;
use std::io::Write as _;
use std::process::{Command, Stdio};

use http_body_util::BodyExt as _;
use keel_gateway::{ApiInfo, Gateway, GatewayOptions, JsonOptions, Rules, openapi};
use prost_reflect::DescriptorPool;
use serde_json::Value;

use crate::common::{compile, python};

/// The bookstore contract of `testdata/`.
fn bookstore() -> DescriptorPool {
    compile(&["bookstore.proto"])
}

/// Panics with the validator's reason unless `document` is valid OpenAPI 3.1.
fn assert_valid(document: &Value) {
    let mut validator = Command::new(python())
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import OpenAPIV31SpecValidator, validate\n\
             validate(json.load(sys.stdin), cls=OpenAPIV31SpecValidator)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openapi-spec-validator");
    let text = serde_json::to_string_pretty(document).unwrap();
    validator
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = validator.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\n--- document ---\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_bookstore_document_is_valid_openapi_3_1() {
    let rules = Rules::load(&bookstore(), &[]).unwrap();
    for proto_names in [false, true] {
        let json = JsonOptions {
            proto_names,
            ..JsonOptions::default()
        };
        assert_valid(&openapi(&rules, &ApiInfo::new("Bookstore", "1"), json));
    }
}

#[test]
fn odd_templates_make_a_valid_document_too() {
    let rules = Rules::load(&compile(&["bookstore.proto", "odd_templates.proto"]), &[]).unwrap();
    assert_eq!(rules.len(), 7 + 4);
    let document = openapi(&rules, &ApiInfo::default(), JsonOptions::default());
    let paths = &document["paths"];
    for (path, method) in [
        // A second shape of `/v1/{name}`, and a variable for the `*` segment.
        ("/v1/{name_2}", "get"),
        ("/v2/{wildcard1}/files/{name}", "get"),
        ("/v2/{name}", "head"),
        ("/v2/{name}:archive", "put"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path}: {paths:#}"
        );
    }
    assert_valid(&document);
}

/// An upstream that answers every call UNIMPLEMENTED (HTTP 501), so that a request the
/// gateway forwarded instead of answering itself shows.
fn upstream() -> impl tower::Service<
    http::Request<tonic::body::Body>,
    Response = http::Response<tonic::body::Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|_: http::Request<tonic::body::Body>| async {
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(tonic::body::Body::empty())
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    })
}

fn get(path: &str) -> http::Request<String> {
    http::Request::get(path).body(String::new()).unwrap()
}

#[tokio::test]
async fn the_gateway_serves_its_document_at_openapi_json() {
    let gateway = Gateway::new(bookstore(), upstream(), GatewayOptions::default()).unwrap();
    let response = gateway.handle(get("/openapi.json")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let served: Value = serde_json::from_slice(&body).unwrap();
    let expected = openapi(gateway.rules(), &ApiInfo::default(), JsonOptions::default());
    assert_eq!(served, expected);
    assert_eq!(served["info"]["title"], "API");
    assert_valid(&served);

    let response = gateway
        .handle(
            http::Request::post("/openapi.json")
                .body(String::new())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 404, "only GET");

    let options = GatewayOptions {
        openapi: None,
        ..GatewayOptions::default()
    };
    let gateway = Gateway::new(bookstore(), upstream(), options).unwrap();
    assert_eq!(gateway.handle(get("/openapi.json")).await.status(), 404);
}
