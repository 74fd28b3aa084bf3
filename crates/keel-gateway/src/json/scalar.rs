//! One proto3 JSON scalar, read by the rules of Go's `protojson` (google.golang.org/protobuf,
//! what grpc-gateway runs), written back in the one form prost-reflect reads exactly.
//!
//! - Integers (`int32`, `sint64`, `fixed32`, ...): a JSON number or a string holding one,
//!   integral in value (`1e2` and `1.0` are 100 and 1; `1.5` is refused), within the type's
//!   range. Out of `i64`/`u64` they are refused, never rounded to the nearest `f64` and
//!   clamped, as reading them through `f64` does.
//! - `float` and `double`: a JSON number or a string holding one, or `"NaN"`, `"Infinity"`,
//!   `"-Infinity"`. The decimal is rounded once, straight to the type, and refused only if
//!   it rounds to infinity: `3.4028235e38`, which is a little over `f32::MAX` and is how
//!   `f32::MAX` is written, is `f32::MAX`.
//! - A string holding a number holds exactly a JSON number: no spaces, no `+`, no `inf`.
//! - `bytes`: standard or URL-safe base64 (URL-safe when `-` or `_` appears), padded or not
//!   (padding required when the length is a multiple of 4).
//! - `bool` only from `true` and `false`, strings only from strings, enums by name (left to
//!   prost-reflect, which knows the strict mode) or by integral `int32` number.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use prost_reflect::{Kind, MessageDescriptor};
use serde_json::Value;

/// A JSON token where a scalar goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Token<'a> {
    /// A number, as written (valid JSON number syntax).
    Number(&'a str),
    /// A string's content, unescaped.
    String(&'a str),
    /// `true` or `false`.
    Bool(bool),
    /// An object or an array, named for the error.
    Other(&'static str),
}

/// The value of `token` for a field of `kind`, in the form prost-reflect reads exactly:
/// integers as JSON integers, floats as finite JSON numbers or `"NaN"`/`"Infinity"`/
/// `"-Infinity"`, bytes as padded standard base64. `Err` says why the token is refused.
pub(crate) fn scalar(kind: &Kind, token: Token<'_>) -> Result<Value, String> {
    let name = kind_name(kind);
    let refuse = |why: &str| Err(format!("{} is not a valid {name}: {why}", shown(token)));
    let whole = |parse: fn(&str) -> Option<Value>, range: &str| match integer(token) {
        Ok(text) => parse(&text).map_or_else(|| refuse(&format!("out of range ({range})")), Ok),
        Err(why) => refuse(why),
    };
    const INT32: &str = "-2147483648 to 2147483647";
    let int32 = |text: &str| text.parse::<i32>().ok().map(Value::from);
    match (kind, token) {
        (Kind::Int32 | Kind::Sint32 | Kind::Sfixed32, _) => whole(int32, INT32),
        (Kind::Int64 | Kind::Sint64 | Kind::Sfixed64, _) => whole(
            |text| text.parse::<i64>().ok().map(Value::from),
            "-9223372036854775808 to 9223372036854775807",
        ),
        (Kind::Uint32 | Kind::Fixed32, _) => whole(
            |text| text.parse::<u32>().ok().map(Value::from),
            "0 to 4294967295",
        ),
        (Kind::Uint64 | Kind::Fixed64, _) => whole(
            |text| text.parse::<u64>().ok().map(Value::from),
            "0 to 18446744073709551615",
        ),
        (Kind::Float, _) => match float(token) {
            Some(text) => match text.parse::<f32>() {
                Ok(number) if number.is_infinite() => {
                    refuse("out of range (it rounds past 3.4028235e38, the largest float)")
                }
                Ok(number) => Ok(float_json(f64::from(number))),
                Err(_) => refuse(FLOAT_SYNTAX),
            },
            None => special(token).map_or_else(|| refuse(FLOAT_SYNTAX), Ok),
        },
        (Kind::Double, _) => match float(token) {
            Some(text) => match text.parse::<f64>() {
                Ok(number) if number.is_infinite() => refuse(
                    "out of range (it rounds past 1.7976931348623157e308, the largest double)",
                ),
                Ok(number) => Ok(float_json(number)),
                Err(_) => refuse(FLOAT_SYNTAX),
            },
            None => special(token).map_or_else(|| refuse(FLOAT_SYNTAX), Ok),
        },
        (Kind::Bool, Token::Bool(value)) => Ok(Value::Bool(value)),
        (Kind::Bool, _) => refuse("expected true or false"),
        (Kind::String, Token::String(text)) => Ok(Value::String(text.to_owned())),
        (Kind::String, _) => refuse("expected a string"),
        (Kind::Bytes, Token::String(text)) => match bytes(text) {
            Some(bytes) => Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )),
            None => refuse("expected standard or URL-safe base64"),
        },
        (Kind::Bytes, _) => refuse("expected a base64 string"),
        // Names are looked up by prost-reflect, which knows whether unknown ones are refused.
        (Kind::Enum(_), Token::String(text)) => Ok(Value::String(text.to_owned())),
        (Kind::Enum(_), Token::Number(_)) => whole(int32, INT32),
        (Kind::Enum(_), _) => refuse("expected a value's name or number"),
        (Kind::Message(message), _) => Err(format!(
            "{} is a message, not a scalar",
            message.full_name()
        )),
    }
}

/// The kind of the value a wrapper type (`google.protobuf.Int64Value`, ...) holds; its JSON
/// is that value's.
pub(crate) fn wrapped(message: &MessageDescriptor) -> Option<Kind> {
    match message.full_name() {
        "google.protobuf.DoubleValue" => Some(Kind::Double),
        "google.protobuf.FloatValue" => Some(Kind::Float),
        "google.protobuf.Int64Value" => Some(Kind::Int64),
        "google.protobuf.UInt64Value" => Some(Kind::Uint64),
        "google.protobuf.Int32Value" => Some(Kind::Int32),
        "google.protobuf.UInt32Value" => Some(Kind::Uint32),
        "google.protobuf.BoolValue" => Some(Kind::Bool),
        "google.protobuf.StringValue" => Some(Kind::String),
        "google.protobuf.BytesValue" => Some(Kind::Bytes),
        _ => None,
    }
}

const FLOAT_SYNTAX: &str = "expected a number, or \"NaN\", \"Infinity\" or \"-Infinity\"";

/// The token as the client wrote it, for errors.
fn shown(token: Token<'_>) -> String {
    match token {
        Token::Number(text) => text.to_owned(),
        Token::String(text) => format!("{text:?}"),
        Token::Bool(value) => value.to_string(),
        Token::Other(what) => what.to_owned(),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum value",
    }
}

/// A finite float as a JSON number; the others as the strings that name them.
fn float_json(number: f64) -> Value {
    if number.is_nan() {
        Value::String("NaN".into())
    } else if number.is_infinite() {
        Value::String(
            if number > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .into(),
        )
    } else {
        Value::from(number)
    }
}

/// `"NaN"`, `"Infinity"` and `"-Infinity"`, the floats JSON numbers cannot write.
fn special(token: Token<'_>) -> Option<Value> {
    match token {
        Token::String(text @ ("NaN" | "Infinity" | "-Infinity")) => {
            Some(Value::String(text.to_owned()))
        }
        _ => None,
    }
}

/// The JSON number of a float token: the number, or a string that is exactly one.
fn float(token: Token<'_>) -> Option<&str> {
    match token {
        Token::Number(text) => Some(text),
        Token::String(text) => Number::parse(text).map(|_| text),
        _ => None,
    }
}

/// The decimal integer an integer token stands for (`-` and digits, possibly leading
/// zeros), or why it stands for none.
fn integer(token: Token<'_>) -> Result<String, &'static str> {
    let text = match token {
        Token::Number(text) | Token::String(text) => text,
        _ => return Err("expected an integer"),
    };
    Number::parse(text)
        .ok_or("expected an integer")?
        .integral()
        .ok_or("not an integer")
}

/// The parts of a JSON number, as Go's `protojson` splits them: `-` `integer` `.fraction`
/// `e exponent`.
#[derive(Debug, PartialEq, Eq)]
struct Number<'a> {
    negative: bool,
    /// The integer part's digits; empty for `0`.
    integer: &'a str,
    /// The fraction's digits without trailing zeros.
    fraction: &'a str,
    /// The exponent with its sign, empty if none.
    exponent: &'a str,
}

impl<'a> Number<'a> {
    /// The parts of `text`, if all of it is one number in JSON's syntax (RFC 8259).
    fn parse(text: &'a str) -> Option<Self> {
        let bytes = text.as_bytes();
        let digits = |from: usize| {
            from + bytes[from..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count()
        };
        let negative = bytes.first() == Some(&b'-');
        let start = usize::from(negative);
        let (integer, mut at) = match bytes.get(start) {
            Some(b'0') => ("", start + 1),
            Some(b'1'..=b'9') => {
                let end = digits(start);
                (&text[start..end], end)
            }
            _ => return None,
        };
        let mut fraction = "";
        if bytes.get(at) == Some(&b'.') {
            let end = digits(at + 1);
            if end == at + 1 {
                return None;
            }
            fraction = text[at + 1..end].trim_end_matches('0');
            at = end;
        }
        let mut exponent = "";
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(bytes.get(at + 1), Some(b'+' | b'-')));
            let end = digits(at + 1 + sign);
            if end == at + 1 + sign {
                return None;
            }
            exponent = &text[at + 1..end];
            at = end;
        }
        (at == bytes.len()).then_some(Self {
            negative,
            integer,
            fraction,
            exponent,
        })
    }

    /// The number as a decimal integer without exponent, if it is integral; `None` also
    /// when it has more than 20 digits before any `-` exponent shrinks it (no 64-bit
    /// integer has more).
    fn integral(&self) -> Option<String> {
        if self.integer.is_empty() && self.fraction.is_empty() {
            return Some("0".into());
        }
        let exponent: i64 = if self.exponent.is_empty() {
            0
        } else {
            i64::from(self.exponent.parse::<i32>().ok()?)
        };
        let integer = self.integer.len() as i64;
        let fraction = self.fraction.len() as i64;
        let digits: Cow<'_, str> = if exponent >= 0 {
            if fraction > exponent || integer + exponent > 20 {
                return None;
            }
            let zeros = "0".repeat((exponent - fraction) as usize);
            Cow::Owned([self.integer, self.fraction, &zeros].concat())
        } else {
            let point = integer + exponent;
            if fraction > 0 || point < 0 {
                return None;
            }
            let (kept, shifted) = self.integer.split_at(point as usize);
            if shifted.bytes().any(|digit| digit != b'0') {
                return None;
            }
            Cow::Borrowed(kept)
        };
        Some(if self.negative {
            format!("-{digits}")
        } else {
            digits.into_owned()
        })
    }
}

/// The bytes of a base64 string as Go's `protojson` reads them: URL-safe if `-` or `_`
/// appears, padding required if the length is a multiple of 4 and refused otherwise,
/// line breaks skipped, stray bits after the last byte ignored.
fn bytes(text: &str) -> Option<Vec<u8>> {
    let url_safe = text.contains(['-', '_']);
    let padding = if text.len() % 4 == 0 {
        DecodePaddingMode::RequireCanonical
    } else {
        DecodePaddingMode::RequireNone
    };
    let config = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(padding);
    let alphabet = if url_safe {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    let text: Cow<'_, str> = if text.contains(['\r', '\n']) {
        Cow::Owned(text.replace(['\r', '\n'], ""))
    } else {
        Cow::Borrowed(text)
    };
    GeneralPurpose::new(alphabet, config).decode(&*text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer `text` stands for by Go's rules, or `None`.
    fn integral(text: &str) -> Option<String> {
        Number::parse(text)?.integral()
    }

    #[test]
    fn a_string_holds_a_number_only_in_jsons_syntax() {
        for good in [
            "0", "-0", "1", "-12", "1.5", "0.25", "1e5", "1E+5", "2.5e-3", "-0.0e0",
        ] {
            assert!(Number::parse(good).is_some(), "{good}");
        }
        for bad in [
            "", "-", "+1", "01", "-01", ".5", "1.", "1.e5", "1e", "1e+", "0x10", "1_000", " 1",
            "1 ", "inf", "NaN", "Infinity", "1,5", "--1", "1e5.5",
        ] {
            assert!(Number::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn integers_are_normalized_as_go_normalizes_them() {
        let cases = [
            ("0", Some("0")),
            ("-0", Some("0")),
            ("-0.0e5", Some("0")),
            ("0e-99999999999", Some("0")),
            ("1e2", Some("100")),
            ("1.0", Some("1")),
            ("1.50e1", Some("15")),
            ("0.5e1", Some("5")),
            ("100e-2", Some("1")),
            ("-2.5e1", Some("-25")),
            ("0.00000000000000000001e20", Some("00000000000000000001")),
            // Go counts the digits before the fraction moves, so this is refused though 1.
            ("0.000000000000000000001e21", None),
            ("1e19", Some("10000000000000000000")),
            ("1e20", None),
            ("1e99999999999", None),
            ("1.5", None),
            ("1e-1", None),
            ("15e-1", None),
            ("0.01e1", None),
        ];
        for (text, want) in cases {
            assert_eq!(integral(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn base64_is_read_as_go_reads_it() {
        let cases: [(&str, Option<&[u8]>); 10] = [
            ("QUJD", Some(b"ABC")),
            ("QQ==", Some(b"A")),
            ("QQ", Some(b"A")),
            ("QR==", Some(b"A")),
            ("-_8", Some(&[0xfb, 0xff])),
            ("+/8=", Some(&[0xfb, 0xff])),
            ("QU\r\nJD", Some(b"ABC")),
            ("QQ=", None),
            ("+-8=", None),
            ("Q", None),
        ];
        for (text, want) in cases {
            assert_eq!(bytes(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn errors_say_what_was_given_and_what_the_type_takes() {
        let error = scalar(&Kind::Int32, Token::Number("2147483648")).unwrap_err();
        assert_eq!(
            error,
            "2147483648 is not a valid int32: out of range (-2147483648 to 2147483647)"
        );
        let error = scalar(&Kind::Float, Token::String("inf")).unwrap_err();
        assert!(error.starts_with("\"inf\" is not a valid float"), "{error}");
        let error = scalar(&Kind::Fixed64, Token::Number("1.5")).unwrap_err();
        assert_eq!(error, "1.5 is not a valid fixed64: not an integer");
        let error = scalar(&Kind::Bool, Token::Other("an object")).unwrap_err();
        assert_eq!(
            error,
            "an object is not a valid bool: expected true or false"
        );
    }
}
