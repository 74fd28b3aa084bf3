//! Turns an unexpected failure into an INTERNAL status that tells the caller only a reference.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The domain of the reasons Keel itself gives, such as [`INTERNAL_REASON`].
pub const KEEL_DOMAIN: &str = "keel.dev";

/// The `ErrorInfo` reason of statuses made by [`internal`].
pub const INTERNAL_REASON: &str = "INTERNAL";

/// The `ErrorInfo` metadata key under which [`internal`] puts the error id.
pub const ERROR_ID_KEY: &str = "error_id";

/// Reports an unexpected failure: logs `error` and its whole `source()` chain with
/// `tracing::error!` under a fresh error id, and returns an INTERNAL status that carries
/// nothing of it but that id.
///
/// The caller gets the message `internal error; reference <id>` and an `ErrorInfo` with
/// reason [`INTERNAL_REASON`], domain [`KEEL_DOMAIN`] and metadata [`ERROR_ID_KEY`] → id, so
/// a support request can be matched to the log line. The error's text (SQL, paths, hosts,
/// stack details) never reaches the caller.
///
/// Inside a call, the id is the call's trace id (32 hex digits), the same the "finished
/// call" record and the spans carry, so the reference leads to the whole trace; outside one,
/// 16 random hex digits.
///
/// ```
/// # fn load() -> Result<u64, std::io::Error> { Err(std::io::Error::other("disk on fire")) }
/// # fn handler() -> Result<u64, tonic::Status> {
/// let balance = load().map_err(|e| keel_core::error::internal(&e))?;
/// # Ok(balance) }
/// let status = handler().unwrap_err();
/// assert_eq!(status.code(), tonic::Code::Internal);
/// assert!(!status.message().contains("disk"));
/// ```
pub fn internal(error: &dyn Error) -> Status {
    let id = crate::context::current_trace_id()
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    tracing::error!(error_id = %id, error = %Chain(error), "internal error");
    let metadata = HashMap::from([(ERROR_ID_KEY.to_owned(), id.clone())]);
    Status::with_error_details(
        Code::Internal,
        format!("internal error; reference {id}"),
        ErrorDetails::with_error_info(INTERNAL_REASON, KEEL_DOMAIN, metadata),
    )
}

/// Displays an error and its sources as `outer: inner: root`.
struct Chain<'a>(&'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::Details;

    /// An error whose text, and its source's, must stay on the server.
    #[derive(Debug)]
    struct QueryFailed(io::Error);

    impl fmt::Display for QueryFailed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("SELECT balance FROM accounts failed on db-7.internal")
        }
    }

    impl Error for QueryFailed {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn query_failed() -> QueryFailed {
        QueryFailed(io::Error::other("password=hunter2 rejected"))
    }

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn internal_logged(error: &dyn Error) -> (Status, String) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let status = tracing::subscriber::with_default(subscriber, || internal(error));
        let log = String::from_utf8(captured.0.lock().expect("log buffer").clone());
        (status, log.expect("utf-8 log"))
    }

    fn error_id(status: &Status) -> String {
        Details::from_status(status).metadata()[ERROR_ID_KEY].clone()
    }

    #[test]
    fn status_carries_a_reference_and_no_internals() {
        let (status, _) = internal_logged(&query_failed());
        assert_eq!(status.code(), Code::Internal);
        let id = error_id(&status);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(status.message(), format!("internal error; reference {id}"));
        let details = Details::from_status(&status);
        assert_eq!(details.reason(), Some(INTERNAL_REASON));
        assert_eq!(details.domain(), Some(KEEL_DOMAIN));
        assert_eq!(details.metadata().len(), 1);
        assert!(!details.is_retryable());
        for secret in ["SELECT", "db-7", "hunter2", "password"] {
            assert!(!status.message().contains(secret), "{secret}");
            let bytes = status.details();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    #[test]
    fn log_has_the_whole_chain_and_the_same_reference() {
        let (status, log) = internal_logged(&query_failed());
        let id = error_id(&status);
        assert!(log.contains("ERROR"), "{log}");
        assert!(log.contains(&format!("error_id={id}")), "{log}");
        assert!(
            log.contains("failed on db-7.internal: password=hunter2 rejected"),
            "{log}"
        );
    }

    #[test]
    fn inside_a_call_the_reference_is_its_trace_id() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        let trace_id = TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128);
        let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from(7),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ));
        let _attached = cx.attach();
        let status = internal(&query_failed());
        assert_eq!(error_id(&status), "0af7651916cd43dd8448eb211c80319c");
    }

    #[test]
    fn every_error_gets_its_own_reference() {
        let first = error_id(&internal(&query_failed()));
        let second = error_id(&internal(&query_failed()));
        assert_ne!(first, second);
    }
}
