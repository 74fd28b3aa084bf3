//! Invokes one method in any of the four modes: the requests go out as one stream (one
//! message for unary and server streaming), every response is printed as it arrives. A
//! method that answers one message and got none, or more than one, fails with INTERNAL, as
//! in grpc-go: an OK without its answer is not a success.

use std::time::Duration;

use http::uri::PathAndQuery;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::Status;
use tonic::client::Grpc;
use tonic::metadata::MetadataMap;

use super::Failure;
use super::connect::Connection;
use super::output::Printer;
use super::status::report;
use keel::dynamic::DynamicCodec;

/// One call to make.
pub struct Call {
    /// The method.
    pub method: MethodDescriptor,
    /// Its request messages.
    pub requests: Vec<DynamicMessage>,
    /// Request metadata.
    pub metadata: MetadataMap,
    /// How long the whole call may take.
    pub deadline: Option<Duration>,
}

/// Makes `call` over `channel`, printing responses (and with `-v` metadata) as they come. An
/// error status is reported on stderr and becomes [`Failure::Status`].
pub async fn invoke(channel: Connection, call: Call, printer: Printer) -> Result<(), Failure> {
    let pool = call.method.parent_pool().clone();
    let deadline = call.deadline;
    let exchange = exchange(channel, call, printer);
    let result = match deadline {
        Some(deadline) => tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the call took longer than its deadline of {}",
                    humantime::format_duration(deadline)
                ))
                .into())
            }),
        None => exchange.await,
    };
    match result {
        Err(Outcome::Status(status)) => {
            printer.metadata("response trailers", status.metadata());
            eprint!("{}", report(&status, Some(&pool), printer.options()));
            Err(Failure::Status(status.code()))
        }
        Err(Outcome::Failure(failure)) => Err(failure),
        Ok(()) => Ok(()),
    }
}

/// How an exchange ends short of OK: the server's status, or a local failure (output).
enum Outcome {
    Status(Status),
    Failure(Failure),
}

impl From<Status> for Outcome {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Self {
        Self::Failure(failure)
    }
}

async fn exchange(channel: Connection, call: Call, printer: Printer) -> Result<(), Outcome> {
    let Call {
        method,
        requests,
        metadata,
        deadline,
    } = call;
    let path = PathAndQuery::try_from(format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))
    .map_err(|error| Failure::Usage(format!("method {}: {error}", method.full_name())))?;
    let mut request = tonic::Request::new(futures_util::stream::iter(requests));
    *request.metadata_mut() = metadata;
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let mut grpc = Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("the connection failed: {error}")))?;
    let response = grpc
        .streaming(request, path, DynamicCodec::new(method.output()))
        .await?;
    printer.metadata("response headers", response.metadata());
    let one_answer = !method.is_server_streaming();
    let mut responses = response.into_inner();
    let mut answered = false;
    while let Some(message) = responses.message().await? {
        if one_answer && answered {
            return Err(Status::internal(
                "cardinality violation: expected <EOF> for non server-streaming RPCs, \
                 but received another message",
            )
            .into());
        }
        answered = true;
        printer.message(&message)?;
    }
    if let Some(trailers) = responses.trailers().await? {
        printer.metadata("response trailers", &trailers);
    }
    if one_answer && !answered {
        return Err(Status::internal(
            "cardinality violation: received no response message from non-server-streaming RPC",
        )
        .into());
    }
    Ok(())
}
