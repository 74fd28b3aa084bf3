//! Request bodies with a progress timeout, against peers that trickle bytes.
//!
//! A body that sends one byte a second never trips an idle timeout, yet pins a stream,
//! its buffers and a handler for as long as the connection lives. [`RequestBody`] bounds
//! the time a *started* unit of input may take to arrive whole:
//! - gRPC (`application/grpc*`): each length-prefixed message, from its first byte to its
//!   last. Gaps between messages are not limited: a quiet bidirectional stream is legal.
//! - anything else (REST/JSON, gRPC-Web, admin): the whole body, from when the handler
//!   first reads it.
//!
//! Past `connection.body_timeout` the body fails with DEADLINE_EXCEEDED (a `tonic::Status`,
//! so gRPC handlers answer with it), and the listener's `body` timeout counter grows. When
//! the handler drops the body, the transport resets the stream, which frees it. Nothing
//! reads the clock while a body keeps pace: a timer is armed only for a partial message.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// The error type of [`RequestBody`].
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How a body is cut into units whose arrival is timed.
#[derive(Debug)]
enum Framing {
    /// gRPC length-prefixed messages: `prefix` bytes of the 5-byte prefix seen, then
    /// `payload` bytes of the message still to come.
    Grpc {
        prefix: [u8; 5],
        have: usize,
        payload: u64,
    },
    /// One unit: the whole body.
    Whole { started: bool },
}

impl Framing {
    /// Follows `data` through the framing; true while a unit is partly received.
    fn advance(&mut self, mut data: &[u8]) -> bool {
        match self {
            Framing::Whole { .. } => true,
            Framing::Grpc {
                prefix,
                have,
                payload,
            } => {
                while !data.is_empty() {
                    if *payload > 0 {
                        let take = (*payload).min(data.len() as u64);
                        *payload -= take;
                        data = &data[take as usize..];
                        continue;
                    }
                    let take = (5 - *have).min(data.len());
                    prefix[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have == 5 {
                        *have = 0;
                        *payload = u64::from(u32::from_be_bytes([
                            prefix[1], prefix[2], prefix[3], prefix[4],
                        ]));
                    }
                }
                *have > 0 || *payload > 0
            }
        }
    }
}

/// A request body whose started messages must arrive whole within a timeout.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    framing: Framing,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    timeouts: Counter,
}

impl RequestBody {
    /// Wraps `inner`; `grpc` selects message framing. A zero `timeout` disables the limit.
    pub(crate) fn new(inner: Incoming, grpc: bool, timeout: Duration, timeouts: Counter) -> Self {
        let framing = if grpc {
            Framing::Grpc {
                prefix: [0; 5],
                have: 0,
                payload: 0,
            }
        } else {
            Framing::Whole { started: false }
        };
        Self {
            inner,
            framing,
            timeout,
            deadline: None,
            timeouts,
        }
    }

    fn arm(&mut self) {
        if self.deadline.is_none() && !self.timeout.is_zero() {
            self.deadline = Some(Box::pin(tokio::time::sleep_until(
                Instant::now() + self.timeout,
            )));
        }
    }

    fn timed_out(&self) -> BodyError {
        let unit = match self.framing {
            Framing::Grpc { .. } => "a request message",
            Framing::Whole { .. } => "the request body",
        };
        Box::new(tonic::Status::deadline_exceeded(format!(
            "{unit} did not arrive whole within {:?} (connection.body_timeout); \
             the peer sends too slowly",
            self.timeout
        )))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Framing::Whole { started } = &mut this.framing
            && !*started
        {
            *started = true;
            if !this.inner.is_end_stream() {
                this.arm();
            }
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.timeouts.inc();
            tracing::debug!(timeout = ?this.timeout, "request body too slow; cutting it");
            return Poll::Ready(Some(Err(this.timed_out())));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let partial = this.framing.advance(data.chunk());
                    match (partial, &this.framing) {
                        (_, Framing::Whole { .. }) => {}
                        (true, _) => this.arm(),
                        (false, _) => this.deadline = None,
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(Box::new(error)))),
            None => {
                this.deadline = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_framing() -> Framing {
        Framing::Grpc {
            prefix: [0; 5],
            have: 0,
            payload: 0,
        }
    }

    fn partial_after(framing: &mut Framing, chunks: &[&[u8]]) -> Vec<bool> {
        chunks.iter().map(|chunk| framing.advance(chunk)).collect()
    }

    #[test]
    fn grpc_messages_are_partial_until_their_last_byte() {
        let mut framing = grpc_framing();
        let message = [0, 0, 0, 0, 3, b'a', b'b', b'c'];
        assert_eq!(
            partial_after(
                &mut framing,
                &[&message[..2], &message[2..6], &message[6..]]
            ),
            [true, true, false]
        );
        // Two messages and the start of a third in one chunk.
        let mut chunk = [message, message].concat();
        chunk.push(0);
        assert_eq!(partial_after(&mut framing, &[&chunk]), [true]);
        // An empty message is whole at its prefix.
        let mut framing = grpc_framing();
        assert_eq!(partial_after(&mut framing, &[&[0, 0, 0, 0, 0]]), [false]);
    }
}
