//! REST/JSON transcoding and gRPC-Web for Keel services: one `.proto` contract, driven by
//! its `google.api.http` annotations at run time, without generated gateway code.
//!
//! [`Gateway`] is a tower service in front of any gRPC transport (a Keel `Channel`, or a
//! server's own gRPC stack in-process): it answers REST/JSON by the rules of a descriptor
//! pool ([`Rules`]), passes plain gRPC through and translates gRPC-Web, with CORS when
//! [`GatewayOptions::cors`] asks for it, and serves the routes' OpenAPI 3.1 document
//! ([`openapi()`]) at `GET /openapi.json`. [`ReloadableGateway`] swaps a gateway's routes
//! while it serves. The crate has no listener of its own: serve a gateway on a Keel server's
//! port (`keel::ServerBuilder::http_fallback`) or on `keel::server::HttpServer`.
//!
//! Inside, one module per step: `template` parses the rules' path templates, `router`
//! matches request paths against them with grpc-gateway's precedence, `rules` reads every
//! method's rules from the pool, `request` reads the body and headers, `binding` turns a
//! matched request (path, query, body) into the method's request message (its scalars read
//! by `json` as Go's `protojson` reads them, at every type's extremes), `response` writes
//! the answer as JSON, NDJSON or SSE, `failure` turns what went wrong into an HTTP status and
//! a `google.rpc.Status` body (`status` maps gRPC codes as grpc-gateway does; `challenge`
//! adds RFC 6750's `WWW-Authenticate` to a 401), and `web` holds the gRPC, gRPC-Web and
//! CORS faces.

mod binding;
mod challenge;
mod failure;
mod gateway;
mod json;
mod openapi;
mod percent;
mod reloadable;
mod request;
mod response;
mod router;
mod rules;
mod status;
mod template;
mod web;

pub use binding::JsonOptions;
pub use gateway::{Gateway, GatewayOptions};
pub use openapi::{ApiInfo, openapi};
pub use reloadable::ReloadableGateway;
pub use router::RouteConflict;
pub use rules::{RuleError, Rules};
pub use template::TemplateError;
pub use web::CorsOptions;

#[cfg(test)]
pub(crate) mod testdata {
    //! The bookstore contract of `testdata/`, compiled for the tests, and a scripted
    //! upstream speaking it.

    use std::convert::Infallible;

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use tonic::client::GrpcService;

    /// The pool of `testdata/bookstore.proto` with its imports, compiled once.
    pub fn bookstore() -> DescriptorPool {
        static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
        POOL.get_or_init(compile).clone()
    }

    fn compile() -> DescriptorPool {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut compiler =
            protox::Compiler::new([format!("{root}/testdata"), format!("{root}/../../proto")])
                .expect("include paths");
        compiler.include_imports(true);
        compiler
            .open_file("bookstore.proto")
            .expect("bookstore.proto compiles");
        compiler.descriptor_pool()
    }

    /// An upstream whose every call answers `messages` Books, then status `code` in the
    /// trailers (or, with no message, in a trailers-only response).
    pub fn scripted(
        messages: usize,
        code: i32,
    ) -> impl GrpcService<
        tonic::body::Body,
        ResponseBody = tonic::body::Body,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        tower::service_fn(move |_: http::Request<tonic::body::Body>| async move {
            let pool = crate::testdata::bookstore();
            let book = pool.get_message_by_name("bookstore.v1.Book").unwrap();
            let mut message = DynamicMessage::new(book);
            message.set_field_by_name("title", prost_reflect::Value::String("Dune".into()));
            let bytes = message.encode_to_vec();
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
            for _ in 0..messages {
                let mut framed = vec![0];
                framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                framed.extend_from_slice(&bytes);
                frames.push(Ok(Frame::data(Bytes::from(framed))));
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.to_string().parse().unwrap());
            trailers.insert("grpc-message", "broke".parse().unwrap());
            trailers.insert("x-checked", "yes".parse().unwrap());
            let mut response = http::Response::builder().header("content-type", "application/grpc");
            if messages == 0 {
                for (name, value) in &trailers {
                    response = response.header(name, value);
                }
            } else {
                frames.push(Ok(Frame::trailers(trailers)));
            }
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, Infallible>(response.body(tonic::body::Body::new(body)).unwrap())
        })
    }
}
