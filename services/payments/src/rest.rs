//! The REST/JSON and gRPC-Web face of `payments.v1` on the gRPC port: the contract's
//! `google.api.http` rules served by keel-gateway, calling the services in-process through
//! the server's own gRPC stack (so REST calls are counted, logged, limited and traced like
//! gRPC ones).

use keel::server::{GrpcStack, HttpService};
use keel_gateway::{Gateway, GatewayOptions, RuleError, Rules};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// What [`keel::ServerBuilder::http_fallback`] takes to serve REST/JSON and gRPC-Web; the
/// rules are checked now, so a broken contract stops start-up with a clear error.
pub fn fallback(
    options: GatewayOptions,
) -> Result<impl FnOnce(GrpcStack) -> HttpService + Send + 'static, RuleError> {
    let mut pool = prost_reflect::DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built with this binary decodes");
    keel::dynamic::add_standard(&mut pool);
    let rules = Rules::load(&pool, &[])?;
    Ok(move |grpc: GrpcStack| {
        let gateway = Gateway::from_rules(rules, pool, grpc, options);
        BoxCloneSyncService::new(
            ServiceExt::<http::Request<tonic::body::Body>>::map_response(
                gateway,
                |response: http::Response<axum::body::Body>| response.map(tonic::body::Body::new),
            ),
        )
    })
}
