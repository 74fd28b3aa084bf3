//! Store records to wire messages.

use std::time::SystemTime;

use crate::pb::v1 as pb;
use crate::store::{Account, Payment, PaymentStatus};

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

/// The wire form of an account.
pub fn account(account: Account) -> pb::Account {
    pb::Account {
        account_id: account.account_id,
        currency: account.currency,
        balance_minor: account.balance_minor,
        created_at: Some(timestamp(account.created_at)),
        owner: account.owner.unwrap_or_default(),
    }
}

/// The wire form of a payment.
pub fn payment(payment: Payment) -> pb::Payment {
    let status = match payment.status() {
        PaymentStatus::Completed => pb::PaymentStatus::Completed,
        PaymentStatus::PartiallyRefunded => pb::PaymentStatus::PartiallyRefunded,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
    };
    pb::Payment {
        payment_id: payment.payment_id,
        idempotency_key: payment.idempotency_key,
        payer_account_id: payment.payer_account_id,
        payee_account_id: payment.payee_account_id,
        amount_minor: payment.amount_minor,
        currency: payment.currency,
        description: payment.description,
        metadata: payment.metadata.into_iter().collect(),
        status: status as i32,
        refunded_minor: payment.refunded_minor,
        created_at: Some(timestamp(payment.created_at)),
    }
}

/// A status as the `google.rpc.Status` message of a per-item result, details included.
pub fn rpc_status(status: &tonic::Status) -> tonic_types::pb::Status {
    use prost::Message;
    if !status.details().is_empty()
        && let Ok(decoded) = tonic_types::pb::Status::decode(status.details())
    {
        return decoded;
    }
    tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}
