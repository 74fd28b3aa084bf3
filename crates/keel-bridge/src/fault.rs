//! Crash points for testing: with `KEEL_BRIDGE_FAULT=POINT:N` in its environment, the process
//! aborts (no unwinding, no flushing: as `kill -9` would stop it) the `N`th time it reaches
//! `POINT`. The points are the moments a crash is most dangerous:
//! - `after_receipt`: an MQTT message arrived, nothing is in the log yet;
//! - `after_log_ack`: the log has the request, the broker has no PUBACK;
//! - `after_grpc_ok`: the target answered OK, the record is not done.
//!
//! Without the variable, [`reached`] costs one atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A place where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// An MQTT message arrived; nothing is in the log yet.
    AfterReceipt,
    /// The log acknowledged an append; no PUBACK was sent.
    AfterLogAck,
    /// The target answered OK; the record is not marked done.
    AfterGrpcOk,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Self::AfterReceipt => "after_receipt",
            Self::AfterLogAck => "after_log_ack",
            Self::AfterGrpcOk => "after_grpc_ok",
        }
    }
}

struct Armed {
    point: &'static str,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let text = std::env::var("KEEL_BRIDGE_FAULT").ok()?;
            let (point, at) = text.split_once(':').unwrap_or((&text, "1"));
            let point = [Point::AfterReceipt, Point::AfterLogAck, Point::AfterGrpcOk]
                .into_iter()
                .map(Point::name)
                .find(|name| *name == point)?;
            let at = at.parse().ok()?;
            tracing::warn!(
                point,
                at,
                "bridge: fault injection armed (KEEL_BRIDGE_FAULT)"
            );
            Some(Armed {
                point,
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if the armed fault is `point` and this is its `N`th arrival.
pub fn reached(point: Point) {
    if let Some(armed) = armed()
        && armed.point == point.name()
        && armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.at
    {
        eprintln!(
            "keel bridge: KEEL_BRIDGE_FAULT {}:{} reached; aborting",
            armed.point, armed.at
        );
        std::process::abort();
    }
}
