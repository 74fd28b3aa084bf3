//! The gRPC length-prefixed framing (1 flag byte, 4-byte big-endian length), followed across
//! arbitrary chunk boundaries by looking only at prefixes: what the message-limit and
//! observability layers need to know of a body without buffering it.

/// A message whose length prefix exceeds the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    /// The announced length.
    pub len: usize,
    /// Offset in the scanned chunk where the message's prefix starts (0 if it began earlier).
    pub at: usize,
}

/// Follows the gRPC length-prefixed framing (1 flag byte, 4-byte big-endian length) across
/// arbitrary chunk boundaries, looking only at prefixes.
#[derive(Debug)]
pub struct Framing {
    /// The largest message length accepted.
    pub limit: usize,
    header: [u8; 5],
    have: usize,
    remaining: usize,
    messages: u64,
}

impl Framing {
    /// Follows a stream whose messages may be at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
            messages: 0,
        }
    }

    /// Follows a stream only to count its messages.
    pub fn counting() -> Self {
        Self::new(usize::MAX)
    }

    /// Messages whose prefix was seen so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether the stream so far ends exactly after a whole message (or is empty): a body
    /// that ends anywhere else was cut inside a message.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Scans the next chunk; stops at the first prefix announcing more than the limit.
    pub fn scan(&mut self, mut chunk: &[u8]) -> Result<(), Oversize> {
        let total = chunk.len();
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len());
                self.remaining -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            let offset = total - chunk.len();
            let take = (5 - self.have).min(chunk.len());
            self.header[self.have..self.have + take].copy_from_slice(&chunk[..take]);
            let started_here = self.have == 0;
            self.have += take;
            chunk = &chunk[take..];
            if self.have == 5 {
                self.have = 0;
                self.messages += 1;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    let at = if started_here { offset } else { 0 };
                    return Err(Oversize { len, at });
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len));
        out
    }

    /// Scans `stream` cut into chunks of `cut` bytes, returning the first oversize found.
    fn check(limit: usize, stream: &[u8], cut: usize) -> Option<(usize, Oversize)> {
        let mut framing = Framing::new(limit);
        for (i, chunk) in stream.chunks(cut).enumerate() {
            if let Err(o) = framing.scan(chunk) {
                return Some((i, o));
            }
        }
        None
    }

    #[test]
    fn accepts_messages_at_the_limit_however_chunked() {
        let stream = [message(0), message(10), message(3), message(10)].concat();
        for cut in 1..=stream.len() {
            assert_eq!(check(10, &stream, cut), None, "cut {cut}");
        }
    }

    #[test]
    fn knows_whether_a_stream_ends_between_messages() {
        let stream = [message(3), message(0), message(300)].concat();
        for cut in 1..=stream.len() {
            let mut framing = Framing::counting();
            for chunk in stream.chunks(cut) {
                framing.scan(chunk).unwrap();
            }
            assert!(framing.at_boundary(), "cut {cut}");
            assert_eq!(framing.messages(), 3);
        }
        for end in [1, 4, 5, 7, 9, stream.len() - 1] {
            let mut framing = Framing::counting();
            framing.scan(&stream[..end]).unwrap();
            assert!(!framing.at_boundary(), "ends at {end}");
        }
        assert!(Framing::counting().at_boundary());
    }

    #[test]
    fn finds_oversize_however_chunked() {
        let stream = [message(4), message(11), message(2)].concat();
        for cut in 1..=stream.len() {
            let (chunk, o) = check(10, &stream, cut).expect("found");
            assert_eq!(o.len, 11, "cut {cut}");
            // The oversized prefix starts at byte 9 of the stream.
            let start = 9;
            if start / cut == (start + 4) / cut {
                assert_eq!((chunk, o.at), (start / cut, start % cut), "cut {cut}");
            }
        }
    }

    #[test]
    fn random_streams_agree_with_a_reference() {
        // Property: the scanner reports an oversize exactly when some message exceeds the
        // limit, wherever the stream is cut.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let limit = rng.random_range(0..40);
            let lens: Vec<usize> = (0..rng.random_range(1..6))
                .map(|_| rng.random_range(0..50))
                .collect();
            let stream: Vec<u8> = lens.iter().flat_map(|&l| message(l)).collect();
            let cut = rng.random_range(1..stream.len() + 1);
            let expected = lens.iter().find(|&&l| l > limit).copied();
            assert_eq!(
                check(limit, &stream, cut).map(|(_, o)| o.len),
                expected,
                "{lens:?} limit {limit} cut {cut}"
            );
        }
    }

    #[test]
    fn counts_messages_however_chunked() {
        let stream = [message(0), message(300), message(3), message(17)].concat();
        for cut in 1..=stream.len() {
            let mut framing = Framing::counting();
            for chunk in stream.chunks(cut) {
                framing.scan(chunk).unwrap();
            }
            assert_eq!(framing.messages(), 4, "cut {cut}");
        }
    }
}
