//! A request body that can be sent more than once, for retries, hedging and transparent
//! retries of calls that never reached the server.
//!
//! The first attempt that reads past what is kept pulls the next frame from the caller's
//! body and keeps a copy (a `Bytes` clone, no copying of data); other attempts read the
//! copies, and wait when they catch up. Past `limit` bytes nothing more is kept and the call
//! is committed to the attempts reading then: no new attempt can start (gRPC's per-call
//! retry buffer; grpc-go's default is 256 KiB).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// The shared source and copies.
#[derive(Debug)]
struct Shared {
    source: tonic::body::Body,
    /// Data frames kept, from frame number `first` on.
    frames: Vec<Bytes>,
    first: usize,
    kept_bytes: usize,
    limit: usize,
    /// Set once copies were dropped for exceeding the limit.
    overflowed: bool,
    /// How the source ended, once it has: its trailers, or its error's text.
    end: Option<End>,
    /// Attempts waiting for the frame after the last one kept.
    waiting: Vec<Waker>,
}

#[derive(Debug, Clone)]
enum End {
    Trailers(Option<http::HeaderMap>),
    Failed(String),
}

/// The handle a call keeps to make bodies for its attempts.
#[derive(Debug, Clone)]
pub(crate) struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    /// Wraps the caller's body, keeping up to `limit` bytes for new attempts.
    pub(crate) fn new(source: tonic::body::Body, limit: usize) -> Self {
        Self(Arc::new(Mutex::new(Shared {
            source,
            frames: Vec::new(),
            first: 0,
            kept_bytes: 0,
            limit,
            overflowed: false,
            end: None,
            waiting: Vec::new(),
        })))
    }

    /// True while a new attempt could send the whole body.
    pub(crate) fn can_replay(&self) -> bool {
        !self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .overflowed
    }

    /// A body for one attempt, from the start.
    pub(crate) fn body(&self) -> tonic::body::Body {
        tonic::body::Body::new(ReplayBody {
            shared: self.0.clone(),
            next: 0,
            ended: false,
        })
    }
}

/// One attempt's view of the body.
struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// The number of the next data frame this attempt sends.
    next: usize,
    ended: bool,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let shared = self.shared.clone();
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let end_of_kept = shared.first + shared.frames.len();
        if self.next < shared.first {
            self.ended = true;
            return Poll::Ready(Some(Err(Status::internal(
                "the request body was too large to send again",
            ))));
        }
        if self.next < end_of_kept {
            let data = shared.frames[self.next - shared.first].clone();
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(end) = shared.end.clone() {
            self.ended = true;
            return Poll::Ready(match end {
                End::Trailers(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                End::Trailers(None) => None,
                End::Failed(error) => Some(Err(Status::cancelled(format!(
                    "the request body failed: {error}"
                )))),
            });
        }
        let polled = Pin::new(&mut shared.source).poll_frame(cx);
        let outcome = match polled {
            Poll::Pending => {
                if !shared.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    shared.waiting.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !shared.overflowed && shared.kept_bytes + data.len() <= shared.limit {
                        shared.kept_bytes += data.len();
                        shared.frames.push(data.clone());
                    } else {
                        // Committed: drop the copies; attempts that have not read them yet
                        // cannot finish.
                        shared.overflowed = true;
                        shared.first = end_of_kept + 1;
                        shared.frames.clear();
                        shared.kept_bytes = 0;
                    }
                    self.next = end_of_kept + 1;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    shared.end = Some(End::Trailers(trailers.clone()));
                    self.ended = true;
                    Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers))))
                }
            },
            Poll::Ready(Some(Err(status))) => {
                shared.end = Some(End::Failed(status.message().to_owned()));
                self.ended = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                shared.end = Some(End::Trailers(None));
                self.ended = true;
                Poll::Ready(None)
            }
        };
        for waker in shared.waiting.drain(..) {
            waker.wake();
        }
        outcome
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn body(chunks: &[&'static str]) -> tonic::body::Body {
        let frames: Vec<Result<Frame<Bytes>, Status>> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
            .collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
    }

    async fn read(body: tonic::body::Body) -> Result<Vec<u8>, Status> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn every_attempt_sends_the_whole_body() {
        let replay = Replay::new(body(&["ab", "cd", "e"]), 1024);
        assert_eq!(read(replay.body()).await.unwrap(), b"abcde");
        assert_eq!(read(replay.body()).await.unwrap(), b"abcde");
        assert!(replay.can_replay());
    }

    #[tokio::test]
    async fn attempts_reading_side_by_side_each_get_every_frame() {
        let replay = Replay::new(body(&["ab", "cd", "e"]), 1024);
        let (mut first, mut second) = (replay.body(), replay.body());
        let mut a = Vec::new();
        let mut b = Vec::new();
        while let Some(frame) = first.frame().await {
            a.extend_from_slice(&frame.unwrap().into_data().unwrap());
            if let Some(frame) = second.frame().await {
                b.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
        }
        while let Some(frame) = second.frame().await {
            b.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!((a.as_slice(), b.as_slice()), (&b"abcde"[..], &b"abcde"[..]));
    }

    #[tokio::test]
    async fn past_the_limit_the_call_is_committed() {
        let replay = Replay::new(body(&["abc", "def"]), 4);
        assert_eq!(read(replay.body()).await.unwrap(), b"abcdef");
        assert!(!replay.can_replay());
        let error = read(replay.body()).await.unwrap_err();
        assert!(error.message().contains("too large"), "{error:?}");
    }
}
