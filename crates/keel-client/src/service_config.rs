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
//!
//! A value that cannot be used is refused when the config is parsed, as an
//! [`InvalidSetting`] whose key is the field's JSON path
//! (`methodConfig[0].retryPolicy.maxAttempts = 1: must be at least 2`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic::Code;

use super::retry::{HedgingPolicy, RetryPolicy, Throttle};
use keel_core::method::PathMap;
use keel_core::settings::{DurationText, InvalidSetting, MAX_DURATION};

/// A service config that cannot be used, saying where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceConfigError {
    /// The text is not JSON in a service config's shape (the parser's message).
    #[error("invalid service config: {0}")]
    Json(String),
    /// A field's value cannot be used; its key is the field's JSON path.
    #[error("invalid service config: {0}")]
    Setting(#[from] InvalidSetting),
}

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
        let raw: Raw = serde_json::from_str(json)
            .map_err(|error| ServiceConfigError::Json(error.to_string()))?;
        let mut config = Self::default();
        let mut seen = HashSet::new();
        for (index, entry) in raw.method_config.into_iter().enumerate() {
            let at = format!("methodConfig[{index}]");
            let policy = Arc::new(entry.policy(&at)?);
            if entry.name.is_empty() {
                return Err(InvalidSetting::new(
                    format!("{at}.name"),
                    "[]",
                    "must list a service or method, or hold one empty name for every method",
                )
                .into());
            }
            for (number, name) in entry.name.into_iter().enumerate() {
                let service = name.service.unwrap_or_default();
                let method = name.method.unwrap_or_default();
                if service.is_empty() && !method.is_empty() {
                    return Err(InvalidSetting::new(
                        format!("{at}.name[{number}].service"),
                        format_args!("{service:?}"),
                        format!("must name the service of method {method:?}"),
                    )
                    .into());
                }
                if !seen.insert((service.clone(), method.clone())) {
                    return Err(InvalidSetting::new(
                        format!("{at}.name[{number}]"),
                        format_args!("{service}/{method}"),
                        "must not be named twice",
                    )
                    .into());
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
            let max_tokens = throttling.max_tokens;
            if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
                return Err(InvalidSetting::new(
                    "retryThrottling.maxTokens",
                    max_tokens,
                    "must be above 0 and at most 1000",
                )
                .into());
            }
            if throttling.token_ratio <= 0.0 {
                return Err(InvalidSetting::new(
                    "retryThrottling.tokenRatio",
                    throttling.token_ratio,
                    "must be above 0",
                )
                .into());
            }
            config.throttle = Some(Arc::new(Throttle::new(max_tokens, throttling.token_ratio)));
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
    /// The policy of the entry at JSON path `at` (`methodConfig[0]`).
    fn policy(&self, at: &str) -> Result<MethodPolicy, InvalidSetting> {
        let timeout = self
            .timeout
            .as_deref()
            .map(|text| positive_duration(text, &format!("{at}.timeout")))
            .transpose()?;
        let again = match (&self.retry_policy, &self.hedging_policy) {
            (Some(_), Some(_)) => {
                return Err(InvalidSetting::new(
                    format!("{at}.hedgingPolicy"),
                    "{...}",
                    "must be absent when retryPolicy is set: they exclude each other",
                ));
            }
            (Some(retry), None) => Some(Again::Retry(retry.policy(&format!("{at}.retryPolicy"))?)),
            (None, Some(hedging)) => Some(Again::Hedge(
                hedging.policy(&format!("{at}.hedgingPolicy"))?,
            )),
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
    fn policy(&self, at: &str) -> Result<RetryPolicy, InvalidSetting> {
        if self.max_attempts < 2 {
            return Err(InvalidSetting::new(
                format!("{at}.maxAttempts"),
                self.max_attempts,
                "must be at least 2",
            ));
        }
        let initial_backoff =
            positive_duration(&self.initial_backoff, &format!("{at}.initialBackoff"))?;
        let max_backoff = positive_duration(&self.max_backoff, &format!("{at}.maxBackoff"))?;
        if self.backoff_multiplier <= 0.0 {
            return Err(InvalidSetting::new(
                format!("{at}.backoffMultiplier"),
                self.backoff_multiplier,
                "must be above 0",
            ));
        }
        let key = format!("{at}.retryableStatusCodes");
        let codes = codes(&self.retryable_status_codes, &key)?;
        if codes.is_empty() {
            return Err(InvalidSetting::new(
                key,
                "[]",
                "must name at least one code",
            ));
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
    fn policy(&self, at: &str) -> Result<HedgingPolicy, InvalidSetting> {
        if self.max_attempts < 2 {
            return Err(InvalidSetting::new(
                format!("{at}.maxAttempts"),
                self.max_attempts,
                "must be at least 2",
            ));
        }
        let delay = self
            .hedging_delay
            .as_deref()
            .map(|text| duration(text, &format!("{at}.hedgingDelay")))
            .transpose()?
            .unwrap_or_default();
        Ok(HedgingPolicy {
            max_attempts: self.max_attempts.min(MAX_ATTEMPTS),
            delay,
            non_fatal: codes(
                &self.non_fatal_status_codes,
                &format!("{at}.nonFatalStatusCodes"),
            )?,
        })
    }
}

/// A protobuf JSON duration: decimal seconds with an `s` suffix (`"0.25s"`), at most
/// [`MAX_DURATION`].
fn duration(text: &str, key: &str) -> Result<Duration, InvalidSetting> {
    let seconds = text
        .strip_suffix('s')
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .filter(|seconds| *seconds >= 0.0)
        .ok_or_else(|| {
            InvalidSetting::new(
                key,
                format_args!("{text:?}"),
                "must be a duration like \"0.5s\"",
            )
        })?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| {
            InvalidSetting::new(
                key,
                format_args!("{text:?}"),
                format!("must be at most {}", DurationText(MAX_DURATION)),
            )
        })
}

/// A [`duration`] above zero.
fn positive_duration(text: &str, key: &str) -> Result<Duration, InvalidSetting> {
    let duration = duration(text, key)?;
    if duration.is_zero() {
        return Err(InvalidSetting::new(
            key,
            format_args!("{text:?}"),
            "must be above 0s",
        ));
    }
    Ok(duration)
}

/// Status codes by name (`"UNAVAILABLE"`) or number.
fn codes(values: &[serde_json::Value], key: &str) -> Result<Vec<Code>, InvalidSetting> {
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
            code.ok_or_else(|| {
                InvalidSetting::new(key, value, "must list status codes by name or number")
            })
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
        let retry = |fields: &str| {
            format!(
                r#"{{"methodConfig": [{{"name": [{{"service": "s"}}], "retryPolicy": {{{fields}}}}}]}}"#
            )
        };
        let codes = r#""retryableStatusCodes": ["UNAVAILABLE"]"#;
        for (json, expected) in [
            (
                r#"{"methodConfig": [{"name": [{"method": "M"}]}]}"#.to_owned(),
                r#"methodConfig[0].name[0].service = "": must name the service of method "M""#,
            ),
            (
                r#"{"methodConfig": [{"name": []}]}"#.to_owned(),
                "methodConfig[0].name = []: must list a service or method, or hold one empty \
                 name for every method",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "timeout": "5"}]}"#.to_owned(),
                r#"methodConfig[0].timeout = "5": must be a duration like "0.5s""#,
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "timeout": "0s"}]}"#.to_owned(),
                r#"methodConfig[0].timeout = "0s": must be above 0s"#,
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "timeout": "1e300s"}]}"#
                    .to_owned(),
                r#"methodConfig[0].timeout = "1e300s": must be at most 1year"#,
            ),
            (
                retry(&format!(
                    r#""maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s",
                       "backoffMultiplier": 1, {codes}"#
                )),
                "methodConfig[0].retryPolicy.maxAttempts = 1: must be at least 2",
            ),
            (
                retry(&format!(
                    r#""maxAttempts": 2, "initialBackoff": "0s", "maxBackoff": "1s",
                       "backoffMultiplier": 1, {codes}"#
                )),
                r#"methodConfig[0].retryPolicy.initialBackoff = "0s": must be above 0s"#,
            ),
            (
                retry(&format!(
                    r#""maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "99999999999s",
                       "backoffMultiplier": 1, {codes}"#
                )),
                r#"methodConfig[0].retryPolicy.maxBackoff = "99999999999s": must be at most 1year"#,
            ),
            (
                retry(&format!(
                    r#""maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
                       "backoffMultiplier": 0, {codes}"#
                )),
                "methodConfig[0].retryPolicy.backoffMultiplier = 0: must be above 0",
            ),
            (
                retry(
                    r#""maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
                       "backoffMultiplier": 1, "retryableStatusCodes": ["NOPE"]"#,
                ),
                r#"methodConfig[0].retryPolicy.retryableStatusCodes = "NOPE": must list status codes by name or number"#,
            ),
            (
                retry(
                    r#""maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
                       "backoffMultiplier": 1, "retryableStatusCodes": []"#,
                ),
                "methodConfig[0].retryPolicy.retryableStatusCodes = []: must name at least one code",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}],
                    "hedgingPolicy": {"maxAttempts": 1}}]}"#
                    .to_owned(),
                "methodConfig[0].hedgingPolicy.maxAttempts = 1: must be at least 2",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}],
                    "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "-1s"}}]}"#
                    .to_owned(),
                r#"methodConfig[0].hedgingPolicy.hedgingDelay = "-1s": must be a duration like "0.5s""#,
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}],
                    "hedgingPolicy": {"maxAttempts": 2, "nonFatalStatusCodes": [17]}}]}"#
                    .to_owned(),
                "methodConfig[0].hedgingPolicy.nonFatalStatusCodes = 17: must list status codes \
                 by name or number",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}], "hedgingPolicy": {"maxAttempts": 2},
                    "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
                    "backoffMultiplier": 1, "retryableStatusCodes": [14]}}]}"#
                    .to_owned(),
                "methodConfig[0].hedgingPolicy = {...}: must be absent when retryPolicy is set: \
                 they exclude each other",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}"#.to_owned(),
                "retryThrottling.maxTokens = 0: must be above 0 and at most 1000",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0}}"#.to_owned(),
                "retryThrottling.tokenRatio = 0: must be above 0",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": "s"}, {"service": "s"}]}]}"#.to_owned(),
                "methodConfig[0].name[1] = s/: must not be named twice",
            ),
        ] {
            let error = ServiceConfig::parse(&json).unwrap_err();
            let ServiceConfigError::Setting(setting) = &error else {
                panic!("{json}: {error}")
            };
            assert_eq!(setting.to_string(), expected, "{json}");
            assert_eq!(error.to_string(), format!("invalid service config: {expected}"));
        }
        let error = ServiceConfig::parse("not json").unwrap_err();
        assert!(
            matches!(&error, ServiceConfigError::Json(message) if message.contains("expected")),
            "{error}"
        );
    }

    #[test]
    fn boundary_values_are_accepted() {
        let config = ServiceConfig::parse(
            r#"{"methodConfig": [{"name": [{}], "timeout": "31557600s",
                "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.000000001s",
                "maxBackoff": "31557600s", "backoffMultiplier": 0.001,
                "retryableStatusCodes": [0]}}],
                "retryThrottling": {"maxTokens": 1000, "tokenRatio": 0.001}}"#,
        )
        .unwrap();
        let policy = config.lookup("/a.S/M").unwrap();
        assert_eq!(policy.timeout, Some(MAX_DURATION));
        let hedged = ServiceConfig::parse(
            r#"{"methodConfig": [{"name": [{}],
                "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0s"}}]}"#,
        )
        .unwrap();
        assert!(hedged.lookup("/a.S/M").is_some());
    }
}
