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
    let url = format!("http://{}", serve_payments_at(service).await);
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Serves `service` on a Keel server on 127.0.0.1; returns its gRPC address.
pub async fn serve_payments_at(service: Payments) -> std::net::SocketAddr {
    let mut config = keel::config::ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let server = keel::Server::builder(config)
        .add_service(service.account_service())
        .add_service(service.payment_service())
        .file_descriptor_set(payments::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

/// The random payment traffic of the invariant tests: clients each sending requests between
/// random accounts, some under keys shared across clients (so they race), some sent twice (a
/// client retry), every ABORTED retried up to 20 times.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Concurrent clients, each with its own seeded random sequence.
    pub clients: usize,
    /// Distinct requests each client makes.
    pub requests_per_client: usize,
    /// How many `shared-N` keys the racing 20% of requests draw from.
    pub shared_keys: u32,
    /// Amounts are drawn from `1..max_amount`.
    pub max_amount: i64,
    /// Probability that a request is sent a second time.
    pub resend: f64,
}

/// What the clients of a [`Mix`] saw.
#[derive(Debug, Default)]
pub struct MixOutcome {
    /// Final status codes, one per send (after ABORTED retries).
    pub codes: std::collections::HashMap<tonic::Code, usize>,
    /// Every OK answer: (idempotency key, payment id, amount).
    pub accepted: Vec<(String, String, i64)>,
}

/// Runs `mix` against the payment service between `accounts` and collects the outcomes.
pub async fn drive_payments(channel: &Channel, accounts: &[String], mix: Mix) -> MixOutcome {
    use payments::pb::v1::ProcessRequest;
    use payments::pb::v1::payment_service_client::PaymentServiceClient;
    use rand::{Rng, SeedableRng};

    let clients: Vec<_> = (0..mix.clients)
        .map(|c| {
            let mut client = PaymentServiceClient::new(channel.clone());
            let accounts = accounts.to_vec();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                let mut seen = MixOutcome::default();
                for n in 0..mix.requests_per_client {
                    let payer = rng.random_range(0..accounts.len());
                    let payee = (payer + rng.random_range(1..accounts.len())) % accounts.len();
                    let key = if rng.random_bool(0.2) {
                        format!("shared-{}", rng.random_range(0..mix.shared_keys))
                    } else {
                        format!("c{c}-{n}")
                    };
                    let request = ProcessRequest {
                        idempotency_key: key.clone(),
                        payer_account_id: accounts[payer].clone(),
                        payee_account_id: accounts[payee].clone(),
                        amount_minor: rng.random_range(1..mix.max_amount),
                        currency: "EUR".into(),
                        ..Default::default()
                    };
                    let sends = if rng.random_bool(mix.resend) { 2 } else { 1 };
                    for _ in 0..sends {
                        for attempt in 1.. {
                            let code = match client.process(request.clone()).await {
                                Ok(response) => {
                                    let payment = response.into_inner().payment.unwrap();
                                    seen.accepted.push((
                                        key.clone(),
                                        payment.payment_id,
                                        payment.amount_minor,
                                    ));
                                    tonic::Code::Ok
                                }
                                Err(status) => status.code(),
                            };
                            if code == tonic::Code::Aborted && attempt < 20 {
                                // sleep: backoff before retrying an aborted transaction
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                                continue;
                            }
                            *seen.codes.entry(code).or_default() += 1;
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut total = MixOutcome::default();
    for client in clients {
        let seen = client.await.unwrap();
        for (code, n) in seen.codes {
            *total.codes.entry(code).or_default() += n;
        }
        total.accepted.extend(seen.accepted);
    }
    total
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

    use payments::pb::v1::account_service_client::AccountServiceClient;
    use payments::pb::v1::payment_service_client::PaymentServiceClient;
    use payments::pb::v1::{GetAccountRequest, ListPaymentsRequest};

    // Each payment appears under its payer and its payee.
    let mut listed = BTreeMap::new();
    let mut payment_client = PaymentServiceClient::new(channel.clone());
    for account in accounts {
        let mut page_token = String::new();
        loop {
            let request = ListPaymentsRequest {
                account_id: account.clone(),
                page_size: 1000,
                page_token,
            };
            let page = payment_client
                .list_payments(request)
                .await
                .unwrap()
                .into_inner();
            for payment in page.payments {
                listed.insert(payment.payment_id.clone(), payment);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
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

/// Serves `service` as `payments` does by default: gRPC, and REST/JSON with gRPC-Web on the
/// same port, in-process. Returns the address.
pub async fn serve_payments_with_rest(service: Payments) -> std::net::SocketAddr {
    let mut config = keel::config::ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let server = keel::Server::builder(config)
        .add_service(service.account_service())
        .add_service(service.payment_service())
        .file_descriptor_set(payments::FILE_DESCRIPTOR_SET)
        .http_fallback(payments::rest::fallback(Default::default()).unwrap())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}
