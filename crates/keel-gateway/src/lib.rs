//! REST/JSON transcoding and gRPC-Web for Keel services: one `.proto` contract, driven by
//! its `google.api.http` annotations at run time, without generated gateway code.
//!
//! So far: [`template`] parses the rules' path templates, [`router`] matches request paths
//! against them with grpc-gateway's precedence, [`rules`] reads every method's rules from a
//! descriptor pool, [`binding`] turns a matched request (path, query, body) into the
//! method's request message, and [`status`] maps gRPC codes to HTTP statuses as
//! grpc-gateway does.

pub mod binding;
pub mod gateway;
pub mod openapi;
pub mod percent;
pub mod reloadable;
pub mod router;
pub mod rules;
pub mod serve;
pub mod status;
pub mod template;
pub mod web;

pub use gateway::{Gateway, GatewayOptions};
pub use openapi::{ApiInfo, openapi};
pub use reloadable::ReloadableGateway;
pub use serve::serve;
pub use web::CorsOptions;

#[cfg(test)]
pub(crate) mod testdata {
    //! The bookstore contract of `testdata/`, compiled for the tests.

    use prost_reflect::DescriptorPool;

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
}
