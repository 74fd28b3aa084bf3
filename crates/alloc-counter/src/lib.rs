//! Allocation counting for the benchmarks. A server built with its `count-allocs` feature
//! makes [`COUNTING`] its global allocator and calls [`report_on_sigusr1`]; then every
//! `SIGUSR1` prints one [`Totals`] line on stderr, and `scripts/bench-greeter.sh` divides the
//! difference between two lines by the calls made in between.
//!
//! The counting is stats_alloc's (its `GlobalAlloc` wrapper needs `unsafe`, which this
//! workspace forbids in its own code). It wraps the system allocator, also in `keel`, which
//! otherwise runs on jemalloc: how many allocations a program asks for, and how many bytes,
//! does not depend on the allocator that serves them.

use std::alloc::System;
use std::fmt;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// The global allocator of a counting build:
/// `#[global_allocator] static ALLOCATOR: Counting = alloc_counter::COUNTING;`.
pub type Counting = &'static StatsAlloc<System>;

/// The system allocator with counters, for `#[global_allocator]`.
pub const COUNTING: Counting = &INSTRUMENTED_SYSTEM;

/// What the process has asked of its allocator since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Allocations (`alloc` and `alloc_zeroed`).
    pub allocations: u64,
    /// Reallocations (`realloc`), counted apart: a growing `Vec` or buffer.
    pub reallocations: u64,
    /// Bytes requested by allocations, plus what reallocations grew by.
    pub bytes: u64,
}

impl Totals {
    /// The totals counted so far by [`COUNTING`] (all zero unless it is the global allocator).
    pub fn now() -> Self {
        let stats = INSTRUMENTED_SYSTEM.stats();
        Self {
            allocations: stats.allocations as u64,
            reallocations: stats.reallocations as u64,
            bytes: stats.bytes_allocated as u64,
        }
    }
}

/// The line printed on `SIGUSR1`: `alloc-count allocations=N reallocations=N bytes=N`.
impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "alloc-count allocations={} reallocations={} bytes={}",
            self.allocations, self.reallocations, self.bytes
        )
    }
}

/// Prints [`Totals::now`] on stderr at every `SIGUSR1`, from a task on the current Tokio
/// runtime. Fails outside a runtime's context only by panicking, as `tokio::spawn` does, and
/// returns the error of installing the signal handler.
pub fn report_on_sigusr1() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            eprintln!("{}", Totals::now());
        }
    });
    Ok(())
}
