//! Frames that arrive after the server's final GOAWAY, on streams it will never process.
//!
//! RFC 9113 §6.8: once a server has sent GOAWAY with last stream id N, frames on streams
//! above N are to be ignored. h2 0.4 ignores HEADERS, DATA and RST_STREAM there, but a
//! WINDOW_UPDATE on such a stream trips its "stream ID implicitly closed" check, which
//! fails the *whole connection* with PROTOCOL_ERROR and kills the streams at or below N
//! that graceful shutdown promised to finish. A client racing the GOAWAY (it opened a
//! stream before it read the frame) does exactly that.
//!
//! [`LateFrameGuard`] sits between the socket and hyper. It follows the frame boundaries
//! of both directions: on the way out it reads the last stream id of every GOAWAY the
//! server sends; on the way in it turns a WINDOW_UPDATE above that id into a frame of an
//! unknown type with the same length, which every HTTP/2 implementation must ignore
//! (§5.5). Nothing else changes, so the bytes on the wire keep their length and HPACK
//! state is untouched. The cost is one 9-byte header look per frame.
//!
//! It also tells the connection driver when the client has started to speak HTTP/2 (the
//! preface and a first frame arrived) or HTTP/1.1, for the handshake timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
/// A frame type no specification assigns; receivers ignore it (RFC 9113 §5.5).
const IGNORED_TYPE: u8 = 0xfb;
/// The last stream id before any GOAWAY: every stream may still be processed.
const NO_GOAWAY: u32 = u32::MAX;

/// What the client speaks, as far as the guard has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Not enough bytes yet to tell.
    Undecided = 0,
    /// The HTTP/2 preface and a complete first frame arrived.
    Http2 = 1,
    /// The first bytes were not the HTTP/2 preface.
    Http1 = 2,
}

/// Shared view of the protocol a connection's client speaks.
#[derive(Debug, Default)]
pub(crate) struct Handshake(AtomicU8);

impl Handshake {
    /// What the client speaks so far.
    pub(crate) fn protocol(&self) -> Protocol {
        match self.0.load(Ordering::Acquire) {
            1 => Protocol::Http2,
            2 => Protocol::Http1,
            _ => Protocol::Undecided,
        }
    }

    fn set(&self, protocol: Protocol) {
        self.0.store(protocol as u8, Ordering::Release);
    }
}

/// Where the incoming byte stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Incoming {
    /// This many bytes of the preface matched so far.
    Preface(usize),
    /// At a frame boundary after `skip` more payload bytes.
    Frames { skip: usize, seen_frame: bool },
    /// Not HTTP/2: bytes pass untouched.
    Passthrough,
}

/// Walks the bytes the client sent, rewriting late WINDOW_UPDATE frames in place.
#[derive(Debug)]
struct ReadScan {
    state: Incoming,
}

impl ReadScan {
    /// Scans `bytes` (which continue the stream) and returns how many may be handed on:
    /// all but a trailing incomplete frame header, which needs more bytes first.
    fn scan(&mut self, bytes: &mut [u8], last_id: u32, handshake: &Handshake) -> Scanned {
        let mut pos = 0;
        let mut ignored = 0;
        while pos < bytes.len() {
            match &mut self.state {
                Incoming::Passthrough => return Scanned::all(bytes.len(), ignored),
                Incoming::Preface(matched) => {
                    let want = &PREFACE[*matched..];
                    let take = want.len().min(bytes.len() - pos);
                    if bytes[pos..pos + take] != want[..take] {
                        self.state = Incoming::Passthrough;
                        handshake.set(Protocol::Http1);
                        return Scanned::all(bytes.len(), ignored);
                    }
                    *matched += take;
                    pos += take;
                    if *matched == PREFACE.len() {
                        self.state = Incoming::Frames {
                            skip: 0,
                            seen_frame: false,
                        };
                    }
                }
                Incoming::Frames { skip, seen_frame } => {
                    if *skip > 0 {
                        let take = (*skip).min(bytes.len() - pos);
                        *skip -= take;
                        pos += take;
                        continue;
                    }
                    let Some(header) = bytes.get_mut(pos..pos + FRAME_HEADER) else {
                        return Scanned {
                            release: pos,
                            ignored,
                        };
                    };
                    let length = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    let stream = stream_id(&header[5..9]);
                    if header[3] == WINDOW_UPDATE && stream > last_id {
                        header[3] = IGNORED_TYPE;
                        header[4] = 0;
                        ignored += 1;
                    }
                    if !*seen_frame {
                        *seen_frame = true;
                        handshake.set(Protocol::Http2);
                    }
                    *skip = length;
                    pos += FRAME_HEADER;
                }
            }
        }
        Scanned::all(bytes.len(), ignored)
    }
}

/// The outcome of scanning incoming bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scanned {
    /// Bytes that may be handed on.
    release: usize,
    /// Late frames turned into ignored ones.
    ignored: u64,
}

impl Scanned {
    fn all(release: usize, ignored: u64) -> Self {
        Self { release, ignored }
    }
}

/// Follows the frames the server writes to learn the last stream id of its GOAWAYs.
#[derive(Debug)]
struct WriteScan {
    header: [u8; FRAME_HEADER],
    have: usize,
    skip: usize,
    /// Collecting a GOAWAY's first payload bytes (its last stream id).
    goaway: Option<([u8; 4], usize)>,
}

impl WriteScan {
    fn new() -> Self {
        Self {
            header: [0; FRAME_HEADER],
            have: 0,
            skip: 0,
            goaway: None,
        }
    }

    /// Follows `bytes`, which the socket accepted; updates `last_id` on a GOAWAY.
    fn scan(&mut self, mut bytes: &[u8], last_id: &mut u32) {
        while !bytes.is_empty() {
            if let Some((id, got)) = &mut self.goaway {
                let take = (4 - *got).min(bytes.len());
                id[*got..*got + take].copy_from_slice(&bytes[..take]);
                *got += take;
                self.skip -= take;
                bytes = &bytes[take..];
                if *got == 4 {
                    *last_id = (*last_id).min(stream_id(id));
                    self.goaway = None;
                }
                continue;
            }
            if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                self.skip -= take;
                bytes = &bytes[take..];
                continue;
            }
            if self.have == 0 && bytes.len() >= FRAME_HEADER + 4 {
                // Fast path: a whole header (and a GOAWAY's id) in this write, read in place.
                let length = usize::from(bytes[0]) << 16
                    | usize::from(bytes[1]) << 8
                    | usize::from(bytes[2]);
                if bytes[3] == GOAWAY && length >= 8 {
                    *last_id = (*last_id).min(stream_id(&bytes[FRAME_HEADER..]));
                }
                let take = (FRAME_HEADER + length).min(bytes.len());
                self.skip = FRAME_HEADER + length - take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == FRAME_HEADER {
                self.have = 0;
                let h = &self.header;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                if h[3] == GOAWAY && self.skip >= 8 {
                    self.goaway = Some(([0; 4], 0));
                }
            }
        }
    }
}

fn stream_id(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff
}

/// An I/O stream that ignores client frames on streams above the server's last GOAWAY id.
#[derive(Debug)]
pub(crate) struct LateFrameGuard<T> {
    io: T,
    read: ReadScan,
    /// `None` until the client is known to speak HTTP/2; HTTP/1.1 output is not scanned.
    write: Option<WriteScan>,
    /// The lowest last stream id of the GOAWAYs sent so far.
    last_id: u32,
    /// Incoming bytes read but not yet handed on: the first `scanned` are ready, the rest
    /// is the start of a frame header cut by a read boundary.
    held: Vec<u8>,
    scanned: usize,
    /// Counts the late frames ignored.
    ignored: Counter,
    handshake: Arc<Handshake>,
}

impl<T> LateFrameGuard<T> {
    /// Guards `io`. `http2_only`: the server speaks nothing else on it (no sniffing).
    /// `ignored` counts the late frames it turns into ignored ones.
    pub(crate) fn new(
        io: T,
        http2_only: bool,
        handshake: Arc<Handshake>,
        ignored: Counter,
    ) -> Self {
        Self {
            io,
            read: ReadScan {
                state: Incoming::Preface(0),
            },
            write: http2_only.then(WriteScan::new),
            last_id: NO_GOAWAY,
            held: Vec::new(),
            scanned: 0,
            ignored,
            handshake,
        }
    }

    /// Scans `bytes[from..]`; returns how many of those bytes may be handed on.
    fn scan_read(&mut self, from: usize, bytes: &mut [u8]) -> usize {
        let scanned = self
            .read
            .scan(&mut bytes[from..], self.last_id, &self.handshake);
        if scanned.ignored > 0 {
            self.ignored.inc_by(scanned.ignored);
            tracing::debug!(
                frames = scanned.ignored,
                last_stream_id = self.last_id,
                "ignored WINDOW_UPDATE frames on streams above the GOAWAY's last stream id"
            );
        }
        if self.write.is_none() && matches!(self.read.state, Incoming::Frames { .. }) {
            // The whole preface arrived (the server has written nothing yet): the output
            // is HTTP/2 frames from its first byte.
            self.write = Some(WriteScan::new());
        }
        scanned.release
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LateFrameGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.scanned > 0 {
                let take = this.scanned.min(buf.remaining());
                buf.put_slice(&this.held[..take]);
                this.held.drain(..take);
                this.scanned -= take;
                return Poll::Ready(Ok(()));
            }
            if this.held.is_empty() {
                // Fast path: read straight into the caller's buffer and scan it there.
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let read = buf.filled().len() - before;
                if read == 0 {
                    return Poll::Ready(Ok(()));
                }
                let release = this.scan_read(before, buf.filled_mut());
                if release < read {
                    this.held
                        .extend_from_slice(&buf.filled()[before + release..]);
                    buf.set_filled(before + release);
                }
                if release > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // A frame header straddles reads: complete it in our own buffer first.
            let mut scratch = [0u8; 1024];
            let mut more = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut more))?;
            if more.filled().is_empty() {
                // End of stream inside a header: hand on what there is, untouched.
                this.read.state = Incoming::Passthrough;
                this.scanned = this.held.len();
                continue;
            }
            this.held.extend_from_slice(more.filled());
            let mut held = std::mem::take(&mut this.held);
            this.scanned = this.scan_read(0, &mut held);
            this.held = held;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LateFrameGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if let Some(scan) = &mut this.write {
            scan.scan(&buf[..written], &mut this.last_id);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        if let Some(scan) = &mut this.write {
            let mut left = written;
            for slice in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(slice.len());
                scan.scan(&slice[..take], &mut this.last_id);
                left -= take;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const DATA: u8 = 0x0;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn window_update(stream: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &1000u32.to_be_bytes())
    }

    fn goaway(last: u32) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        frame(GOAWAY, 0, 0, &payload)
    }

    /// Reads `input` in chunks of the given sizes (cycled); collects what is written.
    struct Pipe {
        input: Vec<u8>,
        pos: usize,
        chunks: Vec<usize>,
        next: usize,
        output: Vec<u8>,
        /// Most bytes one write takes.
        write_chunk: usize,
    }

    impl Pipe {
        fn new(input: Vec<u8>, chunks: Vec<usize>) -> Self {
            Self {
                input,
                pos: 0,
                chunks,
                next: 0,
                output: Vec::new(),
                write_chunk: 5,
            }
        }
    }

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let chunk = self.chunks[self.next % self.chunks.len()];
            self.next += 1;
            let take = chunk.min(buf.remaining()).min(self.input.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.input[pos..pos + take]);
            self.pos += take;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Few bytes a write (5 by default), so headers and GOAWAY ids straddle writes.
            let take = buf.len().min(self.write_chunk);
            self.output.extend_from_slice(&buf[..take]);
            Poll::Ready(Ok(take))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn client_bytes(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        for frame in frames {
            bytes.extend_from_slice(frame);
        }
        bytes
    }

    /// Reads everything through a guard that has already written `server` out.
    async fn through_guard(
        client: Vec<u8>,
        server: &[u8],
        chunks: Vec<usize>,
        read_size: usize,
    ) -> (Vec<u8>, u64, Protocol) {
        through_guard_writing(client, server, chunks, read_size, 5).await
    }

    /// [`through_guard`] with the server's bytes written at most `write_chunk` at a time.
    async fn through_guard_writing(
        client: Vec<u8>,
        server: &[u8],
        chunks: Vec<usize>,
        read_size: usize,
        write_chunk: usize,
    ) -> (Vec<u8>, u64, Protocol) {
        let handshake = Arc::new(Handshake::default());
        let ignored = Counter::default();
        let mut pipe = Pipe::new(client, chunks);
        pipe.write_chunk = write_chunk;
        let mut guard = LateFrameGuard::new(pipe, true, handshake.clone(), ignored.clone());
        guard.write_all(server).await.unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = guard.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, ignored.get(), handshake.protocol())
    }

    #[tokio::test]
    async fn window_updates_above_the_goaway_id_are_ignored_others_pass() {
        let frames = [
            frame(SETTINGS, 0, 0, &[]),
            frame(HEADERS, 0x4, 5, b"hpack"),
            window_update(5),
            frame(HEADERS, 0x4, 7, b"hpack"),
            window_update(7),
            window_update(0),
        ];
        let input = client_bytes(&frames);
        let server = [frame(SETTINGS, 0, 0, &[]), goaway(5)].concat();
        for chunks in [vec![4096], vec![1], vec![3, 7], vec![9], vec![10, 1, 2]] {
            for read_size in [3, 16, 4096] {
                let (out, ignored, protocol) =
                    through_guard(input.clone(), &server, chunks.clone(), read_size).await;
                assert_eq!(ignored, 1, "chunks {chunks:?} read {read_size}");
                assert_eq!(protocol, Protocol::Http2);
                let mut expected = input.clone();
                // The WINDOW_UPDATE on stream 7 is the fifth frame.
                let at = PREFACE.len() + frames[..4].iter().map(Vec::len).sum::<usize>();
                expected[at + 3] = IGNORED_TYPE;
                expected[at + 4] = 0;
                assert_eq!(out, expected, "chunks {chunks:?} read {read_size}");
            }
        }
    }

    #[tokio::test]
    async fn nothing_changes_before_a_goaway_or_after_the_first_of_two() {
        let input = client_bytes(&[frame(SETTINGS, 0, 0, &[]), window_update(99)]);
        let (out, ignored, _) = through_guard(input.clone(), &[], vec![5], 64).await;
        assert_eq!((out.as_slice(), ignored), (input.as_slice(), 0));
        // The graceful first GOAWAY carries 2^31-1: every stream is still processed.
        let server = goaway(0x7fff_ffff);
        let (out, ignored, _) = through_guard(input.clone(), &server, vec![5], 64).await;
        assert_eq!((out.as_slice(), ignored), (input.as_slice(), 0));
    }

    #[tokio::test]
    async fn http1_passes_untouched_and_is_recognized() {
        let input = b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        let handshake = Arc::new(Handshake::default());
        let mut guard = LateFrameGuard::new(
            Pipe::new(input.clone(), vec![2]),
            false,
            handshake.clone(),
            Counter::default(),
        );
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
        assert_eq!(handshake.protocol(), Protocol::Http1);
        // HTTP/1.1 output is never scanned as frames.
        guard.write_all(&goaway(1)).await.unwrap();
        assert_eq!(guard.last_id, NO_GOAWAY);
    }

    #[tokio::test]
    async fn a_preface_alone_is_not_a_handshake() {
        let (_, _, protocol) = through_guard(PREFACE.to_vec(), &[], vec![7], 64).await;
        assert_eq!(protocol, Protocol::Undecided);
    }

    /// Random frame streams, random read and write boundaries: the output is the input
    /// with exactly the late WINDOW_UPDATEs retyped.
    #[tokio::test]
    async fn random_streams_and_boundaries() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b65656c);
        for _ in 0..300 {
            let last = rng.random_range(1..40u32) | 1;
            let mut frames = vec![frame(SETTINGS, 0, 0, &[])];
            let mut late = Vec::new();
            for _ in 0..rng.random_range(0..30) {
                let stream = rng.random_range(0..60u32);
                let kind = [DATA, HEADERS, WINDOW_UPDATE, 0x3, 0x6][rng.random_range(0..5)];
                let payload: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                let bytes = if kind == WINDOW_UPDATE {
                    window_update(stream)
                } else {
                    frame(kind, rng.random(), stream, &payload)
                };
                if kind == WINDOW_UPDATE && stream > last {
                    let at = PREFACE.len() + frames.iter().map(Vec::len).sum::<usize>();
                    late.push(at);
                }
                frames.push(bytes);
            }
            let input = client_bytes(&frames);
            let chunks: Vec<usize> = (0..5).map(|_| rng.random_range(1..20)).collect();
            let read_size = rng.random_range(1..64);
            // The server writes frames before its GOAWAY, in writes of any size.
            let mut server = frame(SETTINGS, 0, 0, &[]);
            for _ in 0..rng.random_range(0..4) {
                let payload: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                server.extend(frame(DATA, 0, 1, &payload));
            }
            server.extend(goaway(last));
            let write_chunk = rng.random_range(1..80);
            let (out, ignored, _) =
                through_guard_writing(input.clone(), &server, chunks, read_size, write_chunk).await;
            let mut expected = input;
            for at in &late {
                expected[at + 3] = IGNORED_TYPE;
                expected[at + 4] = 0;
            }
            assert_eq!(ignored, late.len() as u64);
            assert_eq!(out, expected);
        }
    }
}
