//! gRPC status codes as observability reports them: names as grpc-go spells them (the
//! `grpc_code` label), who is at fault, and reading the code of a finished call.

use http::{HeaderMap, HeaderName};
use tonic::Code;

/// The `grpc_code` label value: grpc-go's `codes.Code.String()` (`OK`, `Canceled`,
/// `InvalidArgument`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// True for the codes that mean the server failed, not the caller: what marks a server span
/// as an error under OpenTelemetry's RPC conventions (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
pub fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// How loud the "finished call" record of a server call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// OK, and CANCELLED: the client gave up, hedged or reset the stream, which is routine
    /// and which any client can do in bulk.
    Debug,
    /// The caller's mistake or choice (invalid argument, not found, ...), and whatever ends a
    /// call the caller made malformed (an unknown method, a malformed `grpc-timeout`).
    Info,
    /// The server could not serve in time or at all (deadline, unavailable, unimplemented).
    Warn,
    /// The server broke (unknown, internal, data loss).
    Error,
}

/// The log level of a finished server call with `code`; `caller_at_fault` when the request
/// itself was malformed (an unknown method, a malformed header), which caps it at info.
pub fn severity(code: Code, caller_at_fault: bool) -> Severity {
    let severity = match code {
        Code::Ok | Code::Cancelled => Severity::Debug,
        Code::Unknown | Code::Internal | Code::DataLoss => Severity::Error,
        code if is_server_fault(code) => Severity::Warn,
        _ => Severity::Info,
    };
    if caller_at_fault {
        severity.min(Severity::Info)
    } else {
        severity
    }
}

/// The status a header block (trailers, or the headers of a trailers-only response)
/// carries: its code, and its message when not OK.
pub fn status_of(headers: &HeaderMap) -> Option<(Code, Option<String>)> {
    const STATUS: HeaderName = HeaderName::from_static("grpc-status");
    const MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    let code = headers.get(STATUS)?;
    let code = std::str::from_utf8(code.as_bytes())
        .ok()
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    let message = (code != Code::Ok)
        .then(|| headers.get(MESSAGE))
        .flatten()
        .map(|value| percent_decode(value.as_bytes()));
    Some((code, message))
}

/// grpc-message is percent-encoded; decode it leniently (bad escapes stay as they are).
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                out.push((hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0)) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_grpc_go() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::FailedPrecondition), "FailedPrecondition");
        assert_eq!(code_name(Code::Unauthenticated), "Unauthenticated");
    }

    #[test]
    fn severity_by_fault() {
        assert_eq!(severity(Code::Ok, false), Severity::Debug);
        assert_eq!(severity(Code::Cancelled, false), Severity::Debug);
        assert_eq!(severity(Code::NotFound, false), Severity::Info);
        assert_eq!(severity(Code::Unimplemented, false), Severity::Warn);
        assert_eq!(severity(Code::Unavailable, false), Severity::Warn);
        assert_eq!(severity(Code::Internal, false), Severity::Error);
        // A malformed request caps it at info, and stays at debug where it was.
        assert_eq!(severity(Code::Unimplemented, true), Severity::Info);
        assert_eq!(severity(Code::Internal, true), Severity::Info);
        assert_eq!(severity(Code::Cancelled, true), Severity::Debug);
    }

    #[test]
    fn reads_status_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "no%20such%20thing %zz".parse().unwrap());
        assert_eq!(
            status_of(&headers),
            Some((Code::NotFound, Some("no such thing %zz".to_owned())))
        );
        headers.insert("grpc-status", "banana".parse().unwrap());
        assert_eq!(status_of(&headers).unwrap().0, Code::Unknown);
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(status_of(&headers), Some((Code::Ok, None)));
    }
}
