//! The headers the bridge writes beside a record in a log message, shared by the backends that
//! keep a record as a message with headers (JetStream, Kafka): their names, the rule that a
//! record's own header may not take one of them, and how a dead letter says which of a
//! record's headers it could not keep.

/// The record's idempotency key.
pub(super) const KEY: &str = "Keel-Key";
/// The device, where the message's own key is not the device (JetStream).
pub(super) const DEVICE: &str = "Keel-Device";
/// The route that took the request.
pub(super) const ROUTE: &str = "Keel-Route";
/// Why a dead letter will not be delivered.
pub(super) const REASON: &str = "Keel-Reason";
/// What a person needs to know about a dead letter.
pub(super) const DETAIL: &str = "Keel-Detail";

const OWN: [&str; 5] = [KEY, DEVICE, ROUTE, REASON, DETAIL];

/// Whether `name` is one of the bridge's own header names, compared without case (NATS
/// compares header names so, and a record header `keel-key` would be read back as the key).
pub(super) fn is_own(name: &str) -> bool {
    OWN.iter().any(|own| own.eq_ignore_ascii_case(name))
}

/// The detail a dead letter is kept with: `detail`, then the record headers left out (named
/// in `refused`, for the reason `why`), then `note`.
pub(super) fn dead_letter_detail(
    detail: &str,
    refused: &[String],
    why: &str,
    note: Option<&str>,
) -> String {
    let mut detail = detail.to_owned();
    if !refused.is_empty() {
        detail.push_str(&format!(
            " (headers not kept, {why}: {})",
            refused.join(", ")
        ));
    }
    if let Some(note) = note {
        detail.push_str(&format!(" ({note})"));
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_are_recognised_without_case() {
        assert!(is_own("keel-key"));
        assert!(is_own("KEEL-REASON"));
        assert!(!is_own("keel-mqtt-topic"));
        assert!(!is_own("traceparent"));
    }

    #[test]
    fn a_dead_letter_detail_names_what_was_left_out() {
        assert_eq!(dead_letter_detail("why", &[], "x", None), "why");
        assert_eq!(
            dead_letter_detail(
                "why",
                &["\"a b\"".into()],
                "bad names",
                Some("payload dropped")
            ),
            "why (headers not kept, bad names: \"a b\") (payload dropped)"
        );
    }
}
