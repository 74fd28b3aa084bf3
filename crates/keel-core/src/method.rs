//! Which RPCs a server or client knows, read from its file descriptor sets: for every
//! `/package.Service/Method` path, the service, the method and the RPC type.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use prost::Message as _;
use prost_types::FileDescriptorSet;

/// The four kinds of RPC, named as go-grpc-middleware's `grpc_type` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcType {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl RpcType {
    /// From the method's streaming flags.
    pub fn from_streaming(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => Self::Unary,
            (true, false) => Self::ClientStream,
            (false, true) => Self::ServerStream,
            (true, true) => Self::BidiStream,
        }
    }

    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// One method: what the labels, log fields and span attributes of its calls say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// Full service name, e.g. `helloworld.Greeter`.
    pub service: Arc<str>,
    /// Method name, e.g. `SayHello`.
    pub method: Arc<str>,
    /// Its RPC type.
    pub rpc_type: RpcType,
}

/// A map keyed by request path, hashed with FNV-1a: a lookup per call, on keys fixed when
/// the map is built (so a caller cannot grow collision chains), where SipHash's resistance
/// to flooding buys nothing and costs about 150 instructions per call.
pub type PathMap<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Every method of a set of services, by request path.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    by_path: HashMap<String, MethodInfo>,
}

/// An encoded descriptor set that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("invalid file descriptor set: {0}")]
pub struct DescriptorError(#[from] prost::DecodeError);

impl MethodTable {
    /// Adds the services of an encoded `FileDescriptorSet`.
    pub fn add_encoded(&mut self, encoded: &[u8]) -> Result<(), DescriptorError> {
        let set = FileDescriptorSet::decode(encoded)?;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let full: Arc<str> = if package.is_empty() {
                    service.name().into()
                } else {
                    format!("{package}.{}", service.name()).into()
                };
                for method in &service.method {
                    let info = MethodInfo {
                        service: full.clone(),
                        method: method.name().into(),
                        rpc_type: RpcType::from_streaming(
                            method.client_streaming(),
                            method.server_streaming(),
                        ),
                    };
                    self.by_path
                        .insert(format!("/{full}/{}", method.name()), info);
                }
            }
        }
        Ok(())
    }

    /// The method a request path names, if known.
    pub fn get(&self, path: &str) -> Option<&MethodInfo> {
        self.by_path.get(path)
    }

    /// Every known method, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MethodInfo)> {
        self.by_path
            .iter()
            .map(|(path, info)| (path.as_str(), info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_and_streaming_flags() {
        let mut table = MethodTable::default();
        table
            .add_encoded(keel_interop::FILE_DESCRIPTOR_SET)
            .unwrap();
        let say = table.get("/helloworld.Greeter/SayHello").unwrap();
        assert_eq!(&*say.service, "helloworld.Greeter");
        assert_eq!(&*say.method, "SayHello");
        assert_eq!(say.rpc_type, RpcType::Unary);
        for (path, rpc_type) in [
            (
                "/grpc.testing.TestService/StreamingOutputCall",
                RpcType::ServerStream,
            ),
            (
                "/grpc.testing.TestService/StreamingInputCall",
                RpcType::ClientStream,
            ),
            (
                "/grpc.testing.TestService/FullDuplexCall",
                RpcType::BidiStream,
            ),
        ] {
            assert_eq!(table.get(path).unwrap().rpc_type, rpc_type, "{path}");
        }
        assert!(table.get("/helloworld.Greeter/Nope").is_none());
        assert!(table.add_encoded(b"\xff\xff").is_err());
    }
}
