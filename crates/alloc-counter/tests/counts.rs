//! The counting allocator counts what this test binary allocates, and the report line carries
//! the numbers the bench script parses.

use alloc_counter::{COUNTING, Counting, Totals};

#[global_allocator]
static ALLOCATOR: Counting = COUNTING;

#[test]
fn allocations_reallocations_and_bytes_are_counted() {
    let before = Totals::now();
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    buffer.extend_from_slice(&[7; 4096]);
    buffer.push(8); // grows: one reallocation of at least 4 KiB more
    let boxed = Box::new([1u64; 64]);
    let after = Totals::now();
    assert!(std::hint::black_box(&boxed)[63] == 1 && buffer.len() == 4097);

    // Other test threads may allocate too, so these are lower bounds.
    assert!(
        after.allocations >= before.allocations + 2,
        "{before} -> {after}"
    );
    assert!(
        after.reallocations > before.reallocations,
        "{before} -> {after}"
    );
    assert!(
        after.bytes >= before.bytes + 4096 + 4096 + 512,
        "{before} -> {after}"
    );
}

#[test]
fn the_report_line_names_each_total() {
    let totals = Totals {
        allocations: 12,
        reallocations: 3,
        bytes: 4567,
    };
    assert_eq!(
        totals.to_string(),
        "alloc-count allocations=12 reallocations=3 bytes=4567"
    );
}
