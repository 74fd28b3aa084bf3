//! A client of gRPC server reflection, so that tools (`keel call`, a gateway) can call a server
//! they have no `.proto` files for: list its services, and fetch the descriptors of a symbol
//! with every file it depends on as a [`DescriptorPool`] ready for dynamic messages.
//!
//! It speaks `grpc.reflection.v1` and falls back to `grpc.reflection.v1alpha` when the server
//! answers UNIMPLEMENTED (older servers offer only v1alpha); the version that answered is
//! remembered for later calls. The two versions have the same messages field for field, so
//! v1's types serve both and only the method path differs.
//!
//! Descriptors are assembled from the bytes the server sent, never from re-encoded
//! `prost_types` values, so custom options such as `google.api.http` survive (prost keeps no
//! unknown fields).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_dynamic::reflect::ReflectionClient;
//!
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let mut reflection = ReflectionClient::new(channel);
//! for service in reflection.list_services().await? {
//!     println!("{service}");
//! }
//! let pool = reflection.file_descriptors_for("helloworld.Greeter").await?;
//! let greeter = pool.get_service_by_name("helloworld.Greeter");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{DescriptorError, DescriptorPool};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::{Grpc, GrpcService};
use tonic::codec::Streaming;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// A version of the server reflection protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReflectionVersion {
    /// `grpc.reflection.v1`, the current one.
    V1,
    /// `grpc.reflection.v1alpha`, what older servers offer.
    V1Alpha,
}

impl ReflectionVersion {
    /// The full name of the reflection service of this version.
    pub fn service_name(self) -> &'static str {
        match self {
            Self::V1 => "grpc.reflection.v1.ServerReflection",
            Self::V1Alpha => "grpc.reflection.v1alpha.ServerReflection",
        }
    }

    fn path(self) -> PathAndQuery {
        PathAndQuery::from_static(match self {
            Self::V1 => "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Self::V1Alpha => "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        })
    }

    /// The version to try after this one failed with `status`, if any: v1alpha when v1 is
    /// UNIMPLEMENTED, nothing otherwise (any other failure is the server's real answer).
    pub fn fallback(self, status: &Status) -> Option<Self> {
        (self == Self::V1 && status.code() == Code::Unimplemented).then_some(Self::V1Alpha)
    }
}

/// Why a reflection request failed.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The reflection RPC itself failed: the server is unreachable, offers no reflection, ...
    #[error("server reflection failed: {:?}: {}", .0.code(), .0.message())]
    Rpc(#[source] Status),
    /// The server answered a request with an error, e.g. NOT_FOUND for an unknown symbol.
    #[error("server reflection has no answer for {request}: {message} ({code:?})")]
    Answer {
        /// What was asked, e.g. `symbol helloworld.Greeter`.
        request: String,
        /// The error code the server gave.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// A file descriptor the server sent does not decode.
    #[error("server reflection sent a file descriptor that does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The files the server sent do not form a valid descriptor pool.
    #[error("server reflection sent invalid descriptors: {0}")]
    Descriptors(#[from] DescriptorError),
    /// The server closed the stream early or answered something other than what was asked.
    #[error("server reflection broke the protocol: {0}")]
    Protocol(String),
}

impl ReflectionError {
    /// Whether the server said it does not know what was asked: NOT_FOUND as an error
    /// answer (grpc-go, grpc-java) or as the stream's status (tonic).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Answer { code, .. } => *code == Code::NotFound,
            Self::Rpc(status) => status.code() == Code::NotFound,
            _ => false,
        }
    }
}

/// A server reflection client over any gRPC transport (e.g. a tonic `Channel`).
#[derive(Debug, Clone)]
pub struct ReflectionClient<T> {
    grpc: Grpc<T>,
    metadata: MetadataMap,
    version: Option<ReflectionVersion>,
}

impl<T> ReflectionClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    /// A client sending its reflection calls over `transport`.
    pub fn new(transport: T) -> Self {
        Self {
            grpc: Grpc::new(transport),
            metadata: MetadataMap::new(),
            version: None,
        }
    }

    /// Sends `metadata` (e.g. credentials) with every reflection call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_dynamic::reflect::ReflectionClient;
    /// use tonic::metadata::MetadataMap;
    ///
    /// let mut metadata = MetadataMap::new();
    /// metadata.insert("authorization", "Bearer t0ken".parse()?);
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let reflection = ReflectionClient::new(channel).metadata(metadata);
    /// assert_eq!(reflection.version(), None, "nothing asked yet");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn metadata(mut self, metadata: MetadataMap) -> Self {
        self.metadata = metadata;
        self
    }

    /// The protocol version the server answered with, once a call has succeeded.
    pub fn version(&self) -> Option<ReflectionVersion> {
        self.version
    }

    /// The full names of the server's services, sorted.
    pub async fn list_services(&mut self) -> Result<Vec<String>, ReflectionError> {
        let (_, answer) = self
            .open(MessageRequest::ListServices(String::new()))
            .await?;
        let MessageResponse::ListServicesResponse(list) = answer else {
            return Err(unexpected("a service list", &answer));
        };
        let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
        Ok(names.into_iter().collect())
    }

    /// The file defining `symbol` (a service, method, message, enum, ... by full name) and
    /// every file it depends on, directly or not, as one pool.
    pub async fn file_descriptors_for(
        &mut self,
        symbol: &str,
    ) -> Result<DescriptorPool, ReflectionError> {
        let request = MessageRequest::FileContainingSymbol(symbol.to_owned());
        let (mut session, answer) = self.open(request).await?;
        let mut files = Files::default();
        files.add(answer)?;
        while let Some(name) = files.next_missing() {
            let answer = session
                .ask(MessageRequest::FileByFilename(name.clone()))
                .await?;
            files.add(answer)?;
            if !files.has(&name) {
                return Err(ReflectionError::Protocol(format!(
                    "asked for file {name}, got others"
                )));
            }
        }
        files.into_pool()
    }

    /// Opens a reflection stream with `first` as its first request, trying v1 then v1alpha
    /// until a version is known, and returns the stream with the answer to `first`.
    async fn open(
        &mut self,
        first: MessageRequest,
    ) -> Result<(Session, MessageResponse), ReflectionError> {
        let mut version = self.version.unwrap_or(ReflectionVersion::V1);
        loop {
            match self.open_version(version, first.clone()).await {
                Ok(opened) => {
                    self.version = Some(version);
                    return Ok(opened);
                }
                Err(ReflectionError::Rpc(status)) if self.version.is_none() => {
                    match version.fallback(&status) {
                        Some(next) => version = next,
                        None => return Err(ReflectionError::Rpc(status)),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn open_version(
        &mut self,
        version: ReflectionVersion,
        first: MessageRequest,
    ) -> Result<(Session, MessageResponse), ReflectionError> {
        let (requests, receiver) = mpsc::channel(1);
        // Queued before the call starts: some servers answer headers only after a message.
        send(&requests, first.clone()).await?;
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        *request.metadata_mut() = self.metadata.clone();
        self.grpc.ready().await.map_err(|error| {
            ReflectionError::Rpc(Status::unavailable(format!(
                "cannot reach the server: {}",
                error.into()
            )))
        })?;
        let response = self
            .grpc
            .streaming(request, version.path(), ProstCodec::default())
            .await
            .map_err(ReflectionError::Rpc)?;
        let mut session = Session {
            requests,
            responses: response.into_inner(),
        };
        let answer = session.receive(&first).await?;
        Ok((session, answer))
    }
}

/// One open reflection stream: requests go out one at a time, each answered in order.
struct Session {
    requests: mpsc::Sender<ServerReflectionRequest>,
    responses: Streaming<ServerReflectionResponse>,
}

impl Session {
    async fn ask(&mut self, request: MessageRequest) -> Result<MessageResponse, ReflectionError> {
        send(&self.requests, request.clone()).await?;
        self.receive(&request).await
    }

    async fn receive(
        &mut self,
        asked: &MessageRequest,
    ) -> Result<MessageResponse, ReflectionError> {
        let response = self
            .responses
            .message()
            .await
            .map_err(ReflectionError::Rpc)?
            .ok_or_else(|| ReflectionError::Protocol("the server ended the stream".to_owned()))?;
        match response.message_response {
            Some(MessageResponse::ErrorResponse(error)) => Err(ReflectionError::Answer {
                request: describe_request(asked),
                code: Code::from_i32(error.error_code),
                message: error.error_message,
            }),
            Some(answer) => Ok(answer),
            None => Err(ReflectionError::Protocol("an empty answer".to_owned())),
        }
    }
}

async fn send(
    requests: &mpsc::Sender<ServerReflectionRequest>,
    request: MessageRequest,
) -> Result<(), ReflectionError> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    requests
        .send(request)
        .await
        .map_err(|_| ReflectionError::Protocol("the request stream closed".to_owned()))
}

/// The encoded files received so far, by name, and the dependencies still to fetch.
#[derive(Default)]
struct Files {
    encoded: BTreeMap<String, Bytes>,
    wanted: VecDeque<String>,
    asked: BTreeSet<String>,
}

impl Files {
    fn add(&mut self, answer: MessageResponse) -> Result<(), ReflectionError> {
        let MessageResponse::FileDescriptorResponse(files) = answer else {
            return Err(unexpected("file descriptors", &answer));
        };
        for encoded in files.file_descriptor_proto {
            let encoded = Bytes::from(encoded);
            let file = prost_types::FileDescriptorProto::decode(encoded.clone())?;
            self.wanted.extend(file.dependency.iter().cloned());
            self.encoded
                .entry(file.name().to_owned())
                .or_insert(encoded);
        }
        Ok(())
    }

    fn has(&self, name: &str) -> bool {
        self.encoded.contains_key(name)
    }

    /// The next dependency neither received nor asked for yet.
    fn next_missing(&mut self) -> Option<String> {
        while let Some(name) = self.wanted.pop_front() {
            if !self.has(&name) && self.asked.insert(name.clone()) {
                return Some(name);
            }
        }
        None
    }

    /// One pool of every file, decoded from the bytes as received (a `FileDescriptorSet`
    /// is the files as repeated field 1).
    fn into_pool(self) -> Result<DescriptorPool, ReflectionError> {
        let mut set = Vec::new();
        for encoded in self.encoded.values() {
            prost::encoding::bytes::encode(1, encoded, &mut set);
        }
        Ok(DescriptorPool::decode(set.as_slice())?)
    }
}

fn describe_request(request: &MessageRequest) -> String {
    match request {
        MessageRequest::FileByFilename(name) => format!("file {name}"),
        MessageRequest::FileContainingSymbol(symbol) => format!("symbol {symbol}"),
        MessageRequest::FileContainingExtension(extension) => {
            format!(
                "extension {} of {}",
                extension.extension_number, extension.containing_type
            )
        }
        MessageRequest::AllExtensionNumbersOfType(name) => format!("extensions of {name}"),
        MessageRequest::ListServices(_) => "the service list".to_owned(),
    }
}

fn unexpected(wanted: &str, got: &MessageResponse) -> ReflectionError {
    let got = match got {
        MessageResponse::FileDescriptorResponse(_) => "file descriptors",
        MessageResponse::AllExtensionNumbersResponse(_) => "extension numbers",
        MessageResponse::ListServicesResponse(_) => "a service list",
        MessageResponse::ErrorResponse(_) => "an error",
    };
    ReflectionError::Protocol(format!("expected {wanted}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_reflection::pb::v1::FileDescriptorResponse;

    #[test]
    fn only_an_unimplemented_v1_falls_back_to_v1alpha() {
        let unimplemented = Status::unimplemented("no such service");
        assert_eq!(
            ReflectionVersion::V1.fallback(&unimplemented),
            Some(ReflectionVersion::V1Alpha)
        );
        assert_eq!(ReflectionVersion::V1Alpha.fallback(&unimplemented), None);
        for other in [
            Status::unavailable("down"),
            Status::permission_denied("no"),
            Status::not_found("x"),
        ] {
            assert_eq!(ReflectionVersion::V1.fallback(&other), None, "{other:?}");
        }
    }

    fn file(name: &str, dependencies: &[&str]) -> Vec<u8> {
        prost_types::FileDescriptorProto {
            name: Some(name.to_owned()),
            package: Some("t".to_owned()),
            dependency: dependencies.iter().map(|d| (*d).to_owned()).collect(),
            syntax: Some("proto3".to_owned()),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn answer(files: Vec<Vec<u8>>) -> MessageResponse {
        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto: files,
        })
    }

    #[test]
    fn dependencies_are_asked_for_once_each_and_never_when_already_sent() {
        let mut files = Files::default();
        files
            .add(answer(vec![
                file("a.proto", &["b.proto", "c.proto"]),
                file("c.proto", &[]),
            ]))
            .unwrap();
        assert_eq!(files.next_missing().as_deref(), Some("b.proto"));
        files
            .add(answer(vec![file("b.proto", &["c.proto", "d.proto"])]))
            .unwrap();
        assert_eq!(files.next_missing().as_deref(), Some("d.proto"));
        // d.proto never arrives: it is not asked for twice.
        assert_eq!(files.next_missing(), None);
    }

    #[test]
    fn the_pool_holds_every_file_in_any_order_received() {
        let mut files = Files::default();
        files
            .add(answer(vec![
                file("a.proto", &["b.proto"]),
                file("b.proto", &[]),
            ]))
            .unwrap();
        let pool = files.into_pool().unwrap();
        let mut names: Vec<_> = pool.files().map(|f| f.name().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.proto", "b.proto"]);
    }

    #[test]
    fn garbage_from_the_server_is_an_error_not_a_panic() {
        let mut files = Files::default();
        let error = files.add(answer(vec![vec![0xff, 0xff, 0xff]])).unwrap_err();
        assert!(matches!(error, ReflectionError::Decode(_)), "{error}");
        let error = files.add(MessageResponse::ListServicesResponse(Default::default()));
        assert!(matches!(error, Err(ReflectionError::Protocol(_))));
    }
}
