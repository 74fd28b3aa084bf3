//! REST/JSON transcoding and gRPC-Web for Keel services: one `.proto` contract, driven by
//! its `google.api.http` annotations at run time, without generated gateway code.
//!
//! So far: [`template`] parses the rules' path templates, [`router`] matches request paths
//! against them with grpc-gateway's precedence, and [`status`] maps gRPC codes to HTTP
//! statuses as grpc-gateway does.

pub mod router;
pub mod status;
pub mod template;
