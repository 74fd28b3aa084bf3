//! REST/JSON transcoding and gRPC-Web for Keel services: one `.proto` contract, driven by
//! its `google.api.http` annotations at run time, without generated gateway code.
//!
//! So far: [`template`] parses the rules' path templates, [`router`] matches request paths
//! against them with grpc-gateway's precedence, [`rules`] reads every method's rules from a
//! descriptor pool, [`binding`] turns a matched request (path, query, body) into the
//! method's request message, and [`status`] maps gRPC codes to HTTP statuses as
//! grpc-gateway does.

pub mod binding;
mod failure;
pub mod gateway;
pub mod openapi;
pub mod percent;
pub mod reloadable;
mod request;
mod response;
pub mod router;
pub mod rules;
pub mod status;
pub mod template;
pub mod web;

pub use gateway::{Gateway, GatewayOptions};
pub use openapi::{ApiInfo, openapi};
pub use reloadable::ReloadableGateway;
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
