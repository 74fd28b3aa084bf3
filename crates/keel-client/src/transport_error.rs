//! What an HTTP/2 transport error means for a call: the gRPC status it gets, and whether
//! the server cannot have seen it (so that it may be sent again transparently).

use tonic::{Code, Status};

use super::subchannel::Backend;

/// True when the server refused the stream (REFUSED_STREAM, or a GOAWAY that came before
/// it): gRPC guarantees the application never saw such a call.
pub(crate) fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = error.source();
    }
    false
}

/// The status a transport failure gives a call, per gRPC's HTTP/2 mapping: a stream the
/// server refused or a connection that failed is UNAVAILABLE; a cancelled stream
/// CANCELLED; ENHANCE_YOUR_CALM from the server is RESOURCE_EXHAUSTED; a protocol the
/// server broke is [`broken_protocol_status`].
pub(crate) fn transport_status(
    error: &(dyn std::error::Error + 'static),
    backend: &Backend,
) -> Status {
    let address = &backend.address;
    if let Some(status) = broken_protocol_status(error, backend.header_limit) {
        return Status::internal(format!("{address}: {}", status.message()));
    }
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && let Some(reason) = h2.reason()
        {
            let code = match reason {
                h2::Reason::CANCEL => Code::Cancelled,
                h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
                h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
                h2::Reason::REFUSED_STREAM | h2::Reason::NO_ERROR => Code::Unavailable,
                _ if h2.is_go_away() || h2.is_io() => Code::Unavailable,
                _ => Code::Internal,
            };
            return Status::new(code, format!("{address}: {error}"));
        }
        source = error.source();
    }
    // A TLS alert after the handshake: in TLS 1.3 a server refuses the client's
    // certificate only once the client's handshake is over.
    let mut source = Some(error);
    while let Some(inner) = source {
        if let Some(tls) = inner.downcast_ref::<keel_tls::rustls::Error>() {
            return Status::unavailable(format!(
                "{address}: {error}: {}",
                keel_tls::client::explain(tls)
            ));
        }
        source = inner.source();
    }
    Status::unavailable(format!("{address}: {error}"))
}

/// The status of a call whose stream or connection this client's HTTP/2 stack (h2) closed
/// because the server broke the protocol, most often with response headers over the
/// client's `header_limit`: INTERNAL, naming that limit. `None` for any other error.
///
/// [`super::Channel`] applies it itself; this is for errors of other transports, such as
/// tonic's channel, whose own wording ("h2 protocol error: http2 error") says nothing of
/// the cause.
pub fn broken_protocol_status(
    error: &(dyn std::error::Error + 'static),
    header_limit: u32,
) -> Option<Status> {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            let broken = h2.is_library()
                && matches!(
                    h2.reason(),
                    Some(
                        h2::Reason::PROTOCOL_ERROR
                            | h2::Reason::COMPRESSION_ERROR
                            | h2::Reason::ENHANCE_YOUR_CALM
                    )
                );
            return broken.then(|| {
                Status::internal(format!(
                    "{h2}: the server's response headers were malformed or larger than this \
                     client's limit of {header_limit} bytes (http2.max_header_list_size)"
                ))
            });
        }
        source = error.source();
    }
    None
}
