//! Cheap per-thread pseudo-random numbers, for what must not repeat or must spread evenly
//! but need not resist prediction: span ids, load balancers' choices, backoff jitter.
//!
//! A SplitMix64 sequence per thread, seeded from the OS, costs a few instructions where a
//! cryptographic generator costs hundreds on every call.

use std::cell::Cell;

/// The next number of this thread's sequence.
pub fn next_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A non-zero number (span and trace ids must not be zero).
pub fn nonzero_u64() -> u64 {
    loop {
        let n = next_u64();
        if n != 0 {
            return n;
        }
    }
}

/// A number in `0..n` (`n` > 0), by multiply-shift: no division, and a bias of at most
/// n / 2^64.
pub fn below(n: usize) -> usize {
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

/// A number in `[0, 1)`.
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_do_not_repeat() {
        let ids: HashSet<u64> = (0..100_000).map(|_| nonzero_u64()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn below_stays_in_range_and_spreads_evenly() {
        let mut counts = [0_u32; 3];
        for _ in 0..30_000 {
            counts[below(3)] += 1;
        }
        for count in counts {
            assert!((9_500..10_500).contains(&count), "{counts:?}");
        }
        let x = unit();
        assert!((0.0..1.0).contains(&x));
    }
}
