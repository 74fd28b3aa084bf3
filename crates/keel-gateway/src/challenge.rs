//! The `WWW-Authenticate` challenge of a REST 401 (RFC 6750 §3): it tells a client that
//! the resource wants a bearer token, and whether the one it sent was refused.

use http::HeaderValue;
use keel_core::error::Details;
use tonic::Status;

/// Longest `error_description`, in bytes; a longer message is cut and ends with `...`.
const MAX_DESCRIPTION: usize = 200;

/// Longest challenge a status's `www_authenticate` metadata may name.
const MAX_CHALLENGE: usize = 512;

/// The challenge answering an UNAUTHENTICATED `status`; `token_sent` says whether the
/// request carried an `Authorization` header.
///
/// - No token sent: `Bearer` alone, as RFC 6750 §3.1 asks of a request without credentials
///   (no error code). There is no realm to name: one gateway fronts any service.
/// - The status's `ErrorInfo` names its challenge in the `www_authenticate` metadata
///   (keel-authz's do: it knows a malformed header, `invalid_request`, from a refused token,
///   `invalid_token`): that challenge, when it is a well-formed `Bearer` one.
/// - Otherwise `Bearer error="invalid_token", error_description="..."` with the status
///   message, made safe for a quoted string and cut to 200 bytes.
pub(crate) fn challenge(status: &Status, token_sent: bool) -> HeaderValue {
    if !token_sent {
        return HeaderValue::from_static("Bearer");
    }
    let details = Details::from_status(status);
    if let Some(named) = details.metadata().get("www_authenticate")
        && let Some(value) = well_formed(named)
    {
        return value;
    }
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        description(status.message())
    );
    HeaderValue::from_str(&challenge)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

/// `challenge` as a header value, if it is a `Bearer` challenge of printable ASCII within
/// [`MAX_CHALLENGE`] bytes.
fn well_formed(challenge: &str) -> Option<HeaderValue> {
    let bearer = challenge == "Bearer" || challenge.starts_with("Bearer ");
    let printable = challenge.bytes().all(|byte| (b' '..=b'~').contains(&byte));
    if !bearer || !printable || challenge.len() > MAX_CHALLENGE {
        return None;
    }
    HeaderValue::from_str(challenge).ok()
}

/// `message` as RFC 6750's `error_description` allows it (printable ASCII but `"` and
/// `\`): quotes and backslashes become `'`, control characters spaces, other characters
/// `?`; at most [`MAX_DESCRIPTION`] bytes.
fn description(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_DESCRIPTION));
    for (i, c) in message.chars().enumerate() {
        if i == MAX_DESCRIPTION {
            out.truncate(MAX_DESCRIPTION - 3);
            out.push_str("...");
            break;
        }
        out.push(match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use keel_core::error::BusinessError;
    use tonic::Code;

    use super::*;

    fn check(status: &Status, token_sent: bool, expect: &str) {
        assert_eq!(challenge(status, token_sent), expect, "{status:?}");
    }

    #[test]
    fn without_a_token_the_challenge_is_bare() {
        let status = Status::unauthenticated("the token has expired");
        check(&status, false, "Bearer");
    }

    #[test]
    fn a_refused_token_gets_invalid_token_with_the_message() {
        check(
            &Status::unauthenticated("the token has expired: get a new one"),
            true,
            r#"Bearer error="invalid_token", error_description="the token has expired: get a new one""#,
        );
    }

    #[test]
    fn the_description_is_escaped_and_bounded() {
        check(
            &Status::unauthenticated("say \"hi\"\\\r\nnow\tété\u{7f}"),
            true,
            r#"Bearer error="invalid_token", error_description="say 'hi''  now ?t? ""#,
        );
        let long = Status::unauthenticated("x".repeat(1000));
        let value = challenge(&long, true);
        let text = value.to_str().unwrap();
        let description = text
            .split_once("error_description=\"")
            .unwrap()
            .1
            .strip_suffix('"')
            .unwrap();
        assert_eq!(description.len(), MAX_DESCRIPTION);
        assert!(description.ends_with("x..."), "{description}");
    }

    #[test]
    fn a_challenge_the_status_names_is_used_when_well_formed() {
        let named = |challenge: &str| -> Status {
            BusinessError::new(Code::Unauthenticated, "TOKEN_MALFORMED", "bad header")
                .domain("auth.keel.dev")
                .metadata("www_authenticate", challenge)
                .into()
        };
        let malformed = r#"Bearer error="invalid_request", error_description="bad header""#;
        check(&named(malformed), true, malformed);
        // Not a Bearer challenge, too long: the status message instead.
        let fallback = r#"Bearer error="invalid_token", error_description="bad header""#;
        check(&named("Basic realm=\"x\""), true, fallback);
        check(
            &named(&format!("Bearer {}", "a".repeat(600))),
            true,
            fallback,
        );
        // No token sent: bare, whatever the status names.
        check(&named(malformed), false, "Bearer");
    }
}
