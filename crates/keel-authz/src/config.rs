//! `auth.*`: where the token keys and the policy live, and how tokens are checked.

use std::path::PathBuf;
use std::time::Duration;

use keel_core::settings::{Checks, DurationText, Validate};
use serde::{Deserialize, Serialize};

/// The most clock skew `auth.clock_skew` allows: beyond it an expired token lives on.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// End-user tokens and the authorization policy. Off by default: with neither `jwks` nor
/// `policy` set, every call proceeds as before.
///
/// ```
/// use keel_authz::AuthConfig;
/// use keel_core::settings::Validate;
///
/// let mut config = AuthConfig::default();
/// config.jwks = "/etc/keel/jwks.json".into();
/// assert_eq!(
///     config.validate().unwrap_err().to_string(),
///     "issuer = \"\": must be set when jwks is: tokens from any issuer would pass"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// A JWKS file (`{"keys": [...]}`) with the keys bearer tokens are verified with
    /// (empty: tokens are not read). Watched: a rotation takes effect without a restart.
    pub jwks: PathBuf,
    /// The `iss` tokens must carry (required with `jwks`).
    pub issuer: String,
    /// The audience tokens must name in `aud`: this service (required with `jwks`).
    pub audience: String,
    /// Clock difference tolerated on `exp` and `nbf` (at most 5m). 60 s covers clocks kept
    /// by NTP without keeping an expired token alive for long.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Refuse calls without a bearer token with UNAUTHENTICATED (with `jwks`). On: a
    /// service that verifies tokens usually means every caller to have one. Off, calls
    /// without a token proceed without claims and the policy decides (services calling
    /// with certificates, people with tokens, on one port).
    pub require_token: bool,
    /// An authorization policy in grpc-go's authz JSON format (empty: every call that
    /// passed authentication proceeds). Watched.
    pub policy: PathBuf,
    /// How often `jwks` and `policy` are read for changes (`0s`: only on SIGHUP and
    /// explicit reloads). 10 s: a rotated key or a revoked rule applies within seconds, for
    /// one small read per file.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwks: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            clock_skew: Duration::from_secs(60),
            require_token: true,
            policy: PathBuf::new(),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl AuthConfig {
    /// Whether anything is configured (a JWKS or a policy).
    pub fn is_enabled(&self) -> bool {
        self.tokens() || !self.policy.as_os_str().is_empty()
    }

    /// Whether tokens are verified.
    pub fn tokens(&self) -> bool {
        !self.jwks.as_os_str().is_empty()
    }
}

impl Validate for AuthConfig {
    fn check(&self, checks: &mut Checks) {
        let quoted = |text: &str| format!("{text:?}");
        if self.tokens() {
            checks.require(
                !self.issuer.is_empty(),
                "issuer",
                quoted(&self.issuer),
                "must be set when jwks is: tokens from any issuer would pass",
            );
            checks.require(
                !self.audience.is_empty(),
                "audience",
                quoted(&self.audience),
                "must be set when jwks is: tokens meant for any service would pass",
            );
        } else {
            checks.require(
                self.issuer.is_empty(),
                "issuer",
                quoted(&self.issuer),
                "has no effect without auth.jwks (set the JWKS file, or remove it)",
            );
            checks.require(
                self.audience.is_empty(),
                "audience",
                quoted(&self.audience),
                "has no effect without auth.jwks (set the JWKS file, or remove it)",
            );
        }
        checks.require(
            self.clock_skew <= MAX_CLOCK_SKEW,
            "clock_skew",
            DurationText(self.clock_skew),
            format!("must be at most {}", DurationText(MAX_CLOCK_SKEW)),
        );
        checks.duration("reload_interval", self.reload_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_its_key() {
        let errors = |config: &AuthConfig| {
            let mut checks = Checks::default();
            config.check(&mut checks);
            checks
                .into_vec()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        };
        assert!(errors(&AuthConfig::default()).is_empty());
        let mut config = AuthConfig {
            jwks: "keys.json".into(),
            ..AuthConfig::default()
        };
        assert_eq!(errors(&config), ["issuer", "audience"]);
        config.issuer = "https://issuer.test".into();
        config.audience = "payments".into();
        assert!(errors(&config).is_empty());
        config.clock_skew = Duration::from_secs(301);
        config.reload_interval = Duration::from_secs(10 * 31_557_600);
        assert_eq!(errors(&config), ["clock_skew", "reload_interval"]);

        let config = AuthConfig {
            audience: "payments".into(),
            ..AuthConfig::default()
        };
        assert_eq!(errors(&config), ["audience"]);
    }
}
