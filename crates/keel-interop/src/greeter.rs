//! `helloworld.Greeter`: the smallest useful service, and the benchmark workload.

use tonic::{Request, Response, Status};

use crate::pb::helloworld::{HelloReply, HelloRequest, greeter_server};

/// Answers `Hello <name>`, like the upstream example servers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Greeter;

#[tonic::async_trait]
impl greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello {}", request.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello again {}", request.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }
}

impl Greeter {
    /// The tonic service to register on a server.
    pub fn into_service(self) -> greeter_server::GreeterServer<Self> {
        greeter_server::GreeterServer::new(self)
    }
}
