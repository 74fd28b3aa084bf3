//! Business errors cross a real server and a tonic client with every detail intact.

mod common;

use std::io;
use std::time::Duration;

use keel::Server;
use keel::error::{BusinessError, Details, Retry};
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use keel_interop::pb::helloworld::{HelloReply, HelloRequest};
use tonic::{Code, Request, Response, Status};

const DOMAIN: &str = "payments.keel.dev";

/// A Greeter whose `SayHello` fails with the error case named in the request.
struct Failing;

#[tonic::async_trait]
impl Greeter for Failing {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Err(error_case(&request.into_inner().name))
    }

    async fn say_hello_again(
        &self,
        _: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

fn error_case(name: &str) -> Status {
    match name {
        "invalid" => BusinessError::invalid_argument("INVALID_PAYMENT", "2 fields are invalid")
            .domain(DOMAIN)
            .field_violation("amount.units", "must be positive")
            .field_violation("payee_id", "must not be empty")
            .into(),
        "not_found" => BusinessError::not_found("ACCOUNT_NOT_FOUND", "no account acc_9")
            .domain(DOMAIN)
            .metadata("account_id", "acc_9")
            .resource(
                "keel.payments.v1.Account",
                "accounts/acc_9",
                "does not exist",
            )
            .into(),
        "precondition" => {
            BusinessError::failed_precondition("INSUFFICIENT_FUNDS", "Überweisung: 50 € < 80 €")
                .domain(DOMAIN)
                .metadata("account_id", "acc_1")
                .metadata("balance", 50)
                .precondition_violation("BALANCE", "accounts/acc_1", "balance 50 < amount 80")
                .into()
        }
        "aborted" => BusinessError::aborted("VERSION_CONFLICT", "account acc_1 changed")
            .domain(DOMAIN)
            .metadata("expected_version", 3)
            .into(),
        "exists" => BusinessError::already_exists("PAYMENT_EXISTS", "payment pay_1 exists")
            .domain(DOMAIN)
            .resource(
                "keel.payments.v1.Payment",
                "payments/pay_1",
                "created earlier",
            )
            .into(),
        "unavailable" => BusinessError::unavailable("LEDGER_UNAVAILABLE", "ledger is down")
            .domain(DOMAIN)
            .retry_after(Duration::from_millis(1500))
            .into(),
        "exhausted" => BusinessError::resource_exhausted("DAILY_LIMIT", "daily limit reached")
            .domain(DOMAIN)
            .quota_violation("account:acc_1", "10 payments per day")
            .retry_after(Duration::from_secs(3600))
            .into(),
        "internal" => {
            let cause =
                io::Error::other("connection to db-7.internal:5432 refused, password=hunter2");
            keel::error::internal(&cause)
        }
        "garbage" => Status::with_details(
            Code::FailedPrecondition,
            "a peer with broken details",
            bytes::Bytes::from_static(b"\x0a\xff\xff\xff\xff not protobuf"),
        ),
        other => Status::invalid_argument(format!("unknown case {other}")),
    }
}

/// Serves `Failing` on an ephemeral port and calls it once per case.
struct Fixture {
    client: GreeterClient<tonic::transport::Channel>,
    task: tokio::task::JoinHandle<keel::server::ShutdownReport>,
}

impl Fixture {
    async fn start() -> Self {
        // Our own server: `common::TestServer` already registers the stock Greeter.
        let server = Server::builder(common::config())
            .add_service(GreeterServer::new(Failing))
            .bind()
            .await
            .expect("bind");
        let url = format!("http://{}", server.local_addr());
        let task = tokio::spawn(server.serve(std::future::pending()));
        let client = GreeterClient::connect(url).await.expect("connect");
        Self { client, task }
    }

    /// Calls the case and returns the status the client received, and its details.
    async fn call(&mut self, case: &str) -> (Status, Details) {
        let request = HelloRequest {
            name: case.to_owned(),
        };
        let status = self.client.say_hello(request).await.expect_err(case);
        let details = Details::from_status(&status);
        assert!(!details.is_malformed(), "{case}");
        (status, details)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn metadata(details: &Details) -> Vec<(&str, &str)> {
    details
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn every_error_kind_arrives_with_its_details() {
    let mut fixture = Fixture::start().await;

    let (status, details) = fixture.call("invalid").await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "2 fields are invalid");
    assert_eq!(details.reason(), Some("INVALID_PAYMENT"));
    assert_eq!(details.domain(), Some(DOMAIN));
    let fields: Vec<_> = details
        .field_violations()
        .iter()
        .map(|v| (v.field.as_str(), v.description.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("amount.units", "must be positive"),
            ("payee_id", "must not be empty")
        ]
    );
    assert!(!details.is_retryable());

    let (status, details) = fixture.call("not_found").await;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no account acc_9");
    assert_eq!(details.reason(), Some("ACCOUNT_NOT_FOUND"));
    assert_eq!(metadata(&details), [("account_id", "acc_9")]);
    let resource = details.resource().expect("ResourceInfo");
    assert_eq!(resource.resource_type, "keel.payments.v1.Account");
    assert_eq!(resource.resource_name, "accounts/acc_9");
    assert_eq!(resource.description, "does not exist");

    let (status, details) = fixture.call("precondition").await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "Überweisung: 50 € < 80 €");
    assert_eq!(details.reason(), Some("INSUFFICIENT_FUNDS"));
    assert_eq!(details.domain(), Some(DOMAIN));
    assert_eq!(
        metadata(&details),
        [("account_id", "acc_1"), ("balance", "50")]
    );
    let violations = details.precondition_violations();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].r#type, "BALANCE");
    assert_eq!(violations[0].subject, "accounts/acc_1");
    assert_eq!(violations[0].description, "balance 50 < amount 80");
    assert!(!details.is_retryable());

    let (status, details) = fixture.call("aborted").await;
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "account acc_1 changed");
    assert_eq!(details.reason(), Some("VERSION_CONFLICT"));
    assert_eq!(metadata(&details), [("expected_version", "3")]);
    assert_eq!(details.retry(), Retry::Never);

    let (status, details) = fixture.call("exists").await;
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(status.message(), "payment pay_1 exists");
    assert_eq!(details.reason(), Some("PAYMENT_EXISTS"));
    let resource = details.resource().expect("ResourceInfo");
    assert_eq!(resource.resource_name, "payments/pay_1");
    assert_eq!(resource.description, "created earlier");

    let (status, details) = fixture.call("unavailable").await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "ledger is down");
    assert_eq!(details.reason(), Some("LEDGER_UNAVAILABLE"));
    assert!(details.is_retryable());
    assert_eq!(details.retry_delay(), Some(Duration::from_millis(1500)));

    let (status, details) = fixture.call("exhausted").await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "daily limit reached");
    assert_eq!(details.reason(), Some("DAILY_LIMIT"));
    let quota = details.quota_violations();
    assert_eq!(quota.len(), 1);
    assert_eq!(quota[0].subject, "account:acc_1");
    assert_eq!(quota[0].description, "10 payments per day");
    assert_eq!(details.retry(), Retry::After(Duration::from_secs(3600)));
}

#[tokio::test]
async fn internal_errors_arrive_as_a_reference_only() {
    let mut fixture = Fixture::start().await;
    let (status, details) = fixture.call("internal").await;
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(details.reason(), Some(keel::error::INTERNAL_REASON));
    assert_eq!(details.domain(), Some(keel::error::KEEL_DOMAIN));
    let id = &details.metadata()[keel::error::ERROR_ID_KEY];
    assert_eq!(status.message(), format!("internal error; reference {id}"));
    assert!(!details.is_retryable());
    for secret in ["db-7", "5432", "hunter2", "refused"] {
        assert!(!status.message().contains(secret), "{secret}");
        assert!(
            !status
                .details()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret}"
        );
    }
}

#[tokio::test]
async fn plain_statuses_read_as_empty_details() {
    let mut fixture = Fixture::start().await;
    let (status, details) = fixture.call("no such case").await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(details.reason(), None);
    assert!(details.field_violations().is_empty());
}

#[tokio::test]
async fn malformed_details_from_a_peer_read_as_malformed() {
    let mut fixture = Fixture::start().await;
    let request = HelloRequest {
        name: "garbage".to_owned(),
    };
    let status = fixture.client.say_hello(request).await.expect_err("fails");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "a peer with broken details");
    let details = Details::from_status(&status);
    assert!(details.is_malformed());
    assert_eq!(details.reason(), None);
}
