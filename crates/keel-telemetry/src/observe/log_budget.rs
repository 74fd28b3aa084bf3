//! A bound on the "finished call" records one outcome writes: at most
//! [`RECORDS_PER_SECOND`] a second at their level; the rest go to debug, and when the second
//! is over one "suppressed K similar records" line at the same level says how many.
//!
//! A peer can end calls in most outcomes as fast as it can send them (stream resets, unknown
//! paths, bad arguments, malformed headers, deadlines of zero), so logs that write one line
//! per such call are an amplifier: 10 s of rapid resets once wrote 76 MB. Metrics still count
//! every call; the log keeps a few examples of each outcome and the count of the rest.
//!
//! An outcome is a side (server or client), a code and a level (an UNIMPLEMENTED for an
//! unknown path, logged at info, does not use up the budget of an unimplemented method,
//! logged at warn). Budgets are per process, like the log they protect. The summary comes
//! from a task that wakes when the window ends; outside a Tokio runtime it comes with the
//! outcome's next record instead.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use tonic::Code;
use tracing::Level;

use super::call::LOG_TARGET;
use super::rpc_metrics::Side;
use keel_core::code::{Severity, code_name};

/// Records of one outcome written a second; the rest go to debug.
pub(crate) const RECORDS_PER_SECOND: u32 = 5;

const WINDOW: Duration = Duration::from_secs(1);

/// What a finished call's record is budgeted by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) side: Side,
    pub(crate) code: Code,
    pub(crate) level: Severity,
}

/// True if a record of `outcome` may be written at its level now; false if it is over the
/// budget (and then counted for the summary). Debug records and levels the log filter turns
/// off are always admitted: they cost nothing to suppress.
pub(crate) fn admit(outcome: Outcome) -> bool {
    if outcome.level == Severity::Debug || !enabled(outcome.level) {
        return true;
    }
    let now = Instant::now();
    let mut window = outcome.window();
    let mut overdue = 0;
    let start = match window.start {
        Some(start) if now.duration_since(start) < WINDOW => start,
        _ => {
            // A new window; what the last one suppressed is reported now if no task did.
            overdue = std::mem::take(&mut window.suppressed);
            window.start = Some(now);
            window.written = 0;
            now
        }
    };
    let admitted = window.written < RECORDS_PER_SECOND;
    if admitted {
        window.written += 1;
    } else {
        window.suppressed += 1;
        if !window.summary_due {
            window.summary_due = summarize_at(start + WINDOW, outcome);
        }
    }
    drop(window);
    if overdue > 0 {
        summarize(outcome, overdue);
    }
    admitted
}

/// One outcome's current window.
struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
    /// A task will report `suppressed` when the window ends.
    summary_due: bool,
}

const SIDES: usize = 2;
const CODES: usize = 17;
const LEVELS: usize = 4;

static WINDOWS: [Mutex<Window>; SIDES * CODES * LEVELS] = [const {
    Mutex::new(Window {
        start: None,
        written: 0,
        suppressed: 0,
        summary_due: false,
    })
}; SIDES * CODES * LEVELS];

impl Outcome {
    fn window(self) -> MutexGuard<'static, Window> {
        let side = match self.side {
            Side::Server => 0,
            Side::Client => 1,
        };
        WINDOWS[(side * CODES + self.code as usize) * LEVELS + self.level as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reports what `outcome` suppressed once its window has ended (`end`, or later if a record
/// started a new window meanwhile and the new one suppressed too), from a task; false when
/// there is no runtime to run one (the next record of the outcome reports it then).
fn summarize_at(mut end: Instant, outcome: Outcome) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep_until(end).await;
            let mut window = outcome.window();
            if let Some(start) = window.start
                && start + WINDOW > Instant::now()
                && window.suppressed > 0
            {
                // A newer window is still open (what the ended one suppressed was reported
                // when it began): summarize that one when it ends.
                end = start + WINDOW;
                continue;
            }
            window.summary_due = false;
            let suppressed = std::mem::take(&mut window.suppressed);
            drop(window);
            if suppressed > 0 {
                summarize(outcome, suppressed);
            }
            return;
        }
    });
    true
}

/// The summary line: `suppressed` records of `outcome` went to debug.
fn summarize(outcome: Outcome, suppressed: u64) {
    macro_rules! summary {
        ($level:ident) => {
            tracing::$level!(
                target: LOG_TARGET,
                side = match outcome.side { Side::Server => "server", Side::Client => "client" },
                grpc_code = code_name(outcome.code),
                suppressed,
                "suppressed {suppressed} similar records (over {RECORDS_PER_SECOND} a second; at debug)"
            )
        };
    }
    match outcome.level {
        Severity::Debug => {}
        Severity::Info => summary!(info),
        Severity::Warn => summary!(warn),
        Severity::Error => summary!(error),
    }
}

/// Whether the log writes `keel::rpc` records at `level`.
fn enabled(level: Severity) -> bool {
    match level {
        Severity::Debug => tracing::enabled!(target: LOG_TARGET, Level::DEBUG),
        Severity::Info => tracing::enabled!(target: LOG_TARGET, Level::INFO),
        Severity::Warn => tracing::enabled!(target: LOG_TARGET, Level::WARN),
        Severity::Error => tracing::enabled!(target: LOG_TARGET, Level::ERROR),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_records_a_second_then_one_summary_with_the_count() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        // An outcome no other test produces: budgets are per process.
        let outcome = Outcome {
            side: Side::Client,
            code: Code::DataLoss,
            level: Severity::Warn,
        };
        let admitted = (0..20).filter(|_| admit(outcome)).count();
        assert_eq!(admitted, RECORDS_PER_SECOND as usize);
        assert_eq!(
            captured.text(),
            "",
            "nothing is logged while the second lasts"
        );

        // sleep: virtual time: the log window ends
        tokio::time::sleep(WINDOW).await;
        // The summary task runs when the window ends.
        tokio::task::yield_now().await;
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("suppressed 15 similar records")
                && text.contains("grpc_code=\"DataLoss\""),
            "{text}"
        );

        // A new second, a new budget.
        assert!(admit(outcome));
        // Debug records and levels the filter turns off are never budgeted.
        let debug = Outcome {
            level: Severity::Debug,
            ..outcome
        };
        assert!((0..100).all(|_| admit(debug)));
    }
}
