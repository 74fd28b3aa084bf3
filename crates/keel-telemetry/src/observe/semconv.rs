//! The OpenTelemetry RPC semantic-convention names Keel writes, in one place: the
//! conventions are still changing, and following them should be a one-file change.

/// `rpc.system`: always `grpc`.
pub const RPC_SYSTEM: &str = "rpc.system";
/// `rpc.service`: the full service name.
pub const RPC_SERVICE: &str = "rpc.service";
/// `rpc.method`: the method name.
pub const RPC_METHOD: &str = "rpc.method";
/// `rpc.grpc.status_code`: the numeric status code.
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
/// `network.peer.address`: the other end's IP address.
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// `network.peer.port`: the other end's port.
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
/// `keel.peer.identity`: the principal the client's certificate proved (its SPIFFE ID, else
/// its first DNS SAN, else its subject). Keel's own: OpenTelemetry has no attribute for a
/// verified workload identity.
pub const KEEL_PEER_IDENTITY: &str = "keel.peer.identity";
/// `server.address`: the host a client called.
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`: the port a client called.
pub const SERVER_PORT: &str = "server.port";
/// Span event carrying a captured response payload.
pub const PAYLOAD_EVENT: &str = "rpc.response.payload";
/// The payload event's attribute: the response as JSON, redacted and truncated.
pub const PAYLOAD_BODY: &str = "rpc.response.body";

/// The attributes every RPC span starts with: system, service and method.
pub(crate) fn rpc_attributes(info: &keel_core::method::MethodInfo) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::{KeyValue, StringValue};
    vec![
        KeyValue::new(RPC_SYSTEM, "grpc"),
        KeyValue::new(RPC_SERVICE, StringValue::from(info.service.clone())),
        KeyValue::new(RPC_METHOD, StringValue::from(info.method.clone())),
    ]
}
