//! Fingerprints of request parameters, stored with idempotency keys to tell a retry (same
//! parameters) from a reused key (different parameters).
//!
//! A fingerprint is the SHA-256 of the operation's name and its parameters, each written as its
//! length in bytes (u64, little endian) followed by its bytes, so no two different parameter
//! lists encode alike; metadata is written in key order. The idempotency key itself is not part
//! of it, nor is the caller: they are what the fingerprint is looked up by.

use sha2::{Digest, Sha256};

use super::model::PaymentRequest;

/// Fingerprint of a deposit.
pub(crate) fn deposit(account_id: &str, amount_minor: i64) -> String {
    let mut canonical = Canonical::new("deposit");
    canonical.field(account_id.as_bytes());
    canonical.field(&amount_minor.to_le_bytes());
    canonical.finish()
}

/// Fingerprint of a payment.
pub(crate) fn payment(request: &PaymentRequest) -> String {
    let mut canonical = Canonical::new("payment");
    canonical.field(request.payer_account_id.as_bytes());
    canonical.field(request.payee_account_id.as_bytes());
    canonical.field(&request.amount_minor.to_le_bytes());
    canonical.field(request.currency.as_bytes());
    canonical.field(request.description.as_bytes());
    canonical.field(&(request.metadata.len() as u64).to_le_bytes());
    for (key, value) in &request.metadata {
        canonical.field(key.as_bytes());
        canonical.field(value.as_bytes());
    }
    canonical.finish()
}

/// Fingerprint of a refund.
pub(crate) fn refund(payment_id: &str, amount_minor: i64) -> String {
    let mut canonical = Canonical::new("refund");
    canonical.field(payment_id.as_bytes());
    canonical.field(&amount_minor.to_le_bytes());
    canonical.finish()
}

struct Canonical(Sha256);

impl Canonical {
    fn new(operation: &str) -> Self {
        let mut canonical = Self(Sha256::new());
        canonical.field(operation.as_bytes());
        canonical
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PaymentRequest {
        PaymentRequest {
            idempotency_key: "k".into(),
            payer_account_id: "a".into(),
            payee_account_id: "b".into(),
            amount_minor: 100,
            currency: "USD".into(),
            description: String::new(),
            metadata: [("x".to_owned(), "1".to_owned())].into(),
            caller: None,
        }
    }

    #[test]
    fn same_parameters_same_fingerprint_whatever_the_key() {
        let mut other_key = request();
        other_key.idempotency_key = "other".into();
        assert_eq!(payment(&request()), payment(&other_key));
        assert_eq!(payment(&request()).len(), 64);
    }

    #[test]
    fn every_parameter_counts() {
        let base = payment(&request());
        let changes: [fn(&mut PaymentRequest); 7] = [
            |r| r.payer_account_id.push('x'),
            |r| r.payee_account_id.push('x'),
            |r| r.amount_minor += 1,
            |r| r.currency = "EUR".into(),
            |r| r.description = "d".into(),
            |r| {
                r.metadata.insert("y".into(), "2".into());
            },
            |r| {
                r.metadata.insert("x".into(), "2".into());
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = request();
            change(&mut changed);
            assert_ne!(payment(&changed), base, "change {i}");
        }
    }

    #[test]
    fn fields_do_not_run_into_each_other() {
        let mut ab = request();
        ab.payer_account_id = "ab".into();
        ab.payee_account_id = "c".into();
        let mut a_bc = request();
        a_bc.payer_account_id = "a".into();
        a_bc.payee_account_id = "bc".into();
        assert_ne!(payment(&ab), payment(&a_bc));
        assert_ne!(deposit("a", 1), refund("a", 1), "operations are part of it");
    }
}
