//! `payments.v1.AccountService`: open accounts (owned by their creator), read them (their
//! owner only), deposit money (into any account).

use tonic::{Request, Response, Status};

use super::errors::{concurrent_request, store_status};
use super::validate::{Violations, idempotency_key};
use super::{Payments, caller, convert};
use crate::pb::v1::account_service_server::AccountService;
use crate::pb::v1::{
    CreateAccountRequest, CreateAccountResponse, DepositRequest, DepositResponse,
    GetAccountRequest, GetAccountResponse,
};

#[tonic::async_trait]
impl AccountService for Payments {
    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        let owner = caller(request.extensions());
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.optional_id("account_id", &request.account_id);
        violations.currency("currency", &request.currency);
        violations.finish()?;
        let id = (!request.account_id.is_empty()).then_some(request.account_id.as_str());
        let account = self
            .store
            .create_account(id, &request.currency, owner.as_deref())
            .await
            .map_err(store_status)?;
        Ok(Response::new(CreateAccountResponse {
            account: Some(convert::account(account)),
        }))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<GetAccountResponse>, Status> {
        let caller = caller(request.extensions());
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.id("account_id", &request.account_id);
        violations.finish()?;
        let account = self
            .owned_account(&request.account_id, caller.as_deref())
            .await?;
        Ok(Response::new(GetAccountResponse {
            account: Some(convert::account(account)),
        }))
    }

    async fn deposit(
        &self,
        request: Request<DepositRequest>,
    ) -> Result<Response<DepositResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller(&extensions);
        let mut violations = Violations::default();
        violations.id("account_id", &request.account_id);
        violations.amount("amount_minor", request.amount_minor);
        let key = idempotency_key(&request.idempotency_key, &metadata, &mut violations);
        violations.finish()?;
        let _claim = self
            .inflight
            .claim("deposit", caller.as_deref(), &key)
            .ok_or_else(|| concurrent_request(&key))?;
        let outcome = self
            .store
            .deposit(
                &request.account_id,
                request.amount_minor,
                &key,
                caller.as_deref(),
            )
            .await
            .map_err(store_status)?;
        // Anyone may credit an account, but only its owner sees its balance.
        let account = outcome.value;
        Ok(Response::new(DepositResponse {
            account: account
                .is_owned_by(caller.as_deref())
                .then(|| convert::account(account)),
            replayed: outcome.replayed,
        }))
    }
}
