//! `payments.v1.AccountService`: open accounts, read them, deposit money.

use tonic::{Request, Response, Status};

use super::errors::{concurrent_request, store_status};
use super::validate::{Violations, idempotency_key};
use super::{Payments, convert};
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
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.optional_id("account_id", &request.account_id);
        violations.currency("currency", &request.currency);
        violations.finish()?;
        let id = (!request.account_id.is_empty()).then_some(request.account_id.as_str());
        let account = self
            .store
            .create_account(id, &request.currency)
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
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.id("account_id", &request.account_id);
        violations.finish()?;
        let account = self
            .store
            .get_account(&request.account_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(GetAccountResponse {
            account: Some(convert::account(account)),
        }))
    }

    async fn deposit(
        &self,
        request: Request<DepositRequest>,
    ) -> Result<Response<DepositResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let mut violations = Violations::default();
        violations.id("account_id", &request.account_id);
        violations.amount("amount_minor", request.amount_minor);
        let key = idempotency_key(&request.idempotency_key, &metadata, &mut violations);
        violations.finish()?;
        let _claim = self
            .inflight
            .claim("deposit", &key)
            .ok_or_else(|| concurrent_request(&key))?;
        let outcome = self
            .store
            .deposit(&request.account_id, request.amount_minor, &key)
            .await
            .map_err(store_status)?;
        Ok(Response::new(DepositResponse {
            account: Some(convert::account(outcome.value)),
            replayed: outcome.replayed,
        }))
    }
}
