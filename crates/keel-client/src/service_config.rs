//! gRPC service config: per-service and per-method deadlines, wait-for-ready, retry and
//! hedging policies, and retry throttling, in the JSON format every gRPC implementation
//! reads (`doc/service_config.md` and the retry design, gRFC A6), so a grpc-go user's
//! config works unchanged:
//!
//! ```json
//! {
//!   "methodConfig": [{
//!     "name": [{"service": "payments.v1.PaymentService", "method": "GetPayment"}],
//!     "timeout": "2s",
//!     "retryPolicy": {
//!       "maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
//!       "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
//!     }
//!   }],
//!   "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
//! }
//! ```
//!
//! A name with a service and no method applies to the whole service; an empty name to every
//! method. The most specific entry wins.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic::Code;

use super::retry::{HedgingPolicy, RetryPolicy, Throttle};
use keel_core::method::PathMap;

/// A service config that cannot be used, saying where and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid service config: {0}")]
pub struct ServiceConfigError(String);

/// What applies to one method's calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MethodPolicy {
    pub(crate) timeout: Option<Duration>,
    pub(crate) wait_for_ready: Option<bool>,
    pub(crate) again: Option<Again>,
}

/// How a call is tried more than once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Again {
    /// Again after a retryable failure.
    Retry(RetryPolicy),
    /// More attempts in parallel after a delay (idempotent methods only).
    Hedge(HedgingPolicy),
}

/// A parsed service config: method policies by path, and the channel's retry throttle.
#[derive(Debug, Default)]
pub(crate) struct ServiceConfig {
    by_method: PathMap<Arc<MethodPolicy>>,
    by_service: PathMap<Arc<MethodPolicy>>,
    default: Option<Arc<MethodPolicy>>,
    pub(crate) throttle: Option<Arc<Throttle>>,
}

impl ServiceConfig {
    /// Parses the JSON text of a service config.
    pub(crate) fn parse(json: &str) -> Result<Self, ServiceConfigError> {
        let raw: Raw =
            serde_json::from_str(json).map_err(|error| ServiceConfigError(error.to_string()))?;
        let mut config = Self::default();
        let mut seen = HashSet::new();
        for (index, entry) in raw.method_config.into_iter().enumerate() {
            let at = |what: &str| ServiceConfigError(format!("methodConfig[{index}]: {what}"));
            let policy = Arc::new(entry.policy().map_err(|error| at(&error))?);
            if entry.name.is_empty() {
                return Err(at("`name` lists no service or method"));
            }
            for name in entry.name {
                let service = name.service.unwrap_or_default();
                let method = name.method.unwrap_or_default();
                if service.is_empty() && !method.is_empty() {
                    return Err(at("a name with a method needs its service"));
                }
                if !seen.insert((service.clone(), method.clone())) {
                    return Err(at(&format!("{service}/{method} is named twice")));
                }
                match (service.is_empty(), method.is_empty()) {
                    (true, _) => config.default = Some(policy.clone()),
                    (false, true) => {
                        config.by_service.insert(service, policy.clone());
                    }
                    (false, false) => {
                        config
                            .by_method
                            .insert(format!("/{service}/{method}"), policy.clone());
                    }
                }
            }
        }
        if let Some(throttling) = raw.retry_throttling {
            if !(throttling.max_tokens > 0.0 && throttling.max_tokens <= 1000.0) {
                return Err(ServiceConfigError(
                    "retryThrottling.maxTokens must be in (0, 1000]".into(),
                ));
            }
            if throttling.token_ratio <= 0.0 {
                return Err(ServiceConfigError(
                    "retryThrottling.tokenRatio must be above 0".into(),
                ));
            }
            config.throttle = Some(Arc::new(Throttle::new(
                throttling.max_tokens,
                throttling.token_ratio,
            )));
        }
        Ok(config)
    }

    /// The policy for a request path: the method's, else its service's, else the default.
    pub(crate) fn lookup(&self, path: &str) -> Option<&Arc<MethodPolicy>> {
        if self.by_method.is_empty() && self.by_service.is_empty() {
            return self.default.as_ref();
        }
        self.by_method
            .get(path)
            .or_else(|| {
                let service = path.strip_prefix('/')?.split('/').next()?;
                self.by_service.get(service)
            })
            .or(self.default.as_ref())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    method_config: Vec<RawMethodConfig>,
    retry_throttling: Option<RawThrottling>,
    // Balancing is chosen with `ChannelConfig::policy`; these are accepted and ignored so
    // that a grpc-go config parses.
    #[serde(default, rename = "loadBalancingConfig")]
    _load_balancing_config: serde_json::Value,
    #[serde(default, rename = "loadBalancingPolicy")]
    _load_balancing_policy: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethodConfig {
    #[serde(default)]
    name: Vec<RawName>,
    wait_for_ready: Option<bool>,
    timeout: Option<String>,
    retry_policy: Option<RawRetry>,
    hedging_policy: Option<RawHedging>,
}

#[derive(Deserialize)]
struct RawName {
    service: Option<String>,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetry {
    max_attempts: u32,
    initial_backoff: String,
    max_backoff: String,
    backoff_multiplier: f64,
    retryable_status_codes: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHedging {
    max_attempts: u32,
    hedging_delay: Option<String>,
    #[serde(default)]
    non_fatal_status_codes: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawThrottling {
    max_tokens: f64,
    token_ratio: f64,
}

/// Most attempts a policy may ask for (gRFC A6 caps it at 5).
const MAX_ATTEMPTS: u32 = 5;

impl RawMethodConfig {
    fn policy(&self) -> Result<MethodPolicy, String> {
        let timeout = self
            .timeout
            .as_deref()
            .map(|text| duration(text, "timeout"))
            .transpose()?;
        let again = match (&self.retry_policy, &self.hedging_policy) {
            (Some(_), Some(_)) => {
                return Err("retryPolicy and hedgingPolicy exclude each other".into());
            }
            (Some(retry), None) => Some(Again::Retry(retry.policy()?)),
            (None, Some(hedging)) => Some(Again::Hedge(hedging.policy()?)),
            (None, None) => None,
        };
        Ok(MethodPolicy {
            timeout,
            wait_for_ready: self.wait_for_ready,
            again,
        })
    }
}

impl RawRetry {
    fn policy(&self) -> Result<RetryPolicy, String> {
        if self.max_attempts < 2 {
            return Err("retryPolicy.maxAttempts must be at least 2".into());
        }
        let initial_backoff = duration(&self.initial_backoff, "retryPolicy.initialBackoff")?;
        let max_backoff = duration(&self.max_backoff, "retryPolicy.maxBackoff")?;
        if initial_backoff.is_zero() || max_backoff.is_zero() {
            return Err("retryPolicy backoffs must be above 0".into());
        }
        if self.backoff_multiplier <= 0.0 {
            return Err("retryPolicy.backoffMultiplier must be above 0".into());
        }
        let codes = codes(
            &self.retryable_status_codes,
            "retryPolicy.retryableStatusCodes",
        )?;
        if codes.is_empty() {
            return Err("retryPolicy.retryableStatusCodes must name at least one code".into());
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts.min(MAX_ATTEMPTS),
            initial_backoff,
            max_backoff,
            multiplier: self.backoff_multiplier,
            retryable: codes,
        })
    }
}

impl RawHedging {
    fn policy(&self) -> Result<HedgingPolicy, String> {
        if self.max_attempts < 2 {
            return Err("hedgingPolicy.maxAttempts must be at least 2".into());
        }
        let delay = self
            .hedging_delay
            .as_deref()
            .map(|text| duration(text, "hedgingPolicy.hedgingDelay"))
            .transpose()?
            .unwrap_or_default();
        Ok(HedgingPolicy {
            max_attempts: self.max_attempts.min(MAX_ATTEMPTS),
            delay,
            non_fatal: codes(
                &self.non_fatal_status_codes,
                "hedgingPolicy.nonFatalStatusCodes",
            )?,
        })
    }
}

/// A protobuf JSON duration: decimal seconds with an `s` suffix (`"0.25s"`).
fn duration(text: &str, field: &str) -> Result<Duration, String> {
    text.strip_suffix('s')
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{field} {text:?} is not a duration like \"0.5s\""))
}

/// Status codes by name (`"UNAVAILABLE"`) or number.
fn codes(values: &[serde_json::Value], field: &str) -> Result<Vec<Code>, String> {
    values
        .iter()
        .map(|value| {
            let code = match value {
                serde_json::Value::Number(number) => number
                    .as_i64()
                    .filter(|n| (0..=16).contains(n))
                    .map(|n| Code::from_i32(n as i32)),
                serde_json::Value::String(name) => code_named(name),
                _ => None,
            };
            code.ok_or_else(|| format!("{field} has {value}, not a status code name or number"))
        })
        .collect()
}

fn code_named(name: &str) -> Option<Code> {
    Some(match name.to_ascii_uppercase().as_str() {
        "OK" => Code::Ok,
        "CANCELLED" => Code::Cancelled,
        "UNKNOWN" => Code::Unknown,
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "ABORTED" => Code::Aborted,
        "OUT_OF_RANGE" => Code::OutOfRange,
        "UNIMPLEMENTED" => Code::Unimplemented,
        "INTERNAL" => Code::Internal,
        "UNAVAILABLE" => Code::Unavailable,
        "DATA_LOSS" => Code::DataLoss,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": [{}], "timeout": "5s"},
            {"name": [{"service": "a.S"}], "waitForReady": true,
             "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                             "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 8]}},
            {"name": [{"service": "a.S", "method": "Get"}],
             "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
                               "nonFatalStatusCodes": ["unavailable"]}}
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
    }"#;

    #[test]
    fn the_most_specific_name_wins() {
        let config = ServiceConfig::parse(CONFIG).unwrap();
        let get = config.lookup("/a.S/Get").unwrap();
        assert!(
            matches!(&get.again, Some(Again::Hedge(h)) if h.max_attempts == 3
            && h.delay == Duration::from_millis(50) && h.non_fatal == [Code::Unavailable])
        );
        let put = config.lookup("/a.S/Put").unwrap();
        assert_eq!(put.wait_for_ready, Some(true));
        let Some(Again::Retry(retry)) = &put.again else {
            panic!("{put:?}")
        };
        assert_eq!(retry.max_attempts, 5, "capped at 5");
        assert_eq!(
            retry.retryable,
            [Code::Unavailable, Code::ResourceExhausted]
        );
        let other = config.lookup("/b.T/M").unwrap();
        assert_eq!(other.timeout, Some(Duration::from_secs(5)));
        assert!(other.again.is_none());
        assert!(config.throttle.is_some());
    }

    #[test]
    fn mistakes_name_the_field() {
        for (json, hint) in [
            (
                r#"{"methodConfig": [{"name": [{"method": "M"}]}]}"#,
                "needs its service",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "timeout": "5"}]}"#,
                "timeout",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "retryPolicy": {"maxAttempts": 1,
                   "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1,
                   "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#,
                "maxAttempts",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "retryPolicy": {"maxAttempts": 2,
                   "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1,
                   "retryableStatusCodes": ["NOPE"]}}]}"#,
                "NOPE",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}"#,
                "maxTokens",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}, {"service": "s"}]}]}"#,
                "twice",
            ),
            ("not json", "expected"),
        ] {
            let error = ServiceConfig::parse(json).unwrap_err().to_string();
            assert!(error.contains(hint), "{json}: {error}");
        }
    }
}
