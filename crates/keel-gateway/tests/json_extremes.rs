//! Proto3 JSON at every scalar type's extremes, through the gateway. In a request body, a
//! path parameter and a query parameter, each type takes what Go's `protojson` (what
//! grpc-gateway runs, google.golang.org/protobuf/encoding/protojson) takes and refuses what
//! it refuses, with a 400 whose JSON names the field. Python's `json_format` reads every body
//! too, as an independent second opinion; where it disagrees with Go, the case is listed with
//! the reason.

mod common;

use std::convert::Infallible;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use keel_gateway::{Gateway, GatewayOptions};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _};
use serde_json::Value;
use tower::util::BoxCloneSyncService;

use crate::common::{compile, python};

/// What a field holds after a request, or `Refused`: a 400 naming the field.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Int(i64),
    Uint(u64),
    Float(f32),
    Double(f64),
    Bytes(&'static [u8]),
    Bool(bool),
    Enum(i32),
    Unset,
    Refused,
}

use Want::{Refused, Unset};

/// A JSON token for a field, and what it should come to.
type Case = (&'static str, Want);

const INT32: &[Case] = &[
    ("2147483647", Want::Int(2147483647)),
    ("-2147483648", Want::Int(-2147483648)),
    ("2147483648", Refused),
    ("-2147483649", Refused),
    ("\"2147483647\"", Want::Int(2147483647)),
    ("\"-2147483648\"", Want::Int(-2147483648)),
    ("\"2147483648\"", Refused),
    ("2.147483647e9", Want::Int(2147483647)),
    ("21474836470e-1", Want::Int(2147483647)),
    ("1e2", Want::Int(100)),
    ("\"1e2\"", Want::Int(100)),
    ("1.0", Want::Int(1)),
    ("100e-2", Want::Int(1)),
    ("-0", Want::Int(0)),
    ("\"-0\"", Want::Int(0)),
    ("1.5", Refused),
    ("1e-1", Refused),
    ("\"1.5\"", Refused),
    ("\" 1\"", Refused),
    ("\"+1\"", Refused),
    ("\"01\"", Refused),
    ("\"0x10\"", Refused),
    ("\"1_000\"", Refused),
    ("\"\"", Refused),
    ("true", Refused),
];

const UINT32: &[Case] = &[
    ("4294967295", Want::Uint(4294967295)),
    ("\"4294967295\"", Want::Uint(4294967295)),
    ("4.294967295e9", Want::Uint(4294967295)),
    ("4294967296", Refused),
    ("\"4294967296\"", Refused),
    ("-1", Refused),
    ("-0", Want::Uint(0)),
    ("1.5", Refused),
];

const INT64: &[Case] = &[
    ("9223372036854775807", Want::Int(i64::MAX)),
    ("\"9223372036854775807\"", Want::Int(i64::MAX)),
    ("-9223372036854775808", Want::Int(i64::MIN)),
    ("\"-9223372036854775808\"", Want::Int(i64::MIN)),
    ("9223372036854775808", Refused),
    ("\"9223372036854775808\"", Refused),
    // Read through an f64 this is -2^63, i64::MIN: it used to be taken as that.
    ("-9223372036854775809", Refused),
    ("\"-9223372036854775809\"", Refused),
    ("9223372036854775807.0", Want::Int(i64::MAX)),
    ("9.223372036854775807e18", Want::Int(i64::MAX)),
    ("9007199254740993", Want::Int(9007199254740993)),
    ("\"1e18\"", Want::Int(1_000_000_000_000_000_000)),
    ("1e19", Refused),
    ("1.5", Refused),
];

const UINT64: &[Case] = &[
    ("18446744073709551615", Want::Uint(u64::MAX)),
    ("\"18446744073709551615\"", Want::Uint(u64::MAX)),
    // Read through an f64 this is 2^64, which used to be clamped to u64::MAX.
    ("18446744073709551616", Refused),
    ("\"18446744073709551616\"", Refused),
    ("1.8446744073709551615e19", Want::Uint(u64::MAX)),
    ("1e19", Want::Uint(10_000_000_000_000_000_000)),
    ("1e20", Refused),
    ("-1", Refused),
    ("-0", Want::Uint(0)),
];

const FLOAT: &[Case] = &[
    // How f32::MAX is written (Go, prost-reflect): a little over it, rounding to it.
    ("3.4028235e38", Want::Float(f32::MAX)),
    ("3.4028235e+38", Want::Float(f32::MAX)),
    ("\"3.4028235e+38\"", Want::Float(f32::MAX)),
    ("-3.4028235e38", Want::Float(f32::MIN)),
    (
        "340282346638528859811704183484516925440",
        Want::Float(f32::MAX),
    ),
    // Just under halfway from f32::MAX to 2^128: still f32::MAX. Halfway rounds to even,
    // which is 2^128, infinity: refused.
    (
        "340282356779733661637539395458142568447",
        Want::Float(f32::MAX),
    ),
    ("340282356779733661637539395458142568448", Refused),
    ("3.4028236e38", Refused),
    ("1e39", Refused),
    ("-1e39", Refused),
    ("\"1e39\"", Refused),
    // Rounded once, straight to f32: through f64 first it would round up to 1 + 2^-22.
    (
        "1.0000001788139343261718749",
        Want::Float(f32::from_bits(0x3f80_0001)),
    ),
    ("16777217", Want::Float(16777216.0)),
    ("0.1", Want::Float(0.1)),
    ("1.4e-45", Want::Float(f32::from_bits(1))),
    ("1e-46", Want::Float(0.0)),
    ("-1e-46", Want::Float(-0.0)),
    ("-0", Want::Float(-0.0)),
    ("\"-0\"", Want::Float(-0.0)),
    ("\"1.5\"", Want::Float(1.5)),
    ("\"NaN\"", Want::Float(f32::NAN)),
    ("\"Infinity\"", Want::Float(f32::INFINITY)),
    ("\"-Infinity\"", Want::Float(f32::NEG_INFINITY)),
    ("\"nan\"", Refused),
    ("\"inf\"", Refused),
    ("\"-inf\"", Refused),
    ("\"infinity\"", Refused),
    ("\" 1.5\"", Refused),
    ("\"1.5 \"", Refused),
    ("\"+1.5\"", Refused),
    ("\".5\"", Refused),
    ("\"1.\"", Refused),
    ("\"0x1p3\"", Refused),
    ("\"\"", Refused),
    ("true", Refused),
];

const DOUBLE: &[Case] = &[
    ("1.7976931348623157e308", Want::Double(f64::MAX)),
    ("-1.7976931348623157e308", Want::Double(f64::MIN)),
    ("\"1.7976931348623157e308\"", Want::Double(f64::MAX)),
    ("1.7976931348623158e308", Want::Double(f64::MAX)),
    ("1.7976931348623159e308", Refused),
    ("1e309", Refused),
    ("\"-1e309\"", Refused),
    ("9007199254740993", Want::Double(9007199254740992.0)),
    ("0.1", Want::Double(0.1)),
    ("5e-324", Want::Double(f64::from_bits(1))),
    ("2e-324", Want::Double(0.0)),
    ("-0", Want::Double(-0.0)),
    ("\"NaN\"", Want::Double(f64::NAN)),
    ("\"Infinity\"", Want::Double(f64::INFINITY)),
    ("\"-Infinity\"", Want::Double(f64::NEG_INFINITY)),
    ("\"Inf\"", Refused),
];

const BYTES: &[Case] = &[
    ("\"QUJD\"", Want::Bytes(b"ABC")),
    ("\"QQ==\"", Want::Bytes(b"A")),
    ("\"QQ\"", Want::Bytes(b"A")),
    ("\"QR==\"", Want::Bytes(b"A")),
    ("\"+/8=\"", Want::Bytes(&[0xfb, 0xff])),
    ("\"+/8\"", Want::Bytes(&[0xfb, 0xff])),
    ("\"-_8=\"", Want::Bytes(&[0xfb, 0xff])),
    ("\"-_8\"", Want::Bytes(&[0xfb, 0xff])),
    ("\"QUJD\\n\"", Want::Bytes(b"ABC")),
    ("\"\"", Want::Bytes(b"")),
    ("\"QQ=\"", Refused),
    ("\"+-8=\"", Refused),
    ("\"Q\"", Refused),
    ("\"QQ==QQ==\"", Refused),
    ("1", Refused),
];

const BOOL: &[Case] = &[
    ("true", Want::Bool(true)),
    ("false", Want::Bool(false)),
    ("null", Unset),
    ("\"true\"", Refused),
    ("1", Refused),
];

const ENUM: &[Case] = &[
    ("\"LEVEL_HIGH\"", Want::Enum(1)),
    ("1", Want::Enum(1)),
    ("1.0", Want::Enum(1)),
    ("1e0", Want::Enum(1)),
    ("-2147483648", Want::Enum(i32::MIN)),
    ("2147483648", Refused),
    ("1.5", Refused),
    ("true", Refused),
];

/// A field of `scalars.v1.Values`, its type's name, and the cases for it.
struct Cases {
    field: &'static str,
    kind: &'static str,
    cases: Vec<Case>,
}

/// Every field, its type's name and the cases for it. A wrapper's `-0.0` is left out:
/// prost-reflect (like prost) leaves a `-0.0` out of the wire for a field without presence,
/// as it does a `0.0` (Go and upb keep its sign), so only the `optional` fields can show it.
fn cases() -> Vec<Cases> {
    let fields: [(&str, &str, &[Case]); 18] = [
        ("i32", "int32", INT32),
        ("s32", "int32", INT32),
        ("sfx32", "int32", INT32),
        ("u32", "uint32", UINT32),
        ("fx32", "uint32", UINT32),
        ("i64", "int64", INT64),
        ("s64", "int64", INT64),
        ("sfx64", "int64", INT64),
        ("i64_wrapper", "int64", INT64),
        ("u64", "uint64", UINT64),
        ("fx64", "uint64", UINT64),
        ("u64_wrapper", "uint64", UINT64),
        ("f32", "float", FLOAT),
        ("f32_wrapper", "float", FLOAT),
        ("f64", "double", DOUBLE),
        ("data", "bytes", BYTES),
        ("flag", "bool", BOOL),
        ("level", "enum", ENUM),
    ];
    let negative_zero =
        |want: &Want| matches!(want, Want::Float(x) if x.to_bits() == (-0.0f32).to_bits());
    fields
        .into_iter()
        .map(|(field, kind, table)| {
            let cases = table
                .iter()
                .copied()
                .filter(|(_, want)| !(field.ends_with("_wrapper") && negative_zero(want)))
                .collect();
            Cases { field, kind, cases }
        })
        .collect()
}

/// Bodies that Python's `json_format` reads otherwise than Go's `protojson`, by type, with
/// why. The gateway follows Go: grpc-gateway is what its clients know. Each must still
/// differ, so that the list stays true.
const PYTHON_DIFFERS: &[(&str, &[&str], &str)] = &[
    (
        "int32",
        &["\"+1\"", "\"01\"", "\"1_000\""],
        "Python's int() takes a sign, leading zeros and underscores; Go a string only if it \
         holds a JSON number",
    ),
    (
        "int64",
        &["9223372036854775807.0", "9.223372036854775807e18"],
        "Python reads a number with a fraction or exponent as a double (2^63, out of range); \
         Go from its digits",
    ),
    (
        "uint64",
        &["1.8446744073709551615e19"],
        "Python reads it as a double (2^64, out of range); Go from its digits",
    ),
    (
        "float",
        &[
            "3.4028235e38",
            "3.4028235e+38",
            "-3.4028235e38",
            "340282356779733661637539395458142568447",
        ],
        "Python refuses a number whose double is past f32::MAX even when it rounds to \
         f32::MAX (the gateway writes f32::MAX as 3.4028235e38 itself); Go takes it",
    ),
    (
        "float",
        &["340282356779733661637539395458142568448", "\"1e39\""],
        "Python takes an integer or a string past the range of float as infinity; Go refuses",
    ),
    (
        "float",
        &["1.0000001788139343261718749"],
        "Python rounds to a double, then to a float: twice, up; Go once, down",
    ),
    (
        "float",
        &["-0"],
        "Python's JSON reader makes the integer -0 a 0; Go keeps the sign",
    ),
    (
        "double",
        &["-0"],
        "Python's JSON reader makes the integer -0 a 0; Go keeps the sign",
    ),
    (
        "float",
        &[
            "\"inf\"",
            "\"-inf\"",
            "\"infinity\"",
            "\" 1.5\"",
            "\"1.5 \"",
            "\"+1.5\"",
            "\".5\"",
            "\"1.\"",
        ],
        "Python's float() takes these; Go a JSON number, \"NaN\", \"Infinity\" or \"-Infinity\"",
    ),
    (
        "double",
        &["\"Inf\"", "\"-1e309\""],
        "Python's float() takes these (the second as -infinity); Go refuses",
    ),
    ("float", &["true"], "Python's bool is an int; Go refuses"),
    ("enum", &["true"], "Python's bool is an int; Go refuses"),
    (
        "enum",
        &["1.5"],
        "Python truncates; Go takes integral numbers only",
    ),
    (
        "bytes",
        &["\"QQ=\"", "\"+-8=\"", "\"QQ==QQ==\""],
        "Python's base64 decoder skips what it does not expect; Go refuses",
    ),
];

type Upstream = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// An upstream that keeps each request message it gets in `seen` and answers it back.
fn echo(seen: Arc<Mutex<Option<Bytes>>>) -> Upstream {
    BoxCloneSyncService::new(tower::service_fn(
        move |request: http::Request<tonic::body::Body>| {
            let seen = seen.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                *seen.lock().unwrap() = Some(body.slice(5..));
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames: Vec<Result<_, Infallible>> =
                    vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
                let body = StreamBody::new(futures_util::stream::iter(frames));
                Ok(http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(tonic::body::Body::new(body))
                    .unwrap())
            }
        },
    ))
}

/// The gateway over [`echo`], and what the upstream got last.
struct Harness {
    pool: DescriptorPool,
    gateway: Gateway<Upstream>,
    seen: Arc<Mutex<Option<Bytes>>>,
}

/// The answer to one request: the message the service got, or the status and JSON body.
type Answer = Result<DynamicMessage, (StatusCode, Value)>;

impl Harness {
    fn new() -> Self {
        let pool = compile(&["scalars.proto"]);
        let seen = Arc::new(Mutex::new(None));
        let gateway =
            Gateway::new(pool.clone(), echo(seen.clone()), GatewayOptions::default()).unwrap();
        Self {
            pool,
            gateway,
            seen,
        }
    }

    async fn send(&self, request: http::Request<String>) -> Answer {
        *self.seen.lock().unwrap() = None;
        let response = self.gateway.handle(request).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status != StatusCode::OK {
            return Err((status, serde_json::from_slice(&body).unwrap()));
        }
        let got = self
            .seen
            .lock()
            .unwrap()
            .take()
            .expect("the call reached the service");
        let values = self.pool.get_message_by_name("scalars.v1.Values").unwrap();
        Ok(DynamicMessage::decode(values, got).unwrap())
    }

    async fn body(&self, key: &str, json: &str) -> Answer {
        let request = http::Request::post("/v1/values")
            .header("content-type", "application/json")
            .body(format!("{{\"{key}\": {json}}}"))
            .unwrap();
        self.send(request).await
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        self.send(
            http::Request::get(path_and_query)
                .body(String::new())
                .unwrap(),
        )
        .await
    }
}

/// The field's JSON name, as a body would use it.
fn json_name(pool: &DescriptorPool, field: &str) -> String {
    let values = pool.get_message_by_name("scalars.v1.Values").unwrap();
    values
        .get_field_by_name(field)
        .unwrap()
        .json_name()
        .to_owned()
}

/// Panics unless `answer` is `want` for `field`: the value the service got, or a 400 whose
/// message names `shown` (the field as the request named it).
fn check(answer: &Answer, field: &str, shown: &str, want: Want, case: &str) {
    let message = match (answer, want) {
        (Err((status, body)), Refused) => {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{case}: {body}");
            assert_eq!(body["code"], 3, "{case}: {body}");
            let text = body["message"].as_str().unwrap();
            assert!(
                text.contains(shown),
                "{case}: the error names no field: {text}"
            );
            return;
        }
        (Err((status, body)), _) => panic!("{case}: refused ({status}): {body}, want {want:?}"),
        (Ok(message), Refused) => panic!("{case}: taken ({message:?}), want it refused"),
        (Ok(message), _) => message,
    };
    let descriptor = message.descriptor().get_field_by_name(field).unwrap();
    let got = if !message.has_field(&descriptor) {
        None
    } else if let prost_reflect::Value::Message(wrapper) = &*message.get_field(&descriptor) {
        Some(wrapper.get_field_by_name("value").unwrap().into_owned())
    } else {
        Some(message.get_field(&descriptor).into_owned())
    };
    use prost_reflect::Value as V;
    let same = match (&got, want) {
        (None, Unset) => true,
        (Some(V::I32(got)), Want::Int(want)) => i64::from(*got) == want,
        (Some(V::I64(got)), Want::Int(want)) => *got == want,
        (Some(V::U32(got)), Want::Uint(want)) => u64::from(*got) == want,
        (Some(V::U64(got)), Want::Uint(want)) => *got == want,
        (Some(V::F32(got)), Want::Float(want)) => {
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
        }
        (Some(V::F64(got)), Want::Double(want)) => {
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
        }
        (Some(V::Bytes(got)), Want::Bytes(want)) => got[..] == *want,
        (Some(V::Bool(got)), Want::Bool(want)) => *got == want,
        (Some(V::EnumNumber(got)), Want::Enum(want)) => *got == want,
        _ => false,
    };
    assert!(same, "{case}: the service got {got:?}, want {want:?}");
}

#[tokio::test]
async fn bodies_take_what_protojson_takes_at_every_types_extremes() {
    let harness = Harness::new();
    for Cases { field, cases, .. } in cases() {
        let key = json_name(&harness.pool, field);
        for (json, want) in cases {
            let answer = harness.body(&key, json).await;
            check(
                &answer,
                field,
                &key,
                want,
                &format!("body {{{key:?}: {json}}}"),
            );
        }
    }
}

/// The text a path or query parameter carries for a JSON token: a string's content, a
/// number as written; `None` for tokens no parameter can spell.
fn parameter(json: &str) -> Option<String> {
    match json.as_bytes().first() {
        Some(b'"') => serde_json::from_str(json).ok(),
        Some(b'-' | b'0'..=b'9') => Some(json.to_owned()),
        _ => None,
    }
}

/// `text` percent-encoded for a path segment or a query value.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn path_and_query_parameters_take_numbers_as_their_json_strings() {
    let harness = Harness::new();
    let numeric = cases()
        .into_iter()
        .filter(|numeric| !matches!(numeric.kind, "bytes" | "bool" | "enum"));
    for Cases { field, cases, .. } in numeric {
        for (json, want) in cases {
            let Some(text) = parameter(json) else {
                continue;
            };
            let query = format!("/v1/values?{field}={}", encoded(&text));
            check(&harness.get(&query).await, field, field, want, &query);
            if !text.is_empty() {
                let path = format!("/v1/{field}/{}", encoded(&text));
                check(&harness.get(&path).await, field, field, want, &path);
            }
        }
    }
    // Bytes in a query: base64 of either alphabet, padded or not, as in a body.
    for (text, want) in [
        ("QQ", Want::Bytes(b"A")),
        ("-_8", Want::Bytes(&[0xfb, 0xff])),
        ("+/8=", Want::Bytes(&[0xfb, 0xff])),
        ("QQ=", Refused),
    ] {
        let query = format!("/v1/values?data={}", encoded(text));
        check(&harness.get(&query).await, "data", "data", want, &query);
    }
}

#[tokio::test]
async fn lists_and_maps_read_each_value_by_its_type() {
    let harness = Harness::new();
    let message = harness
        .body("f32s", "[3.4028235e38, \"NaN\", -0, \"-Infinity\"]")
        .await
        .unwrap();
    let prost_reflect::Value::List(got) = &*message.get_field_by_name("f32s").unwrap() else {
        panic!("f32s is a list");
    };
    let got: Vec<u32> = got.iter().map(|v| v.as_f32().unwrap().to_bits()).collect();
    let want = [f32::MAX, f32::NAN, -0.0, f32::NEG_INFINITY].map(f32::to_bits);
    assert_eq!(got, want);

    let error = harness.body("f32s", "[1, 1e39]").await.unwrap_err();
    assert_eq!(error.0, StatusCode::BAD_REQUEST);
    assert!(
        error.1["message"].as_str().unwrap().contains("f32s[1]"),
        "{}",
        error.1
    );

    let message = harness
        .body(
            "f64ByU64",
            r#"{"18446744073709551615": 1.7976931348623157e308}"#,
        )
        .await
        .unwrap();
    let map = message.get_field_by_name("f64_by_u64").unwrap();
    let map = map.as_map().unwrap();
    assert_eq!(
        map.get(&prost_reflect::MapKey::U64(u64::MAX))
            .and_then(|value| value.as_f64()),
        Some(f64::MAX)
    );
    for refused in [
        r#"{"18446744073709551616": 1}"#,
        r#"{"+1": 1}"#,
        r#"{"1": 1e309}"#,
    ] {
        let error = harness.body("f64ByU64", refused).await.unwrap_err();
        assert_eq!(error.0, StatusCode::BAD_REQUEST, "{refused}: {}", error.1);
        assert!(
            error.1["message"].as_str().unwrap().contains("f64ByU64"),
            "{refused}: {}",
            error.1
        );
    }

    let query = "/v1/values?f32s=3.4028235e%2B38&f32s=NaN&f32s=-0";
    let message = harness.get(query).await.unwrap();
    let list = message.get_field_by_name("f32s").unwrap();
    let got: Vec<u32> = list
        .as_list()
        .unwrap()
        .iter()
        .map(|v| v.as_f32().unwrap().to_bits())
        .collect();
    assert_eq!(got, [f32::MAX, f32::NAN, -0.0].map(f32::to_bits));
}

/// Python `json_format`'s reading of each body as `scalars.v1.Values`: the message's
/// encoding, or `None` where it refuses.
fn python_reads(pool: &DescriptorPool, bodies: &[String]) -> Vec<Option<Vec<u8>>> {
    let script = "import json, sys\n\
        from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory\n\
        request = json.load(sys.stdin)\n\
        files = descriptor_pb2.FileDescriptorSet.FromString(bytes.fromhex(request['descriptors']))\n\
        pool = descriptor_pool.DescriptorPool()\n\
        for file in files.file:\n    pool.Add(file)\n\
        Values = message_factory.GetMessageClass(pool.FindMessageTypeByName('scalars.v1.Values'))\n\
        out = []\n\
        for body in request['bodies']:\n\
        \x20   message = Values()\n\
        \x20   try:\n\
        \x20       json_format.Parse(body, message)\n\
        \x20       out.append(message.SerializeToString().hex())\n\
        \x20   except json_format.ParseError:\n\
        \x20       out.append(None)\n\
        print(json.dumps(out))\n";
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let input = serde_json::json!({"descriptors": hex(&pool.encode_to_vec()), "bodies": bodies});
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run Python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Option<String>> = serde_json::from_slice(&output.stdout).unwrap();
    answers
        .into_iter()
        .map(|answer| {
            answer.map(|hex| {
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect()
            })
        })
        .collect()
}

#[tokio::test]
async fn python_json_format_agrees_except_where_it_differs_from_go() {
    let harness = Harness::new();
    let mut asked = Vec::new();
    let mut ours = Vec::new();
    for Cases { field, kind, cases } in cases() {
        let key = json_name(&harness.pool, field);
        for (json, _) in cases {
            let body = format!("{{\"{key}\": {json}}}");
            let answer = harness.body(&key, json).await;
            ours.push(answer.ok().map(|message| {
                use prost::Message as _;
                message.encode_to_vec()
            }));
            asked.push((kind, json, body));
        }
    }
    let bodies: Vec<String> = asked.iter().map(|(_, _, body)| body.clone()).collect();
    let python = python_reads(&harness.pool, &bodies);
    let mut disagreements = Vec::new();
    for (((kind, json, body), ours), python) in asked.iter().zip(&ours).zip(&python) {
        let listed = PYTHON_DIFFERS
            .iter()
            .any(|(listed, jsons, _)| listed == kind && jsons.contains(json));
        if (ours == python) == listed {
            disagreements.push(format!(
                "{body}: gateway {ours:?}, Python {python:?}{}",
                if listed {
                    " (listed as differing, but agrees)"
                } else {
                    ""
                }
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
