//! The service end to end over gRPC, on SQLite and on PostgreSQL: every RPC in its mode
//! (unary, client streaming, bidirectional), and every business error read back by a client
//! with its details intact.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, on_both_backends};
use futures_util::StreamExt;
use keel::error::Details;
use payments::pb::v1::account_service_client::AccountServiceClient;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{
    CreateAccountRequest, DepositRequest, GetAccountRequest, GetPaymentRequest,
    ListPaymentsRequest, PaymentStatus, ProcessBatchRequest, ProcessRequest, ProcessStreamRequest,
    RefundRequest, process_result,
};
use payments::store::Store;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Clients of the payments services on `store`.
struct Api {
    accounts: AccountServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
}

impl Api {
    async fn start(store: Arc<dyn Store>, rate_limit: u32) -> Self {
        let channel = common::api::serve(store, rate_limit).await;
        Self {
            accounts: AccountServiceClient::new(channel.clone()),
            payments: PaymentServiceClient::new(channel),
        }
    }

    async fn account(&mut self, id: &str, currency: &str) -> String {
        let request = CreateAccountRequest {
            account_id: id.into(),
            currency: currency.into(),
        };
        let response = self
            .accounts
            .create_account(request)
            .await
            .unwrap()
            .into_inner();
        response.account.unwrap().account_id
    }

    async fn deposit(&mut self, account_id: &str, amount_minor: i64, key: &str) -> (i64, bool) {
        let request = DepositRequest {
            account_id: account_id.into(),
            amount_minor,
            idempotency_key: key.into(),
        };
        let response = self.accounts.deposit(request).await.unwrap().into_inner();
        (response.account.unwrap().balance_minor, response.replayed)
    }

    async fn balance(&mut self, account_id: &str) -> i64 {
        let request = GetAccountRequest {
            account_id: account_id.into(),
        };
        let response = self
            .accounts
            .get_account(request)
            .await
            .unwrap()
            .into_inner();
        response.account.unwrap().balance_minor
    }
}

fn pay(key: &str, payer: &str, payee: &str, amount_minor: i64, currency: &str) -> ProcessRequest {
    ProcessRequest {
        idempotency_key: key.into(),
        payer_account_id: payer.into(),
        payee_account_id: payee.into(),
        amount_minor,
        currency: currency.into(),
        description: "coffee".into(),
        metadata: HashMap::from([("order".into(), "42".into())]),
    }
}

/// Asserts code, ErrorInfo reason and domain; returns the details for further checks.
fn expect_error(status: &Status, code: Code, reason: &str) -> Details {
    assert_eq!(status.code(), code, "{status:?}");
    let details = Details::from_status(status);
    assert!(!details.is_malformed(), "{status:?}");
    assert_eq!(details.reason(), Some(reason), "{status:?}");
    assert_eq!(details.domain(), Some(payments::service::DOMAIN));
    details
}

/// A per-item `google.rpc.Status` back as a tonic status, to read with the same helpers.
fn item_status(status: &tonic_types::pb::Status) -> Status {
    Status::with_details(
        Code::from(status.code),
        status.message.clone(),
        status.encode_to_vec().into(),
    )
}

async fn every_rpc_in_its_mode(db: &TestDb) {
    let mut api = Api::start(db.store.clone(), 0).await;
    let alice = api.account("alice", "EUR").await;
    let bob = api.account("", "EUR").await;
    assert!(!bob.is_empty(), "an id is generated when none is given");

    // Deposit is idempotent by key, from the field or the idempotency-key header.
    assert_eq!(api.deposit(&alice, 1_000, "dep-1").await, (1_000, false));
    assert_eq!(api.deposit(&alice, 1_000, "dep-1").await, (1_000, true));
    let mut by_header = tonic::Request::new(DepositRequest {
        account_id: alice.clone(),
        amount_minor: 500,
        idempotency_key: String::new(),
    });
    by_header
        .metadata_mut()
        .insert("idempotency-key", "dep-2".parse().unwrap());
    let deposited = api.accounts.deposit(by_header).await.unwrap().into_inner();
    assert_eq!(deposited.account.unwrap().balance_minor, 1_500);

    // Unary: a payment, then its replay, byte-identical.
    let first = api
        .payments
        .process(pay("p-1", &alice, &bob, 300, "EUR"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let payment = first.payment.clone().unwrap();
    assert_eq!(payment.status, PaymentStatus::Completed as i32);
    assert_eq!(payment.metadata["order"], "42");
    let replay = api
        .payments
        .process(pay("p-1", &alice, &bob, 300, "EUR"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        replay.payment.unwrap().encode_to_vec(),
        payment.encode_to_vec()
    );
    assert_eq!(
        (api.balance(&alice).await, api.balance(&bob).await),
        (1_200, 300)
    );

    let got = api
        .payments
        .get_payment(GetPaymentRequest {
            payment_id: payment.payment_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().payment.unwrap(), payment);

    // Refund: partial, idempotent by key.
    let refund = RefundRequest {
        payment_id: payment.payment_id.clone(),
        amount_minor: 100,
        idempotency_key: "r-1".into(),
    };
    let refunded = api
        .payments
        .refund(refund.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refunded.payment.as_ref().unwrap().refunded_minor, 100);
    assert_eq!(
        refunded.payment.unwrap().status,
        PaymentStatus::PartiallyRefunded as i32
    );
    assert!(
        api.payments
            .refund(refund)
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    assert_eq!(
        (api.balance(&alice).await, api.balance(&bob).await),
        (1_300, 200)
    );

    // Client streaming: one summary with a result per item, failures included.
    let batch = vec![
        pay("b-1", &alice, &bob, 10, "EUR"),
        pay("b-2", &alice, &bob, 1_000_000, "EUR"),
        pay("b-3", &alice, &bob, 20, "EUR"),
        pay("b-4", &alice, &bob, -5, "EUR"),
    ];
    let items = futures_util::stream::iter(
        batch
            .into_iter()
            .map(|r| ProcessBatchRequest { request: Some(r) }),
    );
    let summary = api
        .payments
        .process_batch(items)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.accepted, summary.rejected), (2, 2));
    let indexes: Vec<u32> = summary.results.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
    let Some(process_result::Outcome::Error(insufficient)) = &summary.results[1].outcome else {
        panic!("item 1 should fail: {:?}", summary.results[1]);
    };
    expect_error(
        &item_status(insufficient),
        Code::FailedPrecondition,
        "INSUFFICIENT_FUNDS",
    );
    let Some(process_result::Outcome::Error(invalid)) = &summary.results[3].outcome else {
        panic!("item 3 should fail: {:?}", summary.results[3]);
    };
    let details = expect_error(
        &item_status(invalid),
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(details.field_violations()[0].field, "amount_minor");

    // Bidi: results in order, one per request; a failing item does not end the stream.
    let stream_items = vec![
        pay("s-1", &alice, &bob, 1, "EUR"),
        pay("s-2", &alice, "nobody", 1, "EUR"),
        pay("s-3", &alice, &bob, 2, "EUR"),
    ];
    let requests = futures_util::stream::iter(
        stream_items
            .into_iter()
            .map(|r| ProcessStreamRequest { request: Some(r) }),
    );
    let results: Vec<_> = api
        .payments
        .process_stream(requests)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(results.len(), 3);
    let outcomes: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap().result.unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(matches!(
        outcomes[0].outcome,
        Some(process_result::Outcome::Response(_))
    ));
    let Some(process_result::Outcome::Error(missing)) = &outcomes[1].outcome else {
        panic!("item 1 should fail: {:?}", outcomes[1]);
    };
    let details = expect_error(&item_status(missing), Code::NotFound, "ACCOUNT_NOT_FOUND");
    assert_eq!(details.resource().unwrap().resource_name, "accounts/nobody");
    assert!(matches!(
        outcomes[2].outcome,
        Some(process_result::Outcome::Response(_))
    ));

    // Unary, paged: every payment of the account, in creation order (tests/paging.rs has
    // the pages).
    let page = api
        .payments
        .list_payments(ListPaymentsRequest {
            account_id: bob.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty(), "one page");
    let listed: Vec<_> = page
        .payments
        .into_iter()
        .map(|p| p.idempotency_key)
        .collect();
    assert_eq!(listed, ["p-1", "b-1", "b-3", "s-1", "s-3"]);
    assert_eq!(
        api.balance(&alice).await + api.balance(&bob).await,
        1_500,
        "money was created or lost"
    );
}

async fn every_business_error_arrives_with_details(db: &TestDb) {
    let mut api = Api::start(db.store.clone(), 0).await;
    let alice = api.account("alice", "EUR").await;
    let bob = api.account("bob", "EUR").await;
    let yen = api.account("yen", "JPY").await;
    api.deposit(&alice, 100, "d").await;

    // INVALID_ARGUMENT with every field violation at once.
    let status = api
        .payments
        .process(pay("", "", "", 0, "euro"))
        .await
        .unwrap_err();
    let details = expect_error(&status, Code::InvalidArgument, "INVALID_REQUEST");
    let fields: Vec<&str> = details
        .field_violations()
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "idempotency_key",
            "payer_account_id",
            "payee_account_id",
            "amount_minor",
            "currency"
        ]
    );

    // NOT_FOUND with ResourceInfo.
    let status = api
        .payments
        .process(pay("k1", "ghost", &bob, 1, "EUR"))
        .await
        .unwrap_err();
    let details = expect_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    assert_eq!(
        details.resource().unwrap().resource_type,
        "payments.v1.Account"
    );
    assert_eq!(details.metadata()["account_id"], "ghost");
    let status = api
        .payments
        .get_payment(GetPaymentRequest {
            payment_id: "pay_none".into(),
        })
        .await
        .unwrap_err();
    let details = expect_error(&status, Code::NotFound, "PAYMENT_NOT_FOUND");
    assert_eq!(
        details.resource().unwrap().resource_name,
        "payments/pay_none"
    );

    // ALREADY_EXISTS.
    let again = CreateAccountRequest {
        account_id: alice.clone(),
        currency: "EUR".into(),
    };
    let status = api.accounts.create_account(again).await.unwrap_err();
    expect_error(&status, Code::AlreadyExists, "ACCOUNT_ALREADY_EXISTS");

    // FAILED_PRECONDITION with PreconditionFailure.
    let status = api
        .payments
        .process(pay("k2", &alice, &bob, 500, "EUR"))
        .await
        .unwrap_err();
    let details = expect_error(&status, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_eq!(
        details.precondition_violations()[0].subject,
        format!("accounts/{alice}")
    );
    let status = api
        .payments
        .process(pay("k3", &alice, &yen, 5, "EUR"))
        .await
        .unwrap_err();
    let details = expect_error(&status, Code::FailedPrecondition, "CURRENCY_MISMATCH");
    assert_eq!(details.metadata()["account_currency"], "JPY");
    let paid = api
        .payments
        .process(pay("k4", &alice, &bob, 50, "EUR"))
        .await
        .unwrap()
        .into_inner();
    let payment_id = paid.payment.unwrap().payment_id;
    let too_much = RefundRequest {
        payment_id: payment_id.clone(),
        amount_minor: 51,
        idempotency_key: "r".into(),
    };
    let status = api.payments.refund(too_much).await.unwrap_err();
    let details = expect_error(&status, Code::FailedPrecondition, "REFUND_EXCEEDS_PAYMENT");
    assert_eq!(details.metadata()["refundable_minor"], "50");
    let status = api
        .payments
        .process(pay("k4", &alice, &bob, 51, "EUR"))
        .await
        .unwrap_err();
    let details = expect_error(&status, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(details.precondition_violations()[0].subject, "k4");
    assert!(!details.is_retryable());
    assert_eq!(
        (api.balance(&alice).await, api.balance(&bob).await),
        (50, 50)
    );
}

async fn rate_limit_trips_with_quota_failure(db: &TestDb) {
    let mut api = Api::start(db.store.clone(), 2).await;
    let alice = api.account("alice", "EUR").await;
    let bob = api.account("bob", "EUR").await;
    api.deposit(&alice, 100, "d").await;
    let mut codes = Vec::new();
    let mut limited = None;
    for i in 0..4 {
        match api
            .payments
            .process(pay(&format!("rl-{i}"), &alice, &bob, 1, "EUR"))
            .await
        {
            Ok(_) => codes.push(Code::Ok),
            Err(status) => {
                codes.push(status.code());
                limited = Some(status);
            }
        }
    }
    assert_eq!(codes[..2], [Code::Ok, Code::Ok], "{codes:?}");
    let status = limited.expect("the third payment within a second is limited");
    let details = expect_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
    assert_eq!(
        details.quota_violations()[0].subject,
        format!("accounts/{alice}")
    );
    assert!(
        details
            .retry_delay()
            .is_some_and(|d| d <= Duration::from_secs(1)),
        "{:?}",
        details.retry_delay()
    );
}

on_both_backends!(
    every_rpc_in_its_mode,
    every_business_error_arrives_with_details,
    rate_limit_trips_with_quota_failure,
);
