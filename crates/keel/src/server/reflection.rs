//! gRPC server reflection (v1 and v1alpha) that sends every file with its custom options.
//!
//! tonic-reflection decodes descriptor sets into `prost_types` and encodes them again,
//! which drops the extension options prost does not know, `google.api.http` among them:
//! a gateway or `keel call` learning a Keel server by reflection then saw no HTTP rules.
//! Here the files live in a prost-reflect pool, which keeps options as parsed extensions,
//! and each answer is the file with its transitive dependencies (each sent once per stream).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt as _};
use prost::Message as _;
use prost_reflect::{DescriptorPool, FileDescriptor};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};
use tonic_reflection::pb::{v1, v1alpha};

/// What reflection knows: the files and the services to list.
#[derive(Debug)]
pub(super) struct Reflection {
    pool: DescriptorPool,
    services: Vec<String>,
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Reflection {
    /// Reflection over the files of `sets`, listing `services`. A set whose files clash with
    /// an earlier one's is left out, with a warning.
    pub(super) fn new(sets: &[&[u8]], services: Vec<String>) -> Arc<Self> {
        let mut pool = DescriptorPool::new();
        for set in sets {
            if let Err(error) = pool.decode_file_descriptor_set(*set) {
                tracing::warn!(%error, "a descriptor set cannot be served by reflection");
            }
        }
        Arc::new(Self { pool, services })
    }

    /// The v1 service.
    pub(super) fn v1(self: &Arc<Self>) -> v1::server_reflection_server::ServerReflectionServer<V1> {
        v1::server_reflection_server::ServerReflectionServer::from_arc(Arc::new(V1(self.clone())))
    }

    /// The v1alpha service (the same messages, field for field).
    pub(super) fn v1alpha(
        self: &Arc<Self>,
    ) -> v1alpha::server_reflection_server::ServerReflectionServer<V1Alpha> {
        v1alpha::server_reflection_server::ServerReflectionServer::from_arc(Arc::new(V1Alpha(
            self.clone(),
        )))
    }

    /// Answers a stream of v1 requests.
    fn answer(
        self: Arc<Self>,
        requests: Streaming<ServerReflectionRequest>,
    ) -> Answers<ServerReflectionResponse> {
        let mut sent: HashSet<String> = HashSet::new();
        Box::pin(requests.map(move |request| {
            let request = request?;
            let response = self.respond(&request, &mut sent);
            Ok(ServerReflectionResponse {
                valid_host: request.host.clone(),
                original_request: Some(request),
                message_response: Some(response),
            })
        }))
    }

    fn respond(
        &self,
        request: &ServerReflectionRequest,
        sent: &mut HashSet<String>,
    ) -> MessageResponse {
        let not_found = |what: String| {
            MessageResponse::ErrorResponse(ErrorResponse {
                error_code: tonic::Code::NotFound as i32,
                error_message: what,
            })
        };
        match &request.message_request {
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => match self.pool.get_file_by_name(name) {
                Some(file) => self.files(&file, sent),
                None => not_found(format!("no file named {name}")),
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => match self.file_of(symbol) {
                Some(file) => self.files(&file, sent),
                None => not_found(format!("no symbol named {symbol}")),
            },
            Some(MessageRequest::FileContainingExtension(extension)) => {
                let found = self
                    .pool
                    .get_message_by_name(&extension.containing_type)
                    .and_then(|message| {
                        message
                            .extensions()
                            .find(|field| field.number() as i32 == extension.extension_number)
                    });
                match found {
                    Some(field) => self.files(&field.parent_file(), sent),
                    None => not_found(format!(
                        "no extension {} of {}",
                        extension.extension_number, extension.containing_type
                    )),
                }
            }
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                match self.pool.get_message_by_name(name) {
                    Some(message) => {
                        MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                            base_type_name: name.clone(),
                            extension_number: message
                                .extensions()
                                .map(|field| field.number() as i32)
                                .collect(),
                        })
                    }
                    None => not_found(format!("no message named {name}")),
                }
            }
            None => MessageResponse::ErrorResponse(ErrorResponse {
                error_code: tonic::Code::InvalidArgument as i32,
                error_message: "the request asks nothing".into(),
            }),
        }
    }

    /// The file declaring `symbol`: a service, method, message, enum or extension.
    fn file_of(&self, symbol: &str) -> Option<FileDescriptor> {
        let pool = &self.pool;
        if let Some(service) = pool.get_service_by_name(symbol) {
            return Some(service.parent_file());
        }
        if let Some(message) = pool.get_message_by_name(symbol) {
            return Some(message.parent_file());
        }
        if let Some(enumeration) = pool.get_enum_by_name(symbol) {
            return Some(enumeration.parent_file());
        }
        if let Some(extension) = pool.get_extension_by_name(symbol) {
            return Some(extension.parent_file());
        }
        let (service, method) = symbol.rsplit_once('.')?;
        let service = pool.get_service_by_name(service)?;
        service
            .methods()
            .any(|m| m.name() == method)
            .then(|| service.parent_file())
    }

    /// `file` and every file it depends on that this stream has not been sent yet.
    fn files(&self, file: &FileDescriptor, sent: &mut HashSet<String>) -> MessageResponse {
        let mut out = Vec::new();
        let mut stack = vec![file.clone()];
        while let Some(next) = stack.pop() {
            if !sent.insert(next.name().to_owned()) && next.name() != file.name() {
                continue;
            }
            stack.extend(next.dependencies());
            out.push(next.encode_to_vec());
        }
        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto: out,
        })
    }
}

/// grpc.reflection.v1.
pub(super) struct V1(Arc<Reflection>);

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for V1 {
    type ServerReflectionInfoStream = Answers<ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(self.0.clone().answer(request.into_inner())))
    }
}

/// grpc.reflection.v1alpha: the v1 answers, re-encoded as the identical v1alpha messages.
pub(super) struct V1Alpha(Arc<Reflection>);

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for V1Alpha {
    type ServerReflectionInfoStream = Answers<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let reflection = self.0.clone();
        let mut sent = HashSet::new();
        let answers = request.into_inner().map(move |request| {
            let request = ServerReflectionRequest::decode(request?.encode_to_vec().as_slice())
                .map_err(|error| Status::internal(error.to_string()))?;
            let response = reflection.respond(&request, &mut sent);
            let response = ServerReflectionResponse {
                valid_host: request.host.clone(),
                original_request: Some(request),
                message_response: Some(response),
            };
            v1alpha::ServerReflectionResponse::decode(response.encode_to_vec().as_slice())
                .map_err(|error| Status::internal(error.to_string()))
        });
        Ok(Response::new(Box::pin(answers)))
    }
}
