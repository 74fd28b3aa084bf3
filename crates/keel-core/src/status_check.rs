//! Checks the status a server sends before tonic reads it, so that no server can crash a
//! client or pass a broken call off as a success.
//!
//! tonic 0.14 trusts its peer here. `Status::from_header_map`, which reads the headers of
//! every response and the trailers at the end of every call, `expect`s
//! `grpc-status-details-bin` to be base64: any server could panic any tonic client (and the
//! process or worker running it) with one bad header. And a call whose response ends with
//! no `grpc-status` at all, no trailers or trailers without it, reads as OK. So Keel checks
//! every response first, as grpc-go's transport does:
//!
//! - `grpc-status-details-bin` that is not base64, not a `google.rpc.Status`, or whose code
//!   is not the one in `grpc-status`: INTERNAL "server sent malformed
//!   grpc-status-details-bin", saying what was wrong and quoting the server's own status;
//! - a `grpc-status` that is not a gRPC code: UNKNOWN "server sent malformed grpc-status";
//! - trailers (or a trailers-only response) without `grpc-status`: UNKNOWN, the code grpc-go
//!   gives a status it never got;
//! - a response stream that ends with no trailers: INTERNAL "server closed the stream
//!   without sending trailers", grpc-go's words.
//!
//! Bad values are replaced in the header map itself (the new status in `grpc-status` and
//! `grpc-message`, the bad details removed), so tonic, and whatever else reads the headers,
//! only ever sees a well-formed status. A response whose HTTP status is not 200 owes no
//! `grpc-status`; tonic maps its HTTP status as the gRPC spec says.
//!
//! Keel's `Channel` (keel-client) checks its responses itself; [`CheckStatus`] puts the
//! same check in front of any other transport (tonic's `Channel`, an in-process service).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tonic::client::GrpcService;
use tonic::{Code, Status};

use crate::code::{code_name, status_of};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// Base64 exactly as tonic decodes `grpc-status-details-bin`: the standard alphabet,
/// padding optional, no stray trailing bits. Whatever this accepts, tonic accepts.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A gRPC transport whose every response has its status checked (see the module docs).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_core::status_check::CheckStatus;
/// use keel_interop::pb::helloworld::{HelloRequest, greeter_client::GreeterClient};
///
/// let channel = tonic::transport::Channel::from_static("https://example.com").connect().await?;
/// let mut greeter = GreeterClient::new(CheckStatus::new(channel));
/// let reply = greeter.say_hello(HelloRequest { name: "world".into() }).await?;
/// # let _ = reply;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CheckStatus<S> {
    inner: S,
}

impl<S> CheckStatus<S> {
    /// `inner`, with every response checked.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for CheckStatus<S>
where
    S: GrpcService<B>,
{
    type Response = http::Response<CheckedBody<S::ResponseBody>>;
    type Error = S::Error;
    type Future = Checking<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Checking {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CheckStatus`].
    pub struct Checking<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for Checking<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<CheckedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().inner.poll(cx));
        Poll::Ready(response.map(check_response))
    }
}

/// Checks the status in `response`'s headers (all of it for a trailers-only response) and
/// wraps its body so that the trailers are checked too.
pub fn check_response<B: Body>(response: http::Response<B>) -> http::Response<CheckedBody<B>> {
    let (mut parts, body) = response.into_parts();
    let owes_status = parts.status == StatusCode::OK;
    // A body already over means these headers end the call: a trailers-only response.
    let ends_call = body.is_end_stream();
    let has_status = check_status(&mut parts.headers, ends_call && owes_status);
    let body = CheckedBody {
        inner: body,
        owes_status,
        settled: has_status || ends_call || !owes_status,
        finished: false,
    };
    http::Response::from_parts(parts, body)
}

/// Makes the status in `headers` well-formed, replacing a malformed one. `ends_call`: these
/// headers end a call that owes a status, so a missing one is an error too. Returns whether
/// `headers` now carry a status.
pub fn check_status(headers: &mut HeaderMap, ends_call: bool) -> bool {
    let Some(value) = headers.get(GRPC_STATUS) else {
        if ends_call {
            replace_status(
                headers,
                Code::Unknown,
                "server ended the call without grpc-status".to_owned(),
            );
        }
        return ends_call;
    };
    let code = Code::from_bytes(value.as_bytes());
    if code == Code::Unknown && value.as_bytes() != b"2" {
        let message = format!(
            "server sent malformed grpc-status {:?}{}",
            String::from_utf8_lossy(value.as_bytes()),
            quoted_message(headers)
        );
        replace_status(headers, Code::Unknown, message);
        return true;
    }
    if let Some(problem) = details_problem(headers, code) {
        let message = format!(
            "server sent malformed grpc-status-details-bin ({problem}) with status {}{}",
            code_name(code),
            quoted_message(headers)
        );
        replace_status(headers, Code::Internal, message);
    }
    true
}

/// What is wrong with the details in `headers`, if anything, for a status of `code`.
fn details_problem(headers: &HeaderMap, code: Code) -> Option<String> {
    let mut values = headers.get_all(GRPC_STATUS_DETAILS).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some("more than one value".to_owned());
    }
    let bytes = match BASE64.decode(value.as_bytes()) {
        Ok(bytes) => bytes,
        Err(error) => return Some(format!("not base64: {error}")),
    };
    let status = match tonic_types::pb::Status::decode(bytes.as_slice()) {
        Ok(status) => status,
        Err(error) => return Some(format!("not a google.rpc.Status: {error}")),
    };
    (status.code != code as i32).then(|| {
        format!(
            "its google.rpc.Status has code {}, grpc-status says {}",
            status.code, code as i32
        )
    })
}

/// `: "the server's message"`, escaped, when the status in `headers` has one.
fn quoted_message(headers: &HeaderMap) -> String {
    match status_of(headers).and_then(|(_, message)| message) {
        Some(message) if !message.is_empty() => format!(": {message:?}"),
        _ => String::new(),
    }
}

/// Puts a status of our own in place of the server's.
fn replace_status(headers: &mut HeaderMap, code: Code, message: String) {
    for name in [GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS] {
        headers.remove(name);
    }
    // Writing only fails on bytes percent-encoding never produces; the code alone remains.
    if Status::new(code, message).add_header(headers).is_err() {
        headers.insert(GRPC_STATUS, HeaderValue::from(code as i32));
    }
}

/// The trailers of a call whose response ended without any.
fn missing_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    replace_status(
        &mut trailers,
        Code::Internal,
        "server closed the stream without sending trailers".to_owned(),
    );
    trailers
}

pin_project_lite::pin_project! {
    /// A response body whose trailers are checked (see the module docs), and which ends
    /// with INTERNAL trailers of its own when the server's stream ended without a status.
    pub struct CheckedBody<B> {
        #[pin]
        inner: B,
        // The response's HTTP status is 200, so the call owes a grpc-status.
        owes_status: bool,
        // The call's status came (or none is owed, or the stream failed): nothing to add.
        settled: bool,
        // The inner body has ended; it is not polled again.
        finished: bool,
    }
}

impl<B: Body> Body for CheckedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    check_status(&mut trailers, *this.owes_status);
                    *this.settled = true;
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            Some(Err(error)) => {
                *this.settled = true;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                *this.finished = true;
                if std::mem::replace(this.settled, true) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::trailers(missing_trailers()))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || (self.settled && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn headers(entries: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in entries {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    /// The status tonic reads from `headers`: code and message.
    fn read(headers: &HeaderMap) -> (Code, String) {
        let status = Status::from_header_map(headers).expect("a status");
        (status.code(), status.message().to_owned())
    }

    fn details(code: Code) -> String {
        let status = tonic_types::pb::Status {
            code: code as i32,
            message: "m".into(),
            details: Vec::new(),
        };
        BASE64.encode(status.encode_to_vec())
    }

    #[test]
    fn well_formed_statuses_pass_unchanged() {
        let good = details(Code::NotFound);
        for entries in [
            &[("grpc-status", &b"0"[..])][..],
            &[("grpc-status", b"2"), ("grpc-message", b"x")],
            &[
                ("grpc-status", b"5"),
                ("grpc-message", b"no%20such"),
                ("grpc-status-details-bin", good.as_bytes()),
                ("x-other", b"1"),
            ],
        ] {
            let before = headers(entries);
            let mut after = before.clone();
            assert!(check_status(&mut after, true));
            assert_eq!(after, before);
        }
        // Headers that do not end the call may carry no status.
        let mut plain = headers(&[("content-type", b"application/grpc")]);
        assert!(!check_status(&mut plain, false));
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn each_malformed_status_becomes_a_clear_one() {
        let check = |entries: &[(&'static str, &[u8])], code: Code, words: &[&str]| {
            let mut map = headers(entries);
            assert!(check_status(&mut map, true));
            let (got, message) = read(&map);
            assert_eq!(got, code, "{message}");
            for word in words {
                assert!(message.contains(word), "{message:?} lacks {word:?}");
            }
        };
        check(
            &[
                ("grpc-status", b"3"),
                ("grpc-message", b"bad%20input"),
                ("grpc-status-details-bin", b"!!not base64!!"),
            ],
            Code::Internal,
            &[
                "malformed grpc-status-details-bin",
                "not base64",
                "InvalidArgument",
                "\"bad input\"",
            ],
        );
        check(
            &[("grpc-status", b"3"), ("grpc-status-details-bin", b"/w")],
            Code::Internal,
            &["not a google.rpc.Status"],
        );
        let other = details(Code::Aborted);
        check(
            &[
                ("grpc-status", b"5"),
                ("grpc-status-details-bin", other.as_bytes()),
            ],
            Code::Internal,
            &["has code 10, grpc-status says 5"],
        );
        let good = details(Code::NotFound);
        check(
            &[
                ("grpc-status", b"5"),
                ("grpc-status-details-bin", good.as_bytes()),
                ("grpc-status-details-bin", good.as_bytes()),
            ],
            Code::Internal,
            &["more than one value"],
        );
        check(
            &[("grpc-status", b"OK"), ("grpc-message", b"%1B[31m")],
            Code::Unknown,
            &["malformed grpc-status \"OK\"", "\\u{1b}[31m"],
        );
        check(
            &[("grpc-message", b"where is my status")],
            Code::Unknown,
            &["without grpc-status"],
        );
    }

    /// Random bytes in every status header, and mutations of well-formed details: tonic
    /// never panics on what the check leaves, which is always a well-formed status.
    #[test]
    fn random_status_headers_always_leave_a_status_tonic_reads() {
        let mut rng = StdRng::seed_from_u64(11);
        let valid = details(Code::NotFound);
        let header_bytes = |rng: &mut StdRng, max_len: usize| -> Vec<u8> {
            // What a header value may hold: visible ASCII, tab, and obs-text.
            let len = rng.random_range(0..max_len);
            (0..len)
                .map(|_| match rng.random_range(0..4) {
                    0 => b'\t',
                    1 => rng.random_range(0x80..=0xff),
                    _ => rng.random_range(0x20..0x7f),
                })
                .collect()
        };
        for round in 0..20_000 {
            let mut map = HeaderMap::new();
            let status = match rng.random_range(0..4) {
                0 => header_bytes(&mut rng, 4),
                _ => rng.random_range(0..20).to_string().into_bytes(),
            };
            map.insert(GRPC_STATUS, HeaderValue::from_bytes(&status).unwrap());
            if rng.random_bool(0.5) {
                let message = header_bytes(&mut rng, 40);
                map.insert(GRPC_MESSAGE, HeaderValue::from_bytes(&message).unwrap());
            }
            let details = match round % 3 {
                0 => header_bytes(&mut rng, 64),
                1 => {
                    let len = rng.random_range(0..64);
                    let raw: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    BASE64.encode(raw).into_bytes()
                }
                _ => {
                    let mut text = valid.clone().into_bytes();
                    let at = rng.random_range(0..text.len());
                    text[at] = rng.random_range(0x20..0x7f);
                    text
                }
            };
            map.insert(
                GRPC_STATUS_DETAILS,
                HeaderValue::from_bytes(&details).unwrap(),
            );

            let ends_call = rng.random_bool(0.5);
            check_status(&mut map, ends_call);
            // tonic reads it without panicking (a message that is not UTF-8 makes it
            // UNKNOWN, tonic's own choice).
            Status::from_header_map(&map).expect("the status stays");
            let code = map.get(GRPC_STATUS).unwrap().as_bytes();
            assert!(
                Code::from_bytes(code) != Code::Unknown || code == b"2",
                "{map:?}"
            );
            if let Some(value) = map.get(GRPC_STATUS_DETAILS) {
                let bytes = BASE64
                    .decode(value.as_bytes())
                    .expect("kept details are base64");
                let decoded = tonic_types::pb::Status::decode(bytes.as_slice()).expect("a Status");
                assert_eq!(decoded.code, Code::from_bytes(code) as i32);
            }
        }
    }

    fn body(frames: Vec<Frame<Bytes>>) -> CheckedBody<impl Body<Data = Bytes, Error = Status>> {
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, Status>));
        let response = http::Response::new(StreamBody::new(stream));
        check_response(response).into_body()
    }

    #[tokio::test]
    async fn a_stream_without_trailers_ends_with_internal_trailers() {
        let collected = body(vec![Frame::data(Bytes::from_static(b"x"))])
            .collect()
            .await
            .unwrap();
        let (code, message) = read(collected.trailers().expect("trailers added"));
        assert_eq!(code, Code::Internal);
        assert_eq!(message, "server closed the stream without sending trailers");

        let mut trailers = HeaderMap::new();
        trailers.insert("x-only", HeaderValue::from_static("1"));
        let collected = body(vec![Frame::trailers(trailers)])
            .collect()
            .await
            .unwrap();
        let trailers = collected.trailers().unwrap();
        assert_eq!(read(trailers).0, Code::Unknown);
        assert_eq!(trailers["x-only"], "1");
    }

    #[tokio::test]
    async fn responses_that_owe_no_status_are_left_to_tonic() {
        let mut response = http::Response::new(http_body_util::Empty::<Bytes>::new());
        *response.status_mut() = StatusCode::NOT_FOUND;
        let checked = check_response(response);
        assert!(checked.headers().is_empty());
        assert!(checked.body().is_end_stream());
        let collected = checked.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_none());
    }
}
