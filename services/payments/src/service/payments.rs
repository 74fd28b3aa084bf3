//! `payments.v1.PaymentService`: payments one by one, in batches and in streams, reads, pages
//! and refunds.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::errors::{
    account_not_owned, concurrent_request, payment_not_owned, rate_limited, store_status,
};
use super::validate::{MAX_DESCRIPTION_LEN, Violations, idempotency_key};
use super::{Payments, caller, convert, paging};
use crate::pb::v1::payment_service_server::PaymentService;
use crate::pb::v1::{
    GetPaymentRequest, GetPaymentResponse, ListPaymentsRequest, ListPaymentsResponse,
    ProcessBatchRequest, ProcessBatchResponse, ProcessRequest, ProcessResponse, ProcessResult,
    ProcessStreamRequest, ProcessStreamResponse, RefundRequest, RefundResponse, process_result,
};
use crate::store::PaymentRequest;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Payments {
    /// Validates, rate-limits, claims the key and processes one payment for `caller`.
    /// `metadata` is the call's, for the `idempotency-key` header (only unary calls use it:
    /// in a stream each item carries its own key).
    async fn process_one(
        &self,
        request: ProcessRequest,
        metadata: &MetadataMap,
        caller: Option<&str>,
    ) -> Result<ProcessResponse, Status> {
        let mut violations = Violations::default();
        let key = idempotency_key(&request.idempotency_key, metadata, &mut violations);
        violations.id("payer_account_id", &request.payer_account_id);
        violations.id("payee_account_id", &request.payee_account_id);
        if !request.payer_account_id.is_empty()
            && request.payer_account_id == request.payee_account_id
        {
            violations.add("payee_account_id", "must differ from payer_account_id");
        }
        violations.amount("amount_minor", request.amount_minor);
        violations.currency("currency", &request.currency);
        violations.text("description", &request.description, MAX_DESCRIPTION_LEN);
        violations.metadata("metadata", request.metadata.iter());
        violations.finish()?;

        if let Some(limiter) = &self.limiter {
            // A caller who may not debit the payer must not spend its owner's budget either.
            // Owners never change, so this early read cannot be raced; the store's check in
            // the debit's transaction stays the one that decides.
            if let Ok(payer) = self.store.get_account(&request.payer_account_id).await
                && !payer.is_owned_by(caller)
            {
                return Err(account_not_owned(&request.payer_account_id));
            }
            if let Err(wait) = limiter.admit(&request.payer_account_id).await {
                return Err(rate_limited(&request.payer_account_id, wait));
            }
        }
        let _claim = self
            .inflight
            .claim("process", caller, &key)
            .ok_or_else(|| concurrent_request(&key))?;
        let request = PaymentRequest {
            idempotency_key: key,
            payer_account_id: request.payer_account_id,
            payee_account_id: request.payee_account_id,
            amount_minor: request.amount_minor,
            currency: request.currency,
            description: request.description,
            metadata: request.metadata.into_iter().collect(),
            caller: caller.map(str::to_owned),
        };
        let outcome = self.store.process(&request).await.map_err(store_status)?;
        Ok(ProcessResponse {
            payment: Some(convert::payment(outcome.value)),
            replayed: outcome.replayed,
        })
    }

    /// One item of a batch or stream, for the stream's `caller`: its response, or its error
    /// as a `google.rpc.Status`.
    async fn process_item(
        &self,
        index: u32,
        request: Option<ProcessRequest>,
        caller: Option<&str>,
    ) -> ProcessResult {
        let outcome = match request {
            Some(request) => self.process_one(request, &MetadataMap::new(), caller).await,
            None => Err(Violations::missing("request")),
        };
        ProcessResult {
            index,
            outcome: Some(match outcome {
                Ok(response) => process_result::Outcome::Response(response),
                Err(status) => process_result::Outcome::Error(convert::rpc_status(&status)),
            }),
        }
    }
}

#[tonic::async_trait]
impl PaymentService for Payments {
    async fn process(
        &self,
        request: Request<ProcessRequest>,
    ) -> Result<Response<ProcessResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller(&extensions);
        Ok(Response::new(
            self.process_one(request, &metadata, caller.as_deref())
                .await?,
        ))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let caller = caller(request.extensions());
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.id("payment_id", &request.payment_id);
        violations.finish()?;
        let payment = self
            .store
            .get_payment(&request.payment_id)
            .await
            .map_err(store_status)?;
        // Readable by either side's owner; owners never change, so separate reads will do.
        let mut visible = false;
        for account_id in [&payment.payer_account_id, &payment.payee_account_id] {
            let account = self
                .store
                .get_account(account_id)
                .await
                .map_err(store_status)?;
            if account.is_owned_by(caller.as_deref()) {
                visible = true;
                break;
            }
        }
        if !visible {
            return Err(payment_not_owned(&request.payment_id));
        }
        Ok(Response::new(GetPaymentResponse {
            payment: Some(convert::payment(payment)),
        }))
    }

    async fn list_payments(
        &self,
        request: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        let caller = caller(request.extensions());
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.id("account_id", &request.account_id);
        let page_size = self.paging.page_size(request.page_size, &mut violations);
        let after = paging::start(&request.page_token, &request.account_id, &mut violations);
        violations.finish()?;
        self.owned_account(&request.account_id, caller.as_deref())
            .await?;
        // One more than the page, to know whether another follows.
        let found = self
            .store
            .list_payments(
                &request.account_id,
                after.as_ref(),
                page_size.saturating_add(1),
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.paging.page(
            found,
            page_size,
            &request.account_id,
        )))
    }

    async fn process_batch(
        &self,
        request: Request<Streaming<ProcessBatchRequest>>,
    ) -> Result<Response<ProcessBatchResponse>, Status> {
        let caller = caller(request.extensions());
        let mut items = request.into_inner();
        let mut summary = ProcessBatchResponse::default();
        let mut index = 0;
        while let Some(item) = items.next().await {
            let result = self
                .process_item(index, item?.request, caller.as_deref())
                .await;
            match result.outcome {
                Some(process_result::Outcome::Response(_)) => summary.accepted += 1,
                _ => summary.rejected += 1,
            }
            summary.results.push(result);
            index += 1;
        }
        Ok(Response::new(summary))
    }

    type ProcessStreamStream = ResponseStream<ProcessStreamResponse>;

    async fn process_stream(
        &self,
        request: Request<Streaming<ProcessStreamRequest>>,
    ) -> Result<Response<Self::ProcessStreamStream>, Status> {
        let caller = caller(request.extensions());
        let items = request.into_inner();
        let service = self.clone();
        // Items run one after another, in order: a later payment may depend on an earlier one.
        let results = items.enumerate().then(move |(index, item)| {
            let service = service.clone();
            let caller = caller.clone();
            async move {
                let item = item?;
                let result = service
                    .process_item(index as u32, item.request, caller.as_deref())
                    .await;
                Ok(ProcessStreamResponse {
                    result: Some(result),
                })
            }
        });
        Ok(Response::new(Box::pin(results)))
    }

    async fn refund(
        &self,
        request: Request<RefundRequest>,
    ) -> Result<Response<RefundResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller(&extensions);
        let mut violations = Violations::default();
        violations.id("payment_id", &request.payment_id);
        violations.amount("amount_minor", request.amount_minor);
        let key = idempotency_key(&request.idempotency_key, &metadata, &mut violations);
        violations.finish()?;
        let _claim = self
            .inflight
            .claim("refund", caller.as_deref(), &key)
            .ok_or_else(|| concurrent_request(&key))?;
        let outcome = self
            .store
            .refund(
                &request.payment_id,
                request.amount_minor,
                &key,
                caller.as_deref(),
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(RefundResponse {
            payment: Some(convert::payment(outcome.value)),
            replayed: outcome.replayed,
        }))
    }
}
