//! Why a REST request got no answer from the service, and the HTTP answer it gets instead:
//! one variant per kind of failure, each with its HTTP status and a `google.rpc.Status` JSON
//! body saying what was wrong (with every detail and its `@type`); a 401 also carries its
//! `WWW-Authenticate` challenge (`challenge.rs`).

use axum::body::Body;
use bytes::Bytes;
use http::header::{ALLOW, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use prost_reflect::DescriptorPool;
use serde_json::Value;
use tonic::{Code, Status};

use crate::binding::BindError;
use crate::challenge::challenge;
use crate::response::json_response;
use crate::router::Miss;
use crate::status::http_status;

/// Why a request got no answer from the service.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The service (or the transport) answered with an error status.
    Status(Status),
    /// The request does not fit the method.
    Bind(BindError),
    /// No route, or not for this method.
    Route(StatusCode, Status, Option<Vec<Method>>),
    /// The body is over the limit.
    TooLarge(usize),
    /// The body did not arrive within the server's body timeout: 408 Request Timeout, the
    /// client's slowness (not 504, which would blame an upstream).
    TooSlow(String),
    /// Another client mistake, with its HTTP status.
    Client(StatusCode, String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<BindError> for Failure {
    fn from(error: BindError) -> Self {
        Self::Bind(error)
    }
}

impl Failure {
    /// No route for `method` and `path`: 404, 405 with the methods the path takes, or 400.
    pub(crate) fn route(miss: Miss, method: &Method, path: &str) -> Self {
        match miss {
            Miss::NotFound => Self::Route(
                StatusCode::NOT_FOUND,
                Status::not_found(format!("no route for {method} {path}")),
                None,
            ),
            Miss::MethodNotAllowed(allowed) => Self::Route(
                StatusCode::METHOD_NOT_ALLOWED,
                Status::new(
                    Code::Unimplemented,
                    format!("{path} does not take {method}; it takes {}", join(&allowed)),
                ),
                Some(allowed),
            ),
            Miss::BadEncoding(reason) => Self::Client(StatusCode::BAD_REQUEST, reason),
        }
    }

    /// A client mistake answered with `status`.
    pub(crate) fn client(status: StatusCode, message: String) -> Self {
        Self::Client(status, message)
    }

    /// The gateway's own fault: INTERNAL, HTTP 500.
    pub(crate) fn internal(message: &str) -> Self {
        Self::Status(Status::internal(message.to_owned()))
    }

    /// The HTTP answer: the status's JSON with the HTTP status of its kind. `token_sent`
    /// says whether the request carried an `Authorization` header, for the challenge of a
    /// 401.
    pub(crate) fn into_response(self, token_sent: bool) -> http::Response<Body> {
        let empty = DescriptorPool::new();
        let (http, status, allow) = match self {
            Self::Status(status) => (http_status(status.code()), status, None),
            Self::Bind(error) => (
                StatusCode::BAD_REQUEST,
                Status::invalid_argument(error.to_string()),
                None,
            ),
            Self::Route(http, status, allow) => (http, status, allow),
            Self::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Status::resource_exhausted(format!(
                    "the request body is larger than {limit} bytes"
                )),
                None,
            ),
            Self::TooSlow(message) => (
                StatusCode::REQUEST_TIMEOUT,
                Status::deadline_exceeded(message),
                None,
            ),
            Self::Client(http, message) => (http, Status::invalid_argument(message), None),
        };
        let body = serde_json::to_vec(&status_json(&status, &empty)).unwrap_or_default();
        let mut response = json_response(http, Bytes::from(body));
        if http == StatusCode::UNAUTHORIZED {
            let challenge = challenge(&status, token_sent);
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        if let Some(allow) = allow
            && let Ok(value) = HeaderValue::from_str(&join(&allow))
        {
            response.headers_mut().insert(ALLOW, value);
        }
        response
    }
}

/// A `google.rpc.Status` as JSON: code, message, and every detail with its `@type` (types
/// looked up among the standard ones, then in `pool`).
pub(crate) fn status_json(status: &Status, pool: &DescriptorPool) -> Value {
    keel_dynamic::status_json(status, Some(pool))
}

fn join(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
