//! Outlier ejection: a backend whose calls fail several times in a row with server-side
//! failures is taken out of rotation for a while, longer each time it happens again, and
//! re-admitted when the time is up (Envoy's and gRPC's `consecutive_5xx`-style detection).

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tonic::Code;

/// When backends are ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend (5).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (30 s).
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// The longest ejection (300 s).
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// At most this share of backends is ejected at once, but always one may be (50%).
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// The codes that count as the backend's failure: not the caller's mistakes
/// (INVALID_ARGUMENT, NOT_FOUND, ...) nor business outcomes.
pub(crate) fn is_backend_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::DeadlineExceeded
    )
}

/// One backend's record.
#[derive(Debug, Default)]
pub(crate) struct Record {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Record {
    /// Counts a call's outcome; true if it should now be ejected (the caller decides,
    /// knowing how many others are out).
    pub(crate) fn observe(&self, code: Code, config: &OutlierConfig) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !is_backend_failure(code) {
            state.consecutive_failures = 0;
            return false;
        }
        state.consecutive_failures += 1;
        state.consecutive_failures >= config.consecutive_failures && state.ejected_until.is_none()
    }

    /// Takes the backend out until `now` + its ejection time.
    pub(crate) fn eject(&self, config: &OutlierConfig, now: Instant) -> Instant {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.ejections += 1;
        state.consecutive_failures = 0;
        let length = (config.base_ejection_time * state.ejections).min(config.max_ejection_time);
        let until = now + length;
        state.ejected_until = Some(until);
        until
    }

    /// True while ejected; re-admits the backend once its time is up.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.ejected_until {
            Some(until) if until > now => true,
            Some(_) => {
                state.ejected_until = None;
                false
            }
            None => false,
        }
    }

    /// When the current ejection ends, if ejected.
    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ejected_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;
    use crate::testing::{Net, drive, pickable, say_hello, until_pickable};

    #[test]
    fn consecutive_failures_eject_for_longer_each_time_and_successes_reset() {
        let config = OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            ..OutlierConfig::default()
        };
        let record = Record::default();
        let now = Instant::now();
        assert!(!record.observe(Code::Unavailable, &config));
        assert!(!record.observe(Code::Unavailable, &config));
        assert!(
            !record.observe(Code::Ok, &config),
            "a success resets the count"
        );
        assert!(
            !record.observe(Code::InvalidArgument, &config),
            "the caller's mistake"
        );
        assert!(!record.observe(Code::Internal, &config));
        assert!(!record.observe(Code::Unavailable, &config));
        assert!(record.observe(Code::DeadlineExceeded, &config));
        assert_eq!(record.eject(&config, now), now + Duration::from_secs(10));
        assert!(record.is_ejected(now + Duration::from_secs(9)));
        assert!(
            !record.is_ejected(now + Duration::from_secs(10)),
            "re-admitted"
        );
        assert_eq!(record.eject(&config, now), now + Duration::from_secs(20));
        assert_eq!(
            record.eject(&config, now),
            now + Duration::from_secs(25),
            "capped"
        );
    }

    fn ejecting(
        config: OutlierConfig,
    ) -> impl FnOnce(crate::ChannelBuilder) -> crate::ChannelBuilder {
        move |builder| {
            builder.config(ChannelConfig {
                outlier: Some(config),
                ..ChannelConfig::default()
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_is_ejected_and_returns_when_its_time_is_up() {
        let net = Net::default();
        let good = net.host(1, Duration::from_millis(1));
        let bad = net.host(2, Duration::from_millis(1));
        bad.set_failure(Some(Code::Internal));
        let config = OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(30),
            ..OutlierConfig::default()
        };
        let channel = net.channel(&[&good, &bad], ejecting(config));
        until_pickable(&channel, &[&good, &bad]).await;

        // Each ejection lasts longer: the base time, then twice it.
        for (ejection, length) in [(1, 30), (2, 60)] {
            let mut failures = 0;
            while bad.calls() < 3 * ejection {
                failures += usize::from(say_hello(&channel).await.is_err());
            }
            assert_eq!(failures, 3, "three failures in a row eject it");
            until_pickable(&channel, &[&good]).await;
            let ejected = Instant::now();

            // sleep: virtual time: calls all the way to the end of the ejection go elsewhere
            tokio::time::sleep(Duration::from_secs(length) - Duration::from_millis(100)).await;
            assert!(drive(&channel, 10, 1).await.is_empty());
            assert_eq!(bad.calls(), 3 * ejection, "ejected");

            until_pickable(&channel, &[&good, &bad]).await;
            assert_eq!(
                ejected.elapsed(),
                Duration::from_secs(length),
                "ejection {ejection}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_configured_share_of_backends_is_ejected() {
        let net = Net::default();
        let hosts = [
            net.host(1, Duration::from_millis(1)),
            net.host(2, Duration::from_millis(1)),
        ];
        for host in &hosts {
            host.set_failure(Some(Code::Unavailable));
        }
        let config = OutlierConfig {
            consecutive_failures: 2,
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        };
        let channel = net.channel(&[&hosts[0], &hosts[1]], ejecting(config));
        until_pickable(&channel, &[&hosts[0], &hosts[1]]).await;
        let failures = drive(&channel, 40, 1).await;
        assert_eq!(
            pickable(&channel).len(),
            1,
            "half of two: one is ejected, one stays"
        );
        assert!(
            failures
                .iter()
                .all(|status| status.message() == "scripted failure"),
            "every call reached a backend: {failures:?}"
        );
    }
}
