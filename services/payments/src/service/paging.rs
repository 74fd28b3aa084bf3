//! ListPayments pages (AIP-158): the size a request gets, where a page ends, and page tokens.
//!
//! A page token is opaque to clients. Inside, it is URL-safe base64 without padding (nothing
//! to escape in a query string) of `[1: version][created_at_us: i64 BE][fingerprint: 8
//! bytes][payment_id]`: the [`ListPosition`] of the last payment of the page before, and the
//! first 8 bytes of a SHA-256 of the request's other parameters (the method and `account_id`),
//! so a token continues only the listing it came from (AIP-158 asks for INVALID_ARGUMENT when
//! they change; `page_size` may). Tokens are not signed and never expire: a forged one only
//! moves where a listing of the same account starts, which its caller may read whole anyway,
//! and a position stays meaningful for ever because payments are never deleted.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use sha2::{Digest, Sha256};

use super::convert;
use super::validate::{Violations, is_id};
use crate::pb::v1::ListPaymentsResponse;
use crate::store::{ListPosition, Payment};

/// The first byte of every token this service issues.
const VERSION: u8 = 1;
/// Bytes of the request fingerprint in a token.
const FINGERPRINT_LEN: usize = 8;
/// Bytes of a token before its payment id.
const HEADER_LEN: usize = 1 + 8 + FINGERPRINT_LEN;
/// The longest token decoded: one with the longest payment id is 194 characters.
const MAX_TOKEN_LEN: usize = 256;
/// Room kept in a page's byte budget for its `next_page_token` field and the gRPC frame.
const TOKEN_ROOM: usize = 512;

/// How ListPayments pages: the service's `list_*` settings, and the largest message the server
/// sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// The page size of a request that sets none (`page_size` 0); at least 1.
    pub default_page_size: u32,
    /// The largest page size; a larger request gets this many. At least `default_page_size`.
    pub max_page_size: u32,
    /// The largest encoded response: a page stops before the payment that would pass it (a
    /// payment may be 21 KB, with its description and metadata), but holds one payment
    /// whatever its size. The server's `limits.max_send_message_size`.
    pub max_page_bytes: usize,
}

impl Default for Paging {
    /// 50 payments a page, at most 1000, within Keel's default 4 MiB message limit.
    fn default() -> Self {
        Self {
            default_page_size: 50,
            max_page_size: 1000,
            max_page_bytes: 4 << 20,
        }
    }
}

impl Paging {
    /// The page size for a request's `page_size`: 0 is the default, more than the maximum is
    /// the maximum, negative is a violation.
    pub(super) fn page_size(&self, requested: i32, violations: &mut Violations) -> u32 {
        match u32::try_from(requested) {
            Ok(0) => self.default_page_size,
            Ok(size) => size.min(self.max_page_size),
            Err(_) => {
                violations.add(
                    "page_size",
                    format!("must not be negative, got {requested}; 0 asks for the default"),
                );
                self.default_page_size
            }
        }
    }

    /// The response for `found`, the payments of `account_id` read for a page of `page_size`
    /// (one more than the page, when more follow). The page ends at `page_size` payments or
    /// before the byte budget runs out; `next_page_token` is set when a payment was left out.
    pub(super) fn page(
        &self,
        found: Vec<Payment>,
        page_size: u32,
        account_id: &str,
    ) -> ListPaymentsResponse {
        let budget = self.max_page_bytes.saturating_sub(TOKEN_ROOM);
        let mut page = ListPaymentsResponse::default();
        let mut bytes = 0;
        let mut last: Option<ListPosition> = None;
        for payment in found {
            let position = ListPosition::of(&payment);
            let payment = convert::payment(payment);
            // The field's tag and length prefix, then the payment.
            let size =
                1 + prost::length_delimiter_len(payment.encoded_len()) + payment.encoded_len();
            let full = page.payments.len() >= page_size as usize || bytes + size > budget;
            if let (true, Some(last)) = (full, &last) {
                page.next_page_token = encode(last, account_id);
                break;
            }
            bytes += size;
            page.payments.push(payment);
            last = Some(position);
        }
        page
    }
}

/// Why a page token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenError {
    /// Not a token this service issued: bad base64, another version, a truncated or altered
    /// body.
    Malformed,
    /// A token of this service, for another request (another account).
    OtherRequest,
}

impl TokenError {
    /// The field violation's description.
    fn description(self) -> &'static str {
        match self {
            Self::Malformed => {
                "is not a page token of ListPayments; pass the previous page's next_page_token \
                 unchanged, or none for the first page"
            }
            Self::OtherRequest => {
                "was issued for another request; a page token continues only the listing it \
                 came from, with the same account_id"
            }
        }
    }
}

/// Where the page of a request with `token` starts: `None` for the first page (no token). A
/// refused token is a violation of `page_token`.
pub(super) fn start(
    token: &str,
    account_id: &str,
    violations: &mut Violations,
) -> Option<ListPosition> {
    decode(token, account_id).unwrap_or_else(|error| {
        violations.add("page_token", error.description());
        None
    })
}

/// The token of the page after the one ending at `last`, for a listing of `account_id`.
pub(super) fn encode(last: &ListPosition, account_id: &str) -> String {
    let mut bytes = Vec::with_capacity(HEADER_LEN + last.payment_id.len());
    bytes.push(VERSION);
    bytes.extend_from_slice(&last.created_at_us.to_be_bytes());
    bytes.extend_from_slice(&fingerprint(account_id));
    bytes.extend_from_slice(last.payment_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position a token carries, `None` for the empty token.
pub(super) fn decode(token: &str, account_id: &str) -> Result<Option<ListPosition>, TokenError> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    let (header, payment_id) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(TokenError::Malformed)?;
    let (version, rest) = header.split_first().ok_or(TokenError::Malformed)?;
    let (created_at_us, token_fingerprint) = rest.split_at(8);
    let created_at_us = i64::from_be_bytes(created_at_us.try_into().expect("8 bytes"));
    let payment_id = std::str::from_utf8(payment_id).map_err(|_| TokenError::Malformed)?;
    if *version != VERSION || created_at_us < 0 || payment_id.is_empty() || !is_id(payment_id) {
        return Err(TokenError::Malformed);
    }
    if token_fingerprint != fingerprint(account_id) {
        return Err(TokenError::OtherRequest);
    }
    Ok(Some(ListPosition {
        created_at_us,
        payment_id: payment_id.to_owned(),
    }))
}

/// The request parameters a token is bound to, hashed: every ListPayments parameter except
/// `page_size` and `page_token`. A new filter or ordering parameter belongs here.
fn fingerprint(account_id: &str) -> [u8; FINGERPRINT_LEN] {
    let mut hash = Sha256::new();
    hash.update(b"payments.v1.PaymentService/ListPayments\0");
    hash.update((account_id.len() as u64).to_be_bytes());
    hash.update(account_id.as_bytes());
    let digest = hash.finalize();
    let mut fingerprint = [0; FINGERPRINT_LEN];
    fingerprint.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    fingerprint
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn position(created_at_us: i64, payment_id: &str) -> ListPosition {
        ListPosition {
            created_at_us,
            payment_id: payment_id.to_owned(),
        }
    }

    /// A random position, ids of every allowed character and length.
    fn random_position(rng: &mut impl Rng) -> ListPosition {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:";
        let len = rng.random_range(1..=128);
        let id: String = (0..len)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect();
        position(rng.random_range(0..=i64::MAX), &id)
    }

    #[test]
    fn page_sizes() {
        let paging = Paging::default();
        for (requested, expect) in [
            (0, Ok(50)),
            (1, Ok(1)),
            (1000, Ok(1000)),
            (1001, Ok(1000)),
            (i32::MAX, Ok(1000)),
            (-1, Err(())),
            (i32::MIN, Err(())),
        ] {
            let mut violations = Violations::default();
            let size = paging.page_size(requested, &mut violations);
            match (expect, violations.finish()) {
                (Ok(expect), Ok(())) => assert_eq!(size, expect, "{requested}"),
                (Err(()), Err(status)) => {
                    let details = keel::error::Details::from_status(&status);
                    assert_eq!(
                        details.field_violations()[0].field,
                        "page_size",
                        "{requested}"
                    );
                }
                (expect, got) => panic!("{requested}: expected {expect:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn tokens_round_trip_and_belong_to_their_account() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(158);
        for _ in 0..2_000 {
            let at = random_position(&mut rng);
            let token = encode(&at, "alice");
            assert!(token.len() <= MAX_TOKEN_LEN, "{token}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "needs no escaping in a URL: {token}"
            );
            assert_eq!(decode(&token, "alice"), Ok(Some(at)));
            assert_eq!(decode(&token, "bob"), Err(TokenError::OtherRequest));
            assert_eq!(decode(&token, "alice "), Err(TokenError::OtherRequest));
        }
        assert_eq!(decode("", "alice"), Ok(None), "no token: the first page");
    }

    #[test]
    fn garbage_is_refused() {
        let valid = encode(&position(1_700_000_000_000_000, "pay_0f"), "alice");
        let bytes = |version: u8, us: i64, id: &[u8]| {
            let mut b = vec![version];
            b.extend_from_slice(&us.to_be_bytes());
            b.extend_from_slice(&fingerprint("alice"));
            b.extend_from_slice(id);
            URL_SAFE_NO_PAD.encode(b)
        };
        for token in [
            "x".to_owned(),
            "!!!!".to_owned(),
            "AAAA".to_owned(),
            format!("{valid}="),
            format!("{valid}A"),
            format!("{}+", &valid[..valid.len() - 1]),
            "A".repeat(MAX_TOKEN_LEN + 4),
            bytes(2, 1, b"pay_0f"),
            bytes(0, 1, b"pay_0f"),
            bytes(1, -1, b"pay_0f"),
            bytes(1, 1, b""),
            bytes(1, 1, b"pay 0f"),
            bytes(1, 1, b"pay_\xff"),
            bytes(1, 1, &[b'p'; 129]),
        ] {
            assert_eq!(
                decode(&token, "alice"),
                Err(TokenError::Malformed),
                "{token:?}"
            );
        }
        let whole = decode(&valid, "alice").unwrap();
        for cut in 1..valid.len() {
            let part = decode(&valid[..cut], "alice");
            assert_ne!(part, Ok(whole.clone()), "a prefix of {cut} characters");
            assert_ne!(part, Ok(None), "a prefix of {cut} characters");
        }
    }

    #[test]
    fn decoding_random_input_never_panics_nor_accepts_another_request() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x158);
        let valid = encode(&random_position(&mut rng), "alice");
        for round in 0..20_000 {
            let token = match round % 3 {
                // Random bytes, as base64: well-formed tokens of nothing.
                0 => {
                    let len = rng.random_range(0..200);
                    URL_SAFE_NO_PAD.encode((0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>())
                }
                // Random characters.
                1 => (0..rng.random_range(0..300))
                    .map(|_| char::from_u32(rng.random_range(0..0x250)).unwrap_or('?'))
                    .collect(),
                // A valid token with one character changed.
                _ => {
                    let mut chars: Vec<char> = valid.chars().collect();
                    let at = rng.random_range(0..chars.len());
                    chars[at] = ['A', 'z', '0', '-', '_', '=', '/'][rng.random_range(0..7)];
                    chars.into_iter().collect()
                }
            };
            match decode(&token, "bob") {
                Err(_) => {}
                Ok(None) => assert!(token.is_empty()),
                Ok(Some(at)) => panic!("{token:?} decoded for another account: {at:?}"),
            }
        }
    }
}
