//! Reads the rich details of a received `Status` back, without ever trusting the peer's bytes.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tonic::Status;
use tonic_types::{FieldViolation, PreconditionViolation, QuotaViolation, ResourceInfo, pb};

use super::Retry;

/// What a failed call's `grpc-status-details-bin` says, read into plain values.
///
/// Reading never fails and never panics, whatever the peer sent. Absent details give an
/// empty view. Undecodable ones give an empty view too, with [`is_malformed`] set; so do
/// details whose `google.rpc.Status` code disagrees with the status code. A single
/// undecodable detail is skipped (and sets [`is_malformed`]) while the others are kept.
/// Detail types other than the six below are ignored. If a peer repeats a detail type, the
/// first `ErrorInfo`, `RetryInfo` and `ResourceInfo` win and violations are concatenated.
///
/// ```
/// use keel_core::error::{BusinessError, Details};
///
/// let status: tonic::Status = BusinessError::invalid_argument("INVALID_PAYMENT", "bad amount")
///     .field_violation("amount", "must be positive")
///     .into();
/// let details = Details::from_status(&status);
/// assert_eq!(details.reason(), Some("INVALID_PAYMENT"));
/// assert_eq!(details.field_violations()[0].field, "amount");
/// assert!(!details.is_retryable());
/// ```
///
/// [`is_malformed`]: Self::is_malformed
#[derive(Debug, Clone, Default)]
pub struct Details {
    reason: Option<String>,
    domain: Option<String>,
    metadata: BTreeMap<String, String>,
    retry: Option<Retry>,
    field_violations: Vec<FieldViolation>,
    precondition_violations: Vec<PreconditionViolation>,
    resource: Option<ResourceInfo>,
    quota_violations: Vec<QuotaViolation>,
    malformed: bool,
}

/// A detail that could not be read; the view records only that.
struct Malformed;

impl Details {
    /// Reads the details of `status`.
    pub fn from_status(status: &Status) -> Self {
        let bytes = status.details();
        if bytes.is_empty() {
            return Self::default();
        }
        let malformed = Self {
            malformed: true,
            ..Self::default()
        };
        let Ok(rpc_status) = pb::Status::decode(bytes) else {
            return malformed;
        };
        if rpc_status.code != status.code() as i32 {
            return malformed;
        }
        let mut view = Self::default();
        for any in &rpc_status.details {
            if view.read(&any.type_url, &any.value).is_err() {
                view.malformed = true;
            }
        }
        view
    }

    /// Adds one `google.protobuf.Any` detail to the view.
    fn read(&mut self, type_url: &str, value: &[u8]) -> Result<(), Malformed> {
        // The type name is what follows the last '/', whatever the host before it.
        let type_name = type_url.rsplit('/').next().unwrap_or_default();
        match type_name {
            "google.rpc.ErrorInfo" => {
                let info: pb::ErrorInfo = decode(value)?;
                if self.reason.is_none() {
                    self.reason = Some(info.reason);
                    self.domain = Some(info.domain);
                    self.metadata = info.metadata.into_iter().collect();
                }
            }
            "google.rpc.RetryInfo" => {
                let info: pb::RetryInfo = decode(value)?;
                let retry = match info.retry_delay {
                    None => Retry::WithBackoff,
                    Some(delay) => Retry::After(retry_delay(delay.seconds, delay.nanos)?),
                };
                self.retry.get_or_insert(retry);
            }
            "google.rpc.BadRequest" => {
                let request: pb::BadRequest = decode(value)?;
                let violations = request.field_violations.into_iter().map(Into::into);
                self.field_violations.extend(violations);
            }
            "google.rpc.PreconditionFailure" => {
                let failure: pb::PreconditionFailure = decode(value)?;
                let violations = failure.violations.into_iter().map(Into::into);
                self.precondition_violations.extend(violations);
            }
            "google.rpc.ResourceInfo" => {
                let info: pb::ResourceInfo = decode(value)?;
                self.resource.get_or_insert(info.into());
            }
            "google.rpc.QuotaFailure" => {
                let failure: pb::QuotaFailure = decode(value)?;
                let violations = failure.violations.into_iter().map(Into::into);
                self.quota_violations.extend(violations);
            }
            _ => {}
        }
        Ok(())
    }

    /// The `ErrorInfo` reason (UPPER_SNAKE from Keel servers), `None` without `ErrorInfo`.
    /// Match on it together with [`domain`](Self::domain).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The `ErrorInfo` domain that owns the reason, `None` without `ErrorInfo`.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The `ErrorInfo` metadata, empty without `ErrorInfo`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// What `RetryInfo` says: [`Retry::Never`] when the server sent none.
    ///
    /// This is what the server said about its own error. A status without details, such as
    /// tonic's UNAVAILABLE for a refused connection, reads as [`Retry::Never`]: transport
    /// failures are the retry policy's business, not this view's.
    pub fn retry(&self) -> Retry {
        self.retry.unwrap_or_default()
    }

    /// Whether the server said the same request may be sent again (it sent `RetryInfo`).
    pub fn is_retryable(&self) -> bool {
        self.retry().is_retryable()
    }

    /// The delay the server asked for before a retry (`RetryInfo.retry_delay`); negative
    /// delays read as zero.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry().delay()
    }

    /// The `BadRequest` field violations.
    pub fn field_violations(&self) -> &[FieldViolation] {
        &self.field_violations
    }

    /// The `PreconditionFailure` violations.
    pub fn precondition_violations(&self) -> &[PreconditionViolation] {
        &self.precondition_violations
    }

    /// The `ResourceInfo`, if any.
    pub fn resource(&self) -> Option<&ResourceInfo> {
        self.resource.as_ref()
    }

    /// The `QuotaFailure` violations.
    pub fn quota_violations(&self) -> &[QuotaViolation] {
        &self.quota_violations
    }

    /// Whether the peer sent details that could not be read in whole or in part: not a
    /// `google.rpc.Status`, one with a different code, or a detail of a known type that did
    /// not decode. What could be read is still in the view.
    pub fn is_malformed(&self) -> bool {
        self.malformed
    }
}

impl From<&Status> for Details {
    fn from(status: &Status) -> Self {
        Self::from_status(status)
    }
}

fn decode<M: Message + Default>(value: &[u8]) -> Result<M, Malformed> {
    M::decode(value).map_err(|_| Malformed)
}

/// A `google.protobuf.Duration` as a delay: out-of-range or mixed-sign values are malformed,
/// negative ones mean "now".
fn retry_delay(seconds: i64, nanos: i32) -> Result<Duration, Malformed> {
    let nanos_in_range = (-999_999_999..=999_999_999).contains(&nanos);
    let same_sign = !(seconds > 0 && nanos < 0 || seconds < 0 && nanos > 0);
    if !nanos_in_range || !same_sign {
        return Err(Malformed);
    }
    match (u64::try_from(seconds), u32::try_from(nanos)) {
        (Ok(seconds), Ok(nanos)) => Ok(Duration::new(seconds, nanos)),
        _ => Ok(Duration::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tonic::Code;

    use super::*;
    use crate::error::BusinessError;

    /// A status with every kind of detail, as a Keel server sends it.
    fn full_status() -> Status {
        BusinessError::resource_exhausted("DAILY_LIMIT", "limit reached")
            .domain("payments.keel.dev")
            .metadata("account_id", "acc_1")
            .field_violation("amount", "too large")
            .precondition_violation("BALANCE", "accounts/acc_1", "too low")
            .resource("keel.payments.v1.Account", "accounts/acc_1", "frozen")
            .quota_violation("account:acc_1", "10 per day")
            .retry_after(Duration::from_millis(250))
            .into_status()
    }

    fn with_details(code: Code, details: impl Into<Bytes>) -> Status {
        Status::with_details(code, "message", details.into())
    }

    fn encode_rpc(status: &pb::Status) -> Vec<u8> {
        status.encode_to_vec()
    }

    /// A `google.rpc.Status` of `code` with one detail per `(type_url, value)`.
    fn rpc_status(code: Code, details: &[(&str, Vec<u8>)]) -> pb::Status {
        let mut status = pb::Status {
            code: code as i32,
            ..Default::default()
        };
        for (type_url, value) in details {
            status.details.push(Default::default());
            let any = status.details.last_mut().expect("just pushed");
            any.type_url = (*type_url).to_owned();
            any.value.clone_from(value);
        }
        status
    }

    fn retry_info(seconds: i64, nanos: i32) -> Vec<u8> {
        let mut info = pb::RetryInfo {
            retry_delay: Some(Default::default()),
        };
        let delay = info.retry_delay.as_mut().expect("set");
        delay.seconds = seconds;
        delay.nanos = nanos;
        info.encode_to_vec()
    }

    #[test]
    fn reads_every_detail_of_a_keel_status() {
        let details = Details::from_status(&full_status());
        assert!(!details.is_malformed());
        assert_eq!(details.reason(), Some("DAILY_LIMIT"));
        assert_eq!(details.domain(), Some("payments.keel.dev"));
        assert_eq!(details.metadata()["account_id"], "acc_1");
        assert_eq!(details.retry(), Retry::After(Duration::from_millis(250)));
        assert_eq!(details.field_violations()[0].field, "amount");
        assert_eq!(details.precondition_violations()[0].r#type, "BALANCE");
        assert_eq!(details.resource().expect("resource").description, "frozen");
        assert_eq!(details.quota_violations()[0].subject, "account:acc_1");
    }

    #[test]
    fn absent_details_read_as_an_empty_well_formed_view() {
        let details = Details::from_status(&Status::unavailable("connection refused"));
        assert!(!details.is_malformed());
        assert_eq!(details.reason(), None);
        assert_eq!(details.retry(), Retry::Never);
        assert!(details.metadata().is_empty());
    }

    #[test]
    fn garbage_reads_as_an_empty_malformed_view() {
        for garbage in [&b"\xff\xff\xff"[..], b"not protobuf at all", b"\x0a\x05ab"] {
            let details = Details::from_status(&with_details(Code::Internal, garbage.to_vec()));
            assert!(details.is_malformed(), "{garbage:?}");
            assert_eq!(details.reason(), None);
        }
    }

    #[test]
    fn details_for_another_code_are_ignored_as_malformed() {
        let status = full_status();
        let relabelled = with_details(Code::NotFound, status.details().to_vec());
        let details = Details::from_status(&relabelled);
        assert!(details.is_malformed());
        assert_eq!(details.reason(), None);
        assert!(details.quota_violations().is_empty());
    }

    #[test]
    fn one_broken_detail_spoils_only_itself() {
        let info = pb::ErrorInfo {
            reason: "KEPT".into(),
            ..Default::default()
        };
        let rpc = rpc_status(
            Code::Aborted,
            &[
                ("type.googleapis.com/google.rpc.BadRequest", vec![0xff; 4]),
                (
                    "type.googleapis.com/google.rpc.ErrorInfo",
                    info.encode_to_vec(),
                ),
            ],
        );
        let details = Details::from_status(&with_details(Code::Aborted, encode_rpc(&rpc)));
        assert!(details.is_malformed());
        assert_eq!(details.reason(), Some("KEPT"));
        assert!(details.field_violations().is_empty());
    }

    #[test]
    fn type_urls_match_by_type_name_and_unknown_types_are_ignored() {
        let info = |reason: &str| {
            pb::ErrorInfo {
                reason: reason.into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let rpc = rpc_status(
            Code::Aborted,
            &[
                ("example.com/acme.Custom", vec![0xff; 4]),
                ("/google.rpc.ErrorInfo", info("FIRST")),
                ("type.googleapis.com/google.rpc.ErrorInfo", info("SECOND")),
            ],
        );
        let details = Details::from_status(&with_details(Code::Aborted, encode_rpc(&rpc)));
        assert!(!details.is_malformed());
        assert_eq!(details.reason(), Some("FIRST"));
    }

    #[test]
    fn retry_delays_are_checked() {
        let url = "type.googleapis.com/google.rpc.RetryInfo";
        let max = Duration::new(i64::MAX as u64, 999_999_999);
        for (seconds, nanos, expect) in [
            (1, 500_000_000, Some(Duration::from_millis(1500))),
            (0, 0, Some(Duration::ZERO)),
            (-5, 0, Some(Duration::ZERO)),
            (-5, -1, Some(Duration::ZERO)),
            (i64::MIN, -999_999_999, Some(Duration::ZERO)),
            (i64::MAX, 999_999_999, Some(max)),
            (0, 1_000_000_000, None),
            (0, i32::MIN, None),
            (0, i32::MAX, None),
            (1, -1, None),
            (-1, 1, None),
        ] {
            let rpc = rpc_status(Code::Unavailable, &[(url, retry_info(seconds, nanos))]);
            let details = Details::from_status(&with_details(Code::Unavailable, encode_rpc(&rpc)));
            match expect {
                Some(delay) => {
                    assert!(!details.is_malformed(), "{seconds} {nanos}");
                    assert_eq!(details.retry(), Retry::After(delay), "{seconds} {nanos}");
                }
                None => {
                    assert!(details.is_malformed(), "{seconds} {nanos}");
                    assert_eq!(details.retry(), Retry::Never, "{seconds} {nanos}");
                }
            }
        }
    }

    /// Reads `bytes` as the details of statuses of a few codes, including the one they claim
    /// if they decode, so that the details are read; panics are the failure.
    fn read_all_codes(bytes: &[u8]) {
        let claimed = pb::Status::decode(bytes).map(|rpc| Code::from_i32(rpc.code));
        for code in [Code::Internal, Code::ResourceExhausted]
            .into_iter()
            .chain(claimed.ok())
        {
            let details = Details::from_status(&with_details(code, bytes.to_vec()));
            // Touch everything, as a client would.
            let _ = (details.reason(), details.domain(), details.retry_delay());
            let _ = (details.metadata().len(), details.field_violations().len());
            let _ = (details.precondition_violations(), details.resource());
            let _ = (details.quota_violations(), details.is_retryable());
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5_000 {
            let len = rng.random_range(0..256);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            read_all_codes(&bytes);
        }
    }

    /// Mutates `bytes` in place with one of a few byte-level edits.
    fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            return;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..6) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = rng.random(),
            2 => bytes.insert(at, rng.random()),
            3 => {
                bytes.remove(at);
            }
            4 => bytes.truncate(at),
            _ => {
                let end = rng.random_range(at..=bytes.len());
                let slice = bytes[at..end].to_vec();
                bytes.splice(at..at, slice);
            }
        }
    }

    #[test]
    fn mutations_of_a_valid_encoding_never_panic() {
        let valid = full_status().details().to_vec();
        read_all_codes(&valid);
        assert!(!Details::from_status(&full_status()).is_malformed());
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..10_000 {
            let mut bytes = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut rng, &mut bytes);
            }
            read_all_codes(&bytes);
        }
    }

    #[test]
    fn mutations_inside_each_detail_never_panic() {
        // Byte edits of the outer message mostly break it early; these reach the detail
        // decoders behind a well-formed envelope.
        let valid = pb::Status::decode(full_status().details()).expect("valid");
        let mut rng = StdRng::seed_from_u64(3);
        let mut malformed = 0;
        for _ in 0..10_000 {
            let mut rpc = valid.clone();
            let index = rng.random_range(0..rpc.details.len());
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut rng, &mut rpc.details[index].value);
            }
            let bytes = encode_rpc(&rpc);
            read_all_codes(&bytes);
            let status = with_details(Code::ResourceExhausted, bytes);
            malformed += usize::from(Details::from_status(&status).is_malformed());
        }
        assert!(
            malformed > 1_000,
            "mutations should often break a detail: {malformed}"
        );
    }
}
