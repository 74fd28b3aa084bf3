//! A panicking handler costs one call, not the server: the caller gets INTERNAL with a
//! generic message, the panic is counted, and the next call on the same connection succeeds.

mod common;

use keel::Server;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use keel_interop::pb::helloworld::{HelloReply, HelloRequest};
use tonic::{Request, Response, Status};

/// Greets, except whoever is called "panic".
struct Fragile;

#[tonic::async_trait]
impl Greeter for Fragile {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if name == "panic" {
            panic!("secret detail that must not reach the caller");
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}"),
        }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

#[tokio::test]
async fn a_panicking_handler_fails_its_call_with_internal_and_the_server_goes_on() {
    let server = Server::builder(common::config())
        .add_service(GreeterServer::new(Fragile))
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .unwrap();
    let (addr, metrics) = (server.local_addr(), server.metrics());
    let serving = tokio::spawn(server.serve(std::future::pending()));
    let mut client = GreeterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let status = client
        .say_hello(HelloRequest {
            name: "panic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(
        status.message(),
        "internal error",
        "the panic's text stays inside"
    );

    let reply = client
        .say_hello(HelloRequest { name: "Ada".into() })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "Hello Ada");

    let text = metrics.render();
    let series = |line: &str| text.lines().any(|l| l == line);
    assert!(series("keel_server_panics_total 1"), "{text}");
    assert!(
        series(
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"helloworld.Greeter\",\
             grpc_method=\"SayHello\",grpc_code=\"Internal\"} 1"
        ),
        "{text}"
    );
    serving.abort();
}
