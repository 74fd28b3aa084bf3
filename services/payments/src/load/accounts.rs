//! The calls both load tools make around a run: connect, open and fund their own accounts,
//! read balances back, and list an account's payments to the end.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::v1::account_service_client::AccountServiceClient;
use crate::pb::v1::payment_service_client::PaymentServiceClient;
use crate::pb::v1::{
    CreateAccountRequest, DepositRequest, GetAccountRequest, ListPaymentsRequest, Payment,
};

/// Accounts opened at once by [`open_accounts`].
const OPEN_AT_ONCE: usize = 16;

/// A call a load tool made failed; says which call, with the server's status as the source.
#[derive(Debug, thiserror::Error)]
#[error("{call}")]
pub struct CallError {
    /// The call and its subject, e.g. `CreateAccount run1-d0-payer`.
    pub call: String,
    /// What the server (or the transport) answered.
    #[source]
    pub status: tonic::Status,
}

impl CallError {
    fn new(call: impl Into<String>, status: tonic::Status) -> Self {
        Self {
            call: call.into(),
            status,
        }
    }
}

/// A lazily checked endpoint for `target` (`http://HOST:PORT`) as the load tools use it:
/// no Nagle delay, a 5 s connect timeout.
pub fn endpoint(target: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5)))
}

/// Opens each `(account id, deposit)` in `currency`, anonymously, sixteen at a time, and
/// funds it with one Deposit under the key `{id}-deposit` (none for a deposit of 0). An id
/// that exists already is an error: a run's accounts are its own.
pub async fn open_accounts(
    channel: &Channel,
    accounts: &[(String, i64)],
    currency: &str,
) -> Result<(), CallError> {
    for chunk in accounts.chunks(OPEN_AT_ONCE) {
        let mut tasks = tokio::task::JoinSet::new();
        for (id, deposit) in chunk {
            let mut client = AccountServiceClient::new(channel.clone());
            let (id, deposit, currency) = (id.clone(), *deposit, currency.to_owned());
            tasks.spawn(async move {
                let open = CreateAccountRequest {
                    account_id: id.clone(),
                    currency,
                };
                client
                    .create_account(open)
                    .await
                    .map_err(|status| CallError::new(format!("CreateAccount {id}"), status))?;
                if deposit > 0 {
                    let fund = DepositRequest {
                        account_id: id.clone(),
                        amount_minor: deposit,
                        idempotency_key: format!("{id}-deposit"),
                    };
                    client
                        .deposit(fund)
                        .await
                        .map_err(|status| CallError::new(format!("Deposit into {id}"), status))?;
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|error| {
                CallError::new(
                    "opening accounts",
                    tonic::Status::internal(error.to_string()),
                )
            })??;
        }
    }
    Ok(())
}

/// The balance of `account_id`, in minor units.
pub async fn balance(channel: &Channel, account_id: &str) -> Result<i64, CallError> {
    let request = GetAccountRequest {
        account_id: account_id.to_owned(),
    };
    let call = || format!("GetAccount {account_id}");
    let account = AccountServiceClient::new(channel.clone())
        .get_account(request)
        .await
        .map_err(|status| CallError::new(call(), status))?
        .into_inner()
        .account
        .ok_or_else(|| CallError::new(call(), tonic::Status::internal("no account")))?;
    Ok(account.balance_minor)
}

/// Every payment `account_id` paid or received, oldest first, read page by page to the end.
pub async fn payments_of(channel: &Channel, account_id: &str) -> Result<Vec<Payment>, CallError> {
    let mut client = PaymentServiceClient::new(channel.clone());
    let mut payments = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListPaymentsRequest {
            account_id: account_id.to_owned(),
            page_size: 1000,
            page_token,
        };
        let page = client
            .list_payments(request)
            .await
            .map_err(|status| CallError::new(format!("ListPayments {account_id}"), status))?
            .into_inner();
        payments.extend(page.payments);
        if page.next_page_token.is_empty() {
            return Ok(payments);
        }
        page_token = page.next_page_token;
    }
}
