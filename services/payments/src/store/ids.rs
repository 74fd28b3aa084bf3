//! Identifiers the store generates: a type prefix, then 128 bits that start with the time, so
//! ids made later sort later, and end with 80 random bits, so they are unguessable and never
//! collide in practice, across processes too.
//!
//! Why time first: a payment's id keys the `payments` table and the ledger's by-transfer
//! index. Random ids land on a random page of each B-tree, so a batch of 64 payments dirtied
//! about 64 pages per index, each written whole to SQLite's WAL at commit and later
//! checkpointed; ids in time order append to the right edge, a few pages per batch. Measured
//! with `scripts/bench-payments.sh` at 64 in flight: SQLite 4,169 → 5,395 payments/s,
//! PostgreSQL 6,733 → 7,284 (docs/BENCHMARKS.md).

use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of randomness after the time.
const RANDOM_BITS: u32 = 80;

/// `"<prefix>_<32 hex digits>"`, e.g. `pay_019a…`: 48 bits of milliseconds since the Unix
/// epoch, then 80 random bits.
pub(crate) fn new_id(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let random: u128 = rand::random::<u128>() >> (128 - RANDOM_BITS);
    let bits = ((millis & ((1 << 48) - 1)) << RANDOM_BITS) | random;
    format!("{prefix}_{bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_prefix_and_differ() {
        let a = new_id("pay");
        let b = new_id("pay");
        assert!(a.starts_with("pay_") && a.len() == 4 + 32, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn ids_made_in_a_later_millisecond_sort_later() {
        let first = new_id("pay");
        let start = SystemTime::now();
        // Spin (not sleep) until the clock has moved to another millisecond.
        while start.elapsed().unwrap_or_default().as_millis() < 2 {}
        let later = new_id("pay");
        assert!(first < later, "{first} then {later}");
    }

    #[test]
    fn ids_start_with_the_time_and_keep_80_random_bits() {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let ids: Vec<u128> = (0..64)
            .map(|_| u128::from_str_radix(&new_id("pay")[4..], 16).unwrap())
            .collect();
        for id in &ids {
            let stamped = id >> RANDOM_BITS;
            assert!(stamped.abs_diff(millis) < 60_000, "{stamped} vs {millis}");
        }
        // Each of the 80 low bits is set in some id and clear in another: random, not fixed.
        let low = (1u128 << RANDOM_BITS) - 1;
        let ors = ids.iter().fold(0, |acc, id| acc | (id & low));
        let ands = ids.iter().fold(low, |acc, id| acc & id);
        assert_eq!((ors, ands), (low, 0));
    }
}
