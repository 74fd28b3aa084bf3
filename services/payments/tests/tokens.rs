//! Payments with end users' bearer tokens, as its configuration sets them up
//! (`server.auth.jwks`, `issuer`, `audience`): the token's subject owns the accounts it
//! creates, a caller paying from an account it does not own gets PERMISSION_DENIED and no
//! money moves, over gRPC and over REST (403), and calls without a valid token are
//! UNAUTHENTICATED (401). Real tokens, signed with keys of a JWKS file the server reads.

mod common;

use std::time::Duration;

use common::app::{RunningApp, config};
use keel_authz::testing::{TestIssuer, claims, jwks};
use payments::pb::v1::account_service_client::AccountServiceClient;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{CreateAccountRequest, DepositRequest, GetAccountRequest, ProcessRequest};
use tonic::Code;

const ISSUER: &str = "https://issuer.keel.test";
const AUDIENCE: &str = "payments";

/// `message` carrying `token` as its bearer token.
fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn payment(key: &str, from: &str, to: &str, amount: i64) -> ProcessRequest {
    ProcessRequest {
        idempotency_key: key.into(),
        payer_account_id: from.into(),
        payee_account_id: to.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_owns_its_accounts_and_no_other_caller_moves_their_money() {
    let dir = keel_test_support::tls::Dir::new();
    let issuer = TestIssuer::es256("key-1");
    let keys = dir.write("jwks.json", jwks(&[&issuer]));
    let mut config = config(&format!(
        "sqlite://{}",
        dir.path().join("payments.db").display()
    ));
    config.rest_gateway = true;
    config.server.auth.jwks = keys;
    config.server.auth.issuer = ISSUER.into();
    config.server.auth.audience = AUDIENCE.into();
    let app = RunningApp::start(config).await;
    let alice = issuer.sign(&claims(ISSUER, AUDIENCE, "alice"));
    let bob = issuer.sign(&claims(ISSUER, AUDIENCE, "bob"));

    let mut accounts = AccountServiceClient::new(app.channel().await);
    let mut payments = PaymentServiceClient::new(app.channel().await);
    for (token, id) in [(&alice, "alice-eur"), (&bob, "bob-eur")] {
        let created = accounts
            .create_account(with_token(
                token,
                CreateAccountRequest {
                    account_id: id.into(),
                    currency: "EUR".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let owner = created.account.unwrap().owner;
        assert_eq!(owner, if id == "alice-eur" { "alice" } else { "bob" });
    }
    accounts
        .deposit(with_token(
            &alice,
            DepositRequest {
                account_id: "alice-eur".into(),
                amount_minor: 10_000,
                idempotency_key: "dep-1".into(),
            },
        ))
        .await
        .unwrap();

    // Bob pays himself from Alice's account: refused, over gRPC and over REST.
    let refused = payments
        .process(with_token(
            &bob,
            payment("steal-1", "alice-eur", "bob-eur", 2_500),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let rest = rest_pay(&app, &bob, "steal-2", "alice-eur", "bob-eur").await;
    assert!(rest.starts_with("HTTP/1.1 403"), "{rest}");

    // A call without a token, or with one from another issuer, is not let in at all.
    let anonymous = payments
        .process(tonic::Request::new(payment(
            "anon-1",
            "alice-eur",
            "bob-eur",
            1,
        )))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let stranger = TestIssuer::es256("key-1").sign(&claims(ISSUER, AUDIENCE, "alice"));
    let forged = rest_pay(&app, &stranger, "forged-1", "alice-eur", "bob-eur").await;
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    // RFC 6750: the 401 says a bearer token is wanted and that this one was refused.
    let challenge = forged
        .lines()
        .find_map(|line| line.strip_prefix("www-authenticate: "))
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {forged}"));
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#),
        "{challenge}"
    );

    // No money moved; Alice's own payment goes through.
    let balance = |token: String, id: &'static str| {
        let mut accounts = accounts.clone();
        async move {
            accounts
                .get_account(with_token(
                    &token,
                    GetAccountRequest {
                        account_id: id.into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .account
                .unwrap()
                .balance_minor
        }
    };
    assert_eq!(balance(alice.clone(), "alice-eur").await, 10_000);
    assert_eq!(balance(bob.clone(), "bob-eur").await, 0);
    payments
        .process(with_token(
            &alice,
            payment("pay-1", "alice-eur", "bob-eur", 2_500),
        ))
        .await
        .unwrap();
    assert_eq!(balance(alice, "alice-eur").await, 7_500);
    assert_eq!(balance(bob, "bob-eur").await, 2_500);
}

/// `POST /v1/payments` over HTTP/1.1 with `token`: the status line and the body.
async fn rest_pay(app: &RunningApp, token: &str, key: &str, from: &str, to: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(
        r#"{{"idempotencyKey":"{key}","payerAccountId":"{from}","payeeAccountId":"{to}",
            "amountMinor":"100","currency":"EUR"}}"#
    );
    let request = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: payments\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
        .await
        .expect("the REST answer within 10 s")
        .unwrap();
    answer
}
