//! Group commit: payments waiting for the database are processed many to a transaction.
//!
//! A payment in its own transaction costs ten round trips and a commit; under load the server
//! and the database spend their CPU on those round trips, not on the payments. [`GroupCommit`]
//! queues payments instead, and each of its committer tasks takes what has queued (up to the
//! batch size) and runs it as one transaction with set-based statements
//! ([`process_batch`](super::ledger::process_batch)): about seven round trips and one commit
//! for the whole batch. Nothing waits for a batch to fill: a committer takes what is there, so
//! an idle store processes a lone payment at once, and a busy one batches what arrived while
//! the previous batch committed.
//!
//! Every payment keeps the meaning it has alone: the same checks in queue order, its own
//! outcome (a refused payment does not fail its batch), its key recorded in the transaction
//! that moves its money. A failure of the transaction fails every payment of the batch with
//! that error, and none of them took effect; an internal error (a bug or broken data in one
//! payment) is isolated by running that batch's payments again one per transaction.
//!
//! Bounded in time: a batch is one transaction under the store's deadlines (a batch stuck in
//! COMMIT fails every payment in it with [`StoreError::Unavailable`] at the commit timeout),
//! and a caller waits for its outcome no longer than a write may take in all, queueing
//! included; a payment still queued then is dropped from the queue, one in a committing batch
//! has an unknown outcome that its idempotency key settles.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::api::Store;
use super::deadline::TimedOut;
use super::error::StoreError;
use super::layer::PaymentLayer;
use super::ledger::BatchOutcomes;
use super::model::{Idempotent, Payment, PaymentRequest};

/// A store that can process a batch of payments in one transaction.
pub(crate) trait BatchStore: Store {
    /// Processes `requests` (distinct idempotency keys per caller) in one transaction; see
    /// [`process_batch`](super::ledger::process_batch).
    fn process_batch<'a>(
        &'a self,
        requests: &'a [&'a PaymentRequest],
    ) -> BoxFuture<'a, Result<BatchOutcomes, StoreError>>;
}

/// A payment waiting in the queue, and where its outcome goes.
struct Job {
    request: PaymentRequest,
    reply: oneshot::Sender<Result<Idempotent<Payment>, StoreError>>,
}

/// Processes payments through a queue and committer tasks; every other operation goes to the
/// wrapped store directly.
pub(crate) struct GroupCommit {
    store: Arc<dyn BatchStore>,
    queue: mpsc::Sender<Job>,
    outcome_timeout: Duration,
}

impl GroupCommit {
    /// Starts `committers` tasks (at least 1) on the current Tokio runtime, each committing up
    /// to `batch_size` payments per transaction; a caller gets its payment's outcome within
    /// `outcome_timeout` (the store's write timeout) or fails with [`StoreError::Unavailable`].
    /// The tasks stop when this value is dropped.
    pub(crate) fn start(
        store: Arc<dyn BatchStore>,
        batch_size: usize,
        committers: usize,
        outcome_timeout: Duration,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let committers = committers.max(1);
        let (queue, jobs) = mpsc::channel(batch_size * committers);
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..committers {
            tokio::spawn(commit_loop(store.clone(), jobs.clone(), batch_size));
        }
        Self {
            store,
            queue,
            outcome_timeout,
        }
    }
}

impl PaymentLayer for GroupCommit {
    fn inner(&self) -> &dyn Store {
        &*self.store
    }

    fn process_payment<'a>(
        &'a self,
        request: &'a PaymentRequest,
    ) -> BoxFuture<'a, Result<Idempotent<Payment>, StoreError>> {
        Box::pin(async move {
            let (reply, outcome) = oneshot::channel();
            let job = Job {
                request: request.clone(),
                reply,
            };
            let queued = async {
                if self.queue.send(job).await.is_err() {
                    return Err(StoreError::internal("the payment committers have stopped"));
                }
                outcome.await.unwrap_or_else(|_| {
                    Err(StoreError::internal(
                        "a payment committer stopped before answering",
                    ))
                })
            };
            // Giving up drops the reply channel: a committer skips the payment if it has not
            // started it yet.
            tokio::time::timeout(self.outcome_timeout, queued)
                .await
                .unwrap_or_else(|_| Err(TimedOut::Outcome(self.outcome_timeout).into()))
        })
    }
}

/// One committer: takes a batch from the queue, commits it, answers its callers, again until
/// the queue is closed and drained.
async fn commit_loop(
    store: Arc<dyn BatchStore>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    batch_size: usize,
) {
    // Payments held back because their caller's key was already in the batch: they go in
    // the next one, and see the first one's outcome as the database recorded it.
    let mut held_back: VecDeque<Job> = VecDeque::new();
    loop {
        let mut batch: Vec<Job> = Vec::with_capacity(batch_size);
        batch.extend(held_back.drain(..held_back.len().min(batch_size)));
        if batch.is_empty() {
            let mut jobs = jobs.lock().await;
            match jobs.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            fill(&mut batch, &mut jobs, batch_size);
        } else if let Ok(mut jobs) = jobs.try_lock() {
            // Never wait for the queue with payments in hand: another committer may be
            // holding it while it waits for the next payment to arrive.
            fill(&mut batch, &mut jobs, batch_size);
        }
        // A caller that gave up before its payment started does not want it any more.
        batch.retain(|job| !job.reply.is_closed());
        let mut keys = HashSet::with_capacity(batch.len());
        let (batch, repeated): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| {
            keys.insert((
                job.request.caller.clone(),
                job.request.idempotency_key.clone(),
            ))
        });
        held_back.extend(repeated);
        if !batch.is_empty() {
            commit(&*store, batch).await;
        }
    }
}

/// Adds what is queued to `batch`, up to `batch_size` payments, without waiting.
fn fill(batch: &mut Vec<Job>, jobs: &mut mpsc::Receiver<Job>, batch_size: usize) {
    while batch.len() < batch_size {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Commits one batch and answers every payment in it.
async fn commit(store: &dyn BatchStore, batch: Vec<Job>) {
    let requests: Vec<&PaymentRequest> = batch.iter().map(|job| &job.request).collect();
    match store.process_batch(&requests).await {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that left meanwhile learns the outcome by retrying with its key.
                let _ = job.reply.send(outcome);
            }
        }
        Err(StoreError::Internal(error)) if batch.len() > 1 => {
            tracing::warn!(
                %error,
                payments = batch.len(),
                "a batch of payments failed with an internal error; \
                 processing them one per transaction"
            );
            for job in batch {
                let outcome = store.process(&job.request).await;
                let _ = job.reply.send(outcome);
            }
        }
        Err(error) => {
            let errors = error.fan_out(batch.len());
            for (job, error) in batch.into_iter().zip(errors) {
                let _ = job.reply.send(Err(error));
            }
        }
    }
}
