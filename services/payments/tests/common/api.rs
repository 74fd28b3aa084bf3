//! The payments services on an in-process Keel server, for tests over real gRPC.

use std::sync::Arc;

use payments::service::Payments;
use payments::store::Store;
use tonic::transport::Channel;

/// Serves both services on `store` (with `rate_limit` payments per second per payer, `0` for
/// none) on an ephemeral loopback port, and returns a connected channel. The server stops
/// with the test's runtime.
pub async fn serve(store: Arc<dyn Store>, rate_limit: u32) -> Channel {
    serve_payments(Payments::new(store, rate_limit)).await
}

/// Serves `service` (built by the test, e.g. with a Redis limiter over a cached store) as
/// [`serve`] does.
pub async fn serve_payments(service: Payments) -> Channel {
    let config = keel::config::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = keel::Server::builder(config)
        .add_service(service.account_service())
        .add_service(service.payment_service())
        .file_descriptor_set(payments::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.serve(std::future::pending()));
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens `count` EUR accounts `acc-00`, `acc-01`, … over the API, each funded with `deposit`,
/// and returns their ids: the starting point of the invariant tests.
pub async fn funded_accounts(channel: &Channel, count: usize, deposit: i64) -> Vec<String> {
    use payments::pb::v1::account_service_client::AccountServiceClient;
    use payments::pb::v1::{CreateAccountRequest, DepositRequest};

    let mut client = AccountServiceClient::new(channel.clone());
    let mut accounts = Vec::with_capacity(count);
    for i in 0..count {
        let account_id = format!("acc-{i:02}");
        let open = CreateAccountRequest {
            account_id: account_id.clone(),
            currency: "EUR".into(),
        };
        client.create_account(open).await.unwrap();
        let fund = DepositRequest {
            account_id: account_id.clone(),
            amount_minor: deposit,
            idempotency_key: format!("fund-{i}"),
        };
        client.deposit(fund).await.unwrap();
        accounts.push(account_id);
    }
    accounts
}

/// After a run through the API, checks what any run must leave behind: every payment listed
/// once, each idempotency key on at most one payment, no negative balance, every balance equal
/// to its `deposit` plus what its payments imply, and the total equal to the deposits.
/// Returns the payments by id.
pub async fn assert_balances_follow_payments(
    channel: &Channel,
    accounts: &[String],
    deposit: i64,
) -> std::collections::BTreeMap<String, payments::pb::v1::Payment> {
    use std::collections::{BTreeMap, HashMap};

    use futures_util::StreamExt;
    use payments::pb::v1::account_service_client::AccountServiceClient;
    use payments::pb::v1::payment_service_client::PaymentServiceClient;
    use payments::pb::v1::{GetAccountRequest, ListPaymentsRequest};

    // Each payment appears under its payer and its payee.
    let mut listed = BTreeMap::new();
    let mut payment_client = PaymentServiceClient::new(channel.clone());
    for account in accounts {
        let request = ListPaymentsRequest {
            account_id: account.clone(),
        };
        let mut stream = payment_client
            .list_payments(request)
            .await
            .unwrap()
            .into_inner();
        while let Some(item) = stream.next().await {
            let payment = item.unwrap().payment.unwrap();
            listed.insert(payment.payment_id.clone(), payment);
        }
    }
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    let mut expected: HashMap<&str, i64> = accounts.iter().map(|a| (a.as_str(), deposit)).collect();
    for payment in listed.values() {
        *per_key.entry(payment.idempotency_key.as_str()).or_default() += 1;
        *expected.get_mut(payment.payer_account_id.as_str()).unwrap() -= payment.amount_minor;
        *expected.get_mut(payment.payee_account_id.as_str()).unwrap() += payment.amount_minor;
    }
    let reused: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        reused.is_empty(),
        "keys that moved money more than once: {reused:?}"
    );

    let mut account_client = AccountServiceClient::new(channel.clone());
    let mut total = 0;
    for account in accounts {
        let request = GetAccountRequest {
            account_id: account.clone(),
        };
        let response = account_client
            .get_account(request)
            .await
            .unwrap()
            .into_inner();
        let balance = response.account.unwrap().balance_minor;
        assert!(balance >= 0, "{account} is negative: {balance}");
        assert_eq!(
            balance,
            expected[account.as_str()],
            "{account}: balance differs from its payments"
        );
        total += balance;
    }
    assert_eq!(
        total,
        deposit * accounts.len() as i64,
        "money was created or lost"
    );
    listed
}
