//! Settings checked before they are used. A server refuses its configuration when it is
//! bound, a channel when it is built, a loader when the process starts, each with an
//! [`InvalidSetting`] that names the key, the value and what the value must be; never with
//! a panic deep in a connection task (h2 asserts on an out-of-range window, rand on a jitter
//! that is not a number, `Duration::mul_f64` on a huge age, `Instant + Duration` on a huge
//! timeout).
//!
//! ```
//! use keel_core::settings::{Checks, Validate};
//!
//! struct Pool {
//!     size: usize,
//! }
//!
//! impl Validate for Pool {
//!     fn check(&self, checks: &mut Checks) {
//!         checks.at_least("size", self.size, 1, "");
//!     }
//! }
//!
//! let error = Pool { size: 0 }.validate().unwrap_err();
//! assert_eq!(error.to_string(), "size = 0: must be at least 1");
//! assert_eq!(error.key, "size");
//! ```

use std::fmt::{self, Display};
use std::ops::RangeInclusive;
use std::time::Duration;

/// The longest duration any Keel setting takes: one year (humantime's `1year`, 365.25
/// days). Longer is a typo, and would overflow the clock arithmetic of timers and
/// deadlines (`Instant + Duration` panics); `0s` is how a setting that can be off says so.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// A setting whose value cannot be used: `http2.max_frame_size = 1: must be between 16384
/// and 16777215 bytes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {expected}")]
pub struct InvalidSetting {
    /// The dotted key, e.g. `http2.max_frame_size`.
    pub key: String,
    /// The value as it would be written in a configuration file (`1`, `40s`, `"a b"`).
    pub value: String,
    /// What the value must be, e.g. `must be between 16384 and 16777215 bytes`.
    pub expected: String,
}

impl InvalidSetting {
    /// `key` = `value` is not usable; `expected` says what it must be.
    pub fn new(key: impl Into<String>, value: impl Display, expected: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// A configuration that knows its own rules.
pub trait Validate {
    /// Records every rule this configuration breaks in `checks`, keys relative to it
    /// (a parent adds its prefix with [`Checks::nested`]).
    fn check(&self, checks: &mut Checks);

    /// `Ok`, or the first setting that cannot be used.
    fn validate(&self) -> Result<(), InvalidSetting> {
        let mut checks = Checks::default();
        self.check(&mut checks);
        checks.into_result()
    }
}

/// The rules a configuration broke, gathered while checking it.
#[derive(Debug, Default)]
pub struct Checks {
    prefix: String,
    found: Vec<InvalidSetting>,
}

impl Checks {
    /// Records `key` = `value` as unusable unless `ok`.
    pub fn require(
        &mut self,
        ok: bool,
        key: &str,
        value: impl Display,
        expected: impl Into<String>,
    ) {
        if !ok {
            let key = format!("{}{key}", self.prefix);
            self.found.push(InvalidSetting::new(key, value, expected));
        }
    }

    /// `value` must lie in `range` (`unit` follows the numbers, e.g. `" bytes"`).
    pub fn between<T: PartialOrd + Display>(
        &mut self,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
        unit: &str,
    ) {
        let ok = range.contains(&value);
        let (low, high) = range.into_inner();
        self.require(
            ok,
            key,
            value,
            format!("must be between {low} and {high}{unit}"),
        );
    }

    /// `value` must be `min` or more (`unit` follows the number).
    pub fn at_least<T: PartialOrd + Display>(&mut self, key: &str, value: T, min: T, unit: &str) {
        let ok = value >= min;
        self.require(ok, key, value, format!("must be at least {min}{unit}"));
    }

    /// `value` must be a fraction from 0 to 1 (not NaN).
    pub fn fraction(&mut self, key: &str, value: f64) {
        self.require(
            (0.0..=1.0).contains(&value),
            key,
            value,
            "must be a fraction between 0 and 1",
        );
    }

    /// `value` must be at most [`MAX_DURATION`]; `0s` is allowed (it turns the setting off
    /// or means "at once").
    pub fn duration(&mut self, key: &str, value: Duration) {
        self.require(
            value <= MAX_DURATION,
            key,
            DurationText(value),
            format!("must be at most {}", DurationText(MAX_DURATION)),
        );
    }

    /// `value` must be above zero and at most [`MAX_DURATION`].
    pub fn positive_duration(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.require(false, key, DurationText(value), "must be above 0s");
        } else {
            self.duration(key, value);
        }
    }

    /// Checks `config`, a part of this one under `prefix` (`http2`: its `max_frame_size`
    /// is reported as `http2.max_frame_size`).
    pub fn nested(&mut self, prefix: &str, config: &impl Validate) {
        let outer = self.prefix.len();
        self.prefix.push_str(prefix);
        self.prefix.push('.');
        config.check(self);
        self.prefix.truncate(outer);
    }

    /// Every rule broken, in the order checked.
    pub fn into_vec(self) -> Vec<InvalidSetting> {
        self.found
    }

    /// `Ok` if nothing was broken, else the first broken rule.
    pub fn into_result(self) -> Result<(), InvalidSetting> {
        match self.found.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }
}

/// A duration as a configuration file writes it (`30s`, `15m`, `1year`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Inner {
        jitter: f64,
        wait: Duration,
    }

    impl Validate for Inner {
        fn check(&self, checks: &mut Checks) {
            checks.fraction("jitter", self.jitter);
            checks.positive_duration("wait", self.wait);
        }
    }

    struct Outer {
        size: u32,
        inner: Inner,
    }

    impl Validate for Outer {
        fn check(&self, checks: &mut Checks) {
            checks.between("size", self.size, 16..=32, " bytes");
            checks.nested("inner", &self.inner);
            checks.at_least("after", 0, 1, "");
        }
    }

    fn messages(outer: &Outer) -> Vec<String> {
        let mut checks = Checks::default();
        outer.check(&mut checks);
        checks.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn nested_keys_carry_their_prefix_and_values_read_as_written() {
        let outer = Outer {
            size: 1,
            inner: Inner {
                jitter: f64::NAN,
                wait: Duration::ZERO,
            },
        };
        assert_eq!(
            messages(&outer),
            [
                "size = 1: must be between 16 and 32 bytes",
                "inner.jitter = NaN: must be a fraction between 0 and 1",
                "inner.wait = 0s: must be above 0s",
                "after = 0: must be at least 1",
            ]
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        let mut checks = Checks::default();
        checks.between("size", 16, 16..=32, "");
        checks.between("size", 32, 16..=32, "");
        checks.fraction("jitter", 0.0);
        checks.fraction("jitter", 1.0);
        checks.duration("off", Duration::ZERO);
        checks.positive_duration("wait", MAX_DURATION);
        assert!(checks.into_result().is_ok());
        let mut checks = Checks::default();
        checks.duration("wait", MAX_DURATION + Duration::from_nanos(1));
        let error = checks.into_result().unwrap_err();
        assert_eq!(error.expected, "must be at most 1year");
        assert_eq!(error.value, "1year 1ns");
    }
}
