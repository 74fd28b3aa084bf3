//! The durable log between the bridge's two stages, as two traits every backend implements:
//! [`LogWriter`] (ingest appends, and either stage dead-letters) and [`LogReader`] (deliver
//! reads, and marks records done).
//!
//! The contract that makes "exactly one effect" hold across crashes:
//! - [`LogWriter::append`] returns only once the record is durable (Kafka `acks=all`, a
//!   JetStream publish acknowledgement, a SQLite commit). Only then may ingest PUBACK.
//! - Appending a key the log already holds, within its deduplication window, stores nothing
//!   and answers [`Appended::Duplicate`]. Where a log cannot deduplicate (Kafka across
//!   producer sessions) the duplicate reaches deliver, and the target's idempotency key
//!   makes the second call a replay.
//! - [`LogReader::next`] hands out records of one device in append order. A record handed
//!   out and not yet [done](LogReader::done) is handed out again after a restart (and never
//!   to this reader again while it holds it); one that is done is not.
//!
//! Backends: [`embedded`] (one SQLite file, for a bridge on one machine), [`jetstream`]
//! (NATS JetStream: a work-queue stream and one durable pull consumer) and [`kafka`] (a topic
//! keyed by device and one consumer group).

pub mod embedded;
mod headers;
pub mod jetstream;
pub mod kafka;

use std::future::Future;
use std::time::Duration;

use crate::record::Record;

/// What went wrong talking to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The log could not be reached or did not answer in time. Nothing is known to have
    /// happened; the caller waits and tries again, and meanwhile acknowledges nothing.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    /// The log refused the operation and will refuse it again (a record over its size
    /// limit, a stream that does not exist and cannot be made).
    #[error("the log refused the operation: {0}")]
    Refused(String),
}

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The record is stored.
    Stored,
    /// A record with the same key was already stored; this one was not.
    Duplicate,
}

/// A request that will not be delivered, and why: kept in the log's dead-letter topic,
/// subject or table for a person to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The request. A payload that did not parse is kept as received; `key` and `device`
    /// are whatever could be read (possibly empty).
    pub record: Record,
    /// Why, as a stable code: `UNPARSEABLE_PAYLOAD`, `MISSING_KEY`, `NO_ROUTE`,
    /// `TERMINAL_STATUS`, ...
    pub reason: String,
    /// What a person needs to know, e.g. the parse error or the gRPC status as JSON.
    pub detail: String,
}

/// The producing side of a log.
pub trait LogWriter: Send + Sync + 'static {
    /// Stores `record`, returning once the log has it durably.
    fn append(&self, record: Record) -> impl Future<Output = Result<Appended, LogError>> + Send;

    /// Stores a request that will not be delivered, returning once the log has it durably.
    fn dead_letter(&self, letter: DeadLetter) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Whether the log answers now (for readiness).
    fn check(&self) -> impl Future<Output = Result<(), LogError>> + Send;
}

/// One record handed to the deliver stage, with what the reader needs to mark it done.
#[derive(Debug)]
pub struct Delivery<T> {
    /// The record.
    pub record: Record,
    /// Handed back to [`LogReader::done`].
    pub token: T,
}

/// The consuming side of a log: one durable consumer (a Kafka consumer group, a JetStream
/// durable consumer, a named cursor in the embedded log).
pub trait LogReader: Send + 'static {
    /// Identifies a handed-out record to [`LogReader::done`].
    type Token: Clone + Send + 'static;

    /// The next records, at most `max`, waiting up to `wait` for the first one (empty when
    /// none came). The deliver stage calls it between handling finished work, so a wait must
    /// end on time; a call that is dropped before it finishes may lose the records it was
    /// about to hand out until the next restart, so callers always let it finish.
    fn next(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery<Self::Token>>, LogError>> + Send;

    /// Marks a handed-out record done: after a restart it is not handed out again. Records
    /// may be done in any order; a log that keeps one offset keeps it below the oldest
    /// record not yet done.
    fn done(&mut self, token: Self::Token) -> impl Future<Output = Result<(), LogError>> + Send;

    /// How many records are in the log and not yet handed out, if the log can tell.
    fn lag(&mut self) -> impl Future<Output = Result<Option<u64>, LogError>> + Send;
}
