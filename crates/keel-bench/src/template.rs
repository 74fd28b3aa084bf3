//! Request data with placeholders filled per request, in ghz's spelling so its users feel at
//! home: `{{.RequestNumber}}`, `{{.WorkerID}}`, `{{.TimestampUnix}}` (also `Milli`, `Nano`),
//! `{{.Timestamp}}` (RFC 3339), `{{newUUID}}`, `{{randomInt MIN MAX}}` and
//! `{{randomString N}}`. The text is split once; rendering a request only appends.
//!
//! Placeholders are replaced as text before the JSON is parsed, so a string value needs its
//! quotes in the template: `{"key": "pay-{{newUUID}}"}`, `{"amount": {{randomInt 1 100}}}`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng as _;

/// The longest `randomString` a template may ask for.
pub const MAX_RANDOM_STRING: usize = 4096;

/// A template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    RequestNumber,
    WorkerId,
    TimestampUnix,
    TimestampUnixMilli,
    TimestampUnixNano,
    Timestamp,
    Uuid,
    RandomInt(i64, i64),
    RandomString(usize),
}

/// What a worker knows when it renders a request.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The request's number, from 0, unique across workers.
    pub request_number: u64,
    /// The worker sending it, from 0.
    pub worker_id: usize,
}

impl Template {
    /// Splits `text` into literal parts and placeholders; an unknown or malformed
    /// placeholder is an error that names the ones there are.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at byte {} is never closed with `}}}}`",
                    text.len() - rest.len() + open
                )
            })?;
            parts.push(placeholder(after[..close].trim())?);
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Whether every request renders the same text (no placeholders).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|part| matches!(part, Part::Text(_)))
    }

    /// The text for one request.
    pub fn render(&self, context: Context) -> String {
        let mut out = String::new();
        let mut rng = rand::rng();
        for part in &self.parts {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Text(text) => {
                    out.push_str(text);
                    Ok(())
                }
                Part::RequestNumber => write!(out, "{}", context.request_number),
                Part::WorkerId => write!(out, "{}", context.worker_id),
                Part::TimestampUnix => write!(out, "{}", since_epoch().as_secs()),
                Part::TimestampUnixMilli => write!(out, "{}", since_epoch().as_millis()),
                Part::TimestampUnixNano => write!(out, "{}", since_epoch().as_nanos()),
                Part::Timestamp => write!(
                    out,
                    "{}",
                    humantime::format_rfc3339_nanos(SystemTime::now())
                ),
                Part::Uuid => {
                    let bits: u128 = rng.random();
                    // Version 4, variant 1 (RFC 9562).
                    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
                    let hex = format!("{bits:032x}");
                    write!(
                        out,
                        "{}-{}-{}-{}-{}",
                        &hex[..8],
                        &hex[8..12],
                        &hex[12..16],
                        &hex[16..20],
                        &hex[20..]
                    )
                }
                Part::RandomInt(low, high) => write!(out, "{}", rng.random_range(*low..*high)),
                Part::RandomString(length) => {
                    out.extend(
                        (0..*length).map(|_| char::from(rng.sample(rand::distr::Alphanumeric))),
                    );
                    Ok(())
                }
            };
        }
        out
    }
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The placeholders there are, for error messages.
const KNOWN: &str = "{{.RequestNumber}}, {{.WorkerID}}, {{.TimestampUnix}}, \
    {{.TimestampUnixMilli}}, {{.TimestampUnixNano}}, {{.Timestamp}}, {{newUUID}}, \
    {{randomInt MIN MAX}}, {{randomString N}}";

fn placeholder(inside: &str) -> Result<Part, String> {
    let mut words = inside.split_whitespace();
    let name = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let no_args = |part: Part| {
        if args.is_empty() {
            Ok(part)
        } else {
            Err(format!("`{{{{{inside}}}}}`: {name} takes no arguments"))
        }
    };
    match name {
        ".RequestNumber" => no_args(Part::RequestNumber),
        ".WorkerID" => no_args(Part::WorkerId),
        ".TimestampUnix" => no_args(Part::TimestampUnix),
        ".TimestampUnixMilli" => no_args(Part::TimestampUnixMilli),
        ".TimestampUnixNano" => no_args(Part::TimestampUnixNano),
        ".Timestamp" => no_args(Part::Timestamp),
        "newUUID" => no_args(Part::Uuid),
        "randomInt" => {
            let [low, high] = args[..] else {
                return Err(format!(
                    "`{{{{{inside}}}}}`: write randomInt MIN MAX (MAX excluded)"
                ));
            };
            let parse = |word: &str| {
                word.parse::<i64>()
                    .map_err(|_| format!("`{{{{{inside}}}}}`: `{word}` is not a whole number"))
            };
            let (low, high) = (parse(low)?, parse(high)?);
            if low >= high {
                return Err(format!(
                    "`{{{{{inside}}}}}`: MIN must be below MAX (MAX is excluded)"
                ));
            }
            Ok(Part::RandomInt(low, high))
        }
        "randomString" => {
            let [length] = args[..] else {
                return Err(format!("`{{{{{inside}}}}}`: write randomString N"));
            };
            match length.parse::<usize>() {
                Ok(length) if length <= MAX_RANDOM_STRING => Ok(Part::RandomString(length)),
                _ => Err(format!(
                    "`{{{{{inside}}}}}`: N must be a length from 0 to {MAX_RANDOM_STRING}"
                )),
            }
        }
        _ => Err(format!(
            "unknown placeholder `{{{{{inside}}}}}`; the placeholders are {KNOWN}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, request_number: u64) -> String {
        Template::parse(text).unwrap().render(Context {
            request_number,
            worker_id: 3,
        })
    }

    #[test]
    fn text_without_placeholders_is_static_and_unchanged() {
        let template = Template::parse(r#"{"name": "world"}"#).unwrap();
        assert!(template.is_static());
        assert_eq!(render(r#"{"name": "world"}"#, 7), r#"{"name": "world"}"#);
        assert!(Template::parse("").unwrap().is_static());
    }

    #[test]
    fn numbers_and_worker_are_filled_in() {
        assert_eq!(
            render(r#"{"key":"k-{{.RequestNumber}}-{{ .WorkerID }}"}"#, 42),
            r#"{"key":"k-42-3"}"#
        );
        assert!(!Template::parse("{{.RequestNumber}}").unwrap().is_static());
    }

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = render("{{newUUID}}", 0);
        let b = render("{{newUUID}}", 0);
        assert_ne!(a, b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "{a}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{a}"
        );
    }

    #[test]
    fn random_values_stay_in_range() {
        for _ in 0..200 {
            let n: i64 = render("{{randomInt -3 4}}", 0).parse().unwrap();
            assert!((-3..4).contains(&n), "{n}");
            let s = render("{{randomString 12}}", 0);
            assert_eq!(s.len(), 12);
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
        }
    }

    #[test]
    fn timestamps_are_now() {
        let before = since_epoch();
        let seconds: u64 = render("{{.TimestampUnix}}", 0).parse().unwrap();
        let nanos: u128 = render("{{.TimestampUnixNano}}", 0).parse().unwrap();
        assert!(seconds >= before.as_secs() && seconds <= before.as_secs() + 5);
        assert!(nanos >= before.as_nanos());
        let rfc3339 = render("{{.Timestamp}}", 0);
        assert!(humantime::parse_rfc3339(&rfc3339).is_ok(), "{rfc3339}");
    }

    #[test]
    fn mistakes_are_explained() {
        for (text, says) in [
            (
                "{{.Nope}}",
                "unknown placeholder `{{.Nope}}`; the placeholders are",
            ),
            ("a {{newUUID", "never closed"),
            ("{{randomInt 5}}", "write randomInt MIN MAX"),
            ("{{randomInt 5 5}}", "MIN must be below MAX"),
            ("{{randomInt x 5}}", "`x` is not a whole number"),
            (
                "{{randomString 99999}}",
                "N must be a length from 0 to 4096",
            ),
            ("{{newUUID 1}}", "newUUID takes no arguments"),
        ] {
            let error = Template::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
