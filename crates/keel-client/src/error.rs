//! [`ConnectError`]: why a channel has no backend that can take calls, as
//! [`super::Channel::connect`] reports it and fail-fast calls carry it in their UNAVAILABLE
//! status.

use std::time::Duration;

/// Why no backend of a channel can take calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The resolver found no addresses; its error.
    #[error("no addresses: {0}")]
    Resolution(String),
    /// Every backend failed to connect (and is waiting out its backoff).
    #[error("no backend is reachable ({backends} tried); last error: {last_error}")]
    Unreachable {
        /// How many backends were tried.
        backends: usize,
        /// The most recent connection error.
        last_error: String,
    },
    /// Backends are connected, but none is in rotation: each says it is not serving, or
    /// was ejected as an outlier.
    #[error("every connected backend is out of rotation (not serving, or ejected)")]
    OutOfRotation,
    /// No backend became ready within the time [`super::Channel::connect`] was given,
    /// and they had not all failed either (still connecting, or waiting for their first
    /// health answer).
    #[error("no backend was ready within {0:?}")]
    Timeout(Duration),
    /// The channel's background tasks have ended (the runtime is shutting down).
    #[error("the channel has shut down")]
    Shutdown,
}
