//! Request validation: every problem of a request reported at once, as INVALID_ARGUMENT
//! with one BadRequest field violation per bad field.

use keel::error::BusinessError;
use tonic::metadata::MetadataMap;

use super::DOMAIN;

/// Longest identifier (account id, payment id, idempotency key) accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most metadata entries on one payment.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// The metadata header that may carry the idempotency key instead of the request field.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Collects field violations; [`Violations::finish`] turns them into one error.
#[derive(Debug, Default)]
pub struct Violations {
    fields: Vec<(String, String)>,
}

impl Violations {
    /// Records that `field` is wrong, and why.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.fields.push((field.to_owned(), description.into()));
    }

    /// A positive amount of minor units.
    pub fn amount(&mut self, field: &str, amount: i64) {
        if amount <= 0 {
            self.add(
                field,
                format!("must be a positive number of minor units, got {amount}"),
            );
        }
    }

    /// An ISO-4217 alphabetic code: three upper-case letters.
    pub fn currency(&mut self, field: &str, currency: &str) {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            self.add(field, format!("must be an ISO-4217 code of three upper-case letters such as \"EUR\", got {currency:?}"));
        }
    }

    /// A required identifier: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
    pub fn id(&mut self, field: &str, id: &str) {
        if id.is_empty() {
            self.add(field, "is required");
        } else {
            self.optional_id(field, id);
        }
    }

    /// An identifier that may be empty (then generated or absent).
    pub fn optional_id(&mut self, field: &str, id: &str) {
        if id.len() > MAX_ID_LEN {
            self.add(
                field,
                format!("must be at most {MAX_ID_LEN} characters, got {}", id.len()),
            );
        } else if !is_id(id) {
            self.add(field, "may contain only letters, digits and _ - . :");
        }
    }

    /// Free text of at most `max` bytes, without NUL characters (PostgreSQL cannot store
    /// them, and no client means to send one).
    pub fn text(&mut self, field: &str, text: &str, max: usize) {
        if text.len() > max {
            self.add(
                field,
                format!("must be at most {max} bytes, got {}", text.len()),
            );
        } else if text.contains('\0') {
            self.add(field, "must not contain NUL (U+0000) characters");
        }
    }

    /// Metadata: at most 32 entries, keys like identifiers, values at most 512 bytes.
    pub fn metadata<'a>(
        &mut self,
        field: &str,
        entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    ) {
        if entries.len() > MAX_METADATA_ENTRIES {
            self.add(
                field,
                format!(
                    "must have at most {MAX_METADATA_ENTRIES} entries, got {}",
                    entries.len()
                ),
            );
            return;
        }
        for (key, value) in entries {
            self.id(&format!("{field}[{key}]"), key);
            self.text(&format!("{field}[{key}]"), value, 512);
        }
    }

    /// INVALID_ARGUMENT for a required message field that is absent.
    pub fn missing(field: &str) -> tonic::Status {
        let mut violations = Self::default();
        violations.add(field, "is required");
        violations.finish().expect_err("one violation was recorded")
    }

    /// `Ok` when nothing was recorded, else INVALID_ARGUMENT with every violation.
    pub fn finish(self) -> Result<(), tonic::Status> {
        if self.fields.is_empty() {
            return Ok(());
        }
        let summary = self
            .fields
            .iter()
            .map(|(field, description)| format!("{field} {description}"))
            .collect::<Vec<_>>()
            .join("; ");
        let error = self.fields.into_iter().fold(
            BusinessError::invalid_argument("INVALID_REQUEST", summary).domain(DOMAIN),
            |error, (field, description)| error.field_violation(field, description),
        );
        Err(error.into())
    }
}

/// Whether `id` is at most 128 characters of `[A-Za-z0-9_.:-]` (empty included).
pub fn is_id(id: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    id.len() <= MAX_ID_LEN && id.chars().all(ok_char)
}

/// The idempotency key of a request: the request field, or else the `idempotency-key`
/// header. Both present and different is a client mistake.
pub fn idempotency_key(field: &str, metadata: &MetadataMap, violations: &mut Violations) -> String {
    let header = metadata
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok());
    let key = match (field.is_empty(), header) {
        (true, Some(header)) => header.to_owned(),
        (false, Some(header)) if header != field => {
            violations.add(
                "idempotency_key",
                format!(
                    "differs from the {IDEMPOTENCY_HEADER} header; send one or make them equal"
                ),
            );
            field.to_owned()
        }
        _ => field.to_owned(),
    };
    violations.id("idempotency_key", &key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::error::Details;

    fn field_violations(result: Result<(), tonic::Status>) -> Vec<(String, String)> {
        let status = result.expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        Details::from_status(&status)
            .field_violations()
            .iter()
            .map(|v| (v.field.clone(), v.description.clone()))
            .collect()
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let mut v = Violations::default();
        v.amount("amount_minor", 0);
        v.currency("currency", "eur");
        v.id("payer_account_id", "");
        v.optional_id("account_id", "has space");
        let fields: Vec<String> = field_violations(v.finish())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            ["amount_minor", "currency", "payer_account_id", "account_id"]
        );
    }

    #[test]
    fn valid_values_pass() {
        let mut v = Violations::default();
        v.amount("amount_minor", 1);
        v.currency("currency", "EUR");
        v.id("payer_account_id", "acc_1:main-2.x");
        v.optional_id("account_id", "");
        v.text("description", "coffee", MAX_DESCRIPTION_LEN);
        assert!(v.finish().is_ok());
    }

    #[test]
    fn text_refuses_nul_characters() {
        let mut v = Violations::default();
        v.text("description", "a\0b", MAX_DESCRIPTION_LEN);
        let violations = field_violations(v.finish());
        assert_eq!(violations[0].0, "description");
        assert!(violations[0].1.contains("NUL"), "{violations:?}");
    }

    #[test]
    fn currency_table() {
        for (code, ok) in [
            ("EUR", true),
            ("USD", true),
            ("EU", false),
            ("EURO", false),
            ("eur", false),
            ("E1R", false),
            ("ÉUR", false),
        ] {
            let mut v = Violations::default();
            v.currency("currency", code);
            assert_eq!(v.finish().is_ok(), ok, "{code}");
        }
    }

    #[test]
    fn idempotency_key_comes_from_field_or_header() {
        let mut headers = MetadataMap::new();
        let mut v = Violations::default();
        assert_eq!(idempotency_key("k1", &headers, &mut v), "k1");
        headers.insert(IDEMPOTENCY_HEADER, "k2".parse().unwrap());
        assert_eq!(idempotency_key("", &headers, &mut v), "k2");
        assert_eq!(idempotency_key("k2", &headers, &mut v), "k2");
        assert!(v.finish().is_ok());

        let mut v = Violations::default();
        idempotency_key("k1", &headers, &mut v);
        let violations = field_violations(v.finish());
        assert_eq!(violations[0].0, "idempotency_key");
        assert!(violations[0].1.contains("header"), "{violations:?}");

        let mut v = Violations::default();
        idempotency_key("", &MetadataMap::new(), &mut v);
        assert_eq!(field_violations(v.finish())[0].1, "is required");
    }
}
