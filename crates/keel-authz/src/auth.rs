//! [`Auth`]: a server's token verification and policy, from its [`AuthConfig`], with both
//! files watched.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use keel_core::identity::{Claims, PeerIdentity};

use crate::config::AuthConfig;
use crate::policy::{Call, Decision, Policy};
use crate::token::{KeySet, TokenError, Verifier, bearer};
use crate::watch::{FileKind, LoadError, ReloadCounts, ReloadObserver, WatchedFile};

/// Who may call: verifies bearer tokens and evaluates the policy, each as configured.
#[derive(Debug)]
pub struct Auth {
    tokens: Option<(Verifier, WatchedFile<KeySet>)>,
    require_token: bool,
    policy: Option<WatchedFile<Policy>>,
    reload_interval: Duration,
}

impl Auth {
    /// Loads the configured files (`None` when `config` enables nothing). A file that cannot
    /// be read or used is an error: a server must not start without the policy it was given.
    /// `observer` hears of every later reload that changed something.
    pub fn from_config(
        config: &AuthConfig,
        observer: Option<ReloadObserver>,
    ) -> Result<Option<Self>, LoadError> {
        if !config.is_enabled() {
            return Ok(None);
        }
        let tokens = if config.tokens() {
            let keys = WatchedFile::load(
                FileKind::Jwks,
                &config.jwks,
                |bytes| KeySet::from_slice(bytes).map_err(|e| e.to_string()),
                observer.clone(),
            )?;
            let verifier = Verifier::new(&config.issuer, &config.audience, config.clock_skew);
            Some((verifier, keys))
        } else {
            None
        };
        let policy = if config.policy.as_os_str().is_empty() {
            None
        } else {
            Some(WatchedFile::load(
                FileKind::Policy,
                &config.policy,
                |bytes| Policy::from_slice(bytes).map_err(|e| e.to_string()),
                observer,
            )?)
        };
        Ok(Some(Self {
            tokens,
            require_token: config.require_token,
            policy,
            reload_interval: config.reload_interval,
        }))
    }

    /// The claims of the call's bearer token: `Ok(None)` when it sent none and none is
    /// required (or tokens are not configured: the header is then not read).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Claims>, TokenError> {
        let Some((verifier, keys)) = &self.tokens else {
            return Ok(None);
        };
        match bearer(headers)? {
            Some(token) => verifier.verify(&keys.current(), token).map(Some),
            None if self.require_token => Err(TokenError::Missing),
            None => Ok(None),
        }
    }

    /// The policy's decision on a call (`None` without a policy: the call proceeds).
    pub fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
        claims: Option<&Claims>,
    ) -> Option<Decision> {
        let policy = self.policy.as_ref()?.current();
        Some(policy.evaluate(&Call {
            path,
            headers,
            peer,
            claims,
        }))
    }

    /// Reads both files again, putting changed, valid versions in force (blocking I/O).
    pub fn reload(&self) {
        if let Some((_, keys)) = &self.tokens {
            keys.reload();
        }
        if let Some(policy) = &self.policy {
            policy.reload();
        }
    }

    /// Reloads every `auth.reload_interval` for ever (never, when it is zero), off the
    /// async workers. Spawn it; drop or abort the task to stop.
    pub async fn poll(self: Arc<Self>) {
        if self.reload_interval.is_zero() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.reload_interval).await;
            let auth = self.clone();
            let _ = tokio::task::spawn_blocking(move || auth.reload()).await;
        }
    }

    /// Reload counts of the file `kind` (`None` when it is not configured).
    pub fn counts(&self, kind: FileKind) -> Option<ReloadCounts> {
        match kind {
            FileKind::Jwks => self.tokens.as_ref().map(|(_, keys)| keys.counts()),
            FileKind::Policy => self.policy.as_ref().map(WatchedFile::counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, TestIssuer};

    #[test]
    fn an_optional_token_may_be_absent_but_never_bad() {
        let dir = std::env::temp_dir().join(format!("keel-authz-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = TestIssuer::ed25519("k");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, testing::jwks(&[&key])).unwrap();
        let config = AuthConfig {
            jwks,
            issuer: "https://i.test".into(),
            audience: "svc".into(),
            require_token: false,
            ..AuthConfig::default()
        };
        let auth = Auth::from_config(&config, None).unwrap().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(auth.authenticate(&headers), Ok(None));
        let mut claims = testing::claims("https://i.test", "svc", "alice");
        claims["exp"] = serde_json::json!(testing::now() - 3600);
        let expired = format!("Bearer {}", key.sign(&claims));
        headers.insert("authorization", expired.parse().unwrap());
        assert_eq!(auth.authenticate(&headers), Err(TokenError::Expired));
        assert_eq!(
            auth.authorize("/a.A/M", &headers, None, None),
            None,
            "no policy"
        );
        assert_eq!(auth.counts(FileKind::Policy), None);
        std::fs::remove_dir_all(&dir).unwrap();

        let off = Auth::from_config(&AuthConfig::default(), None).unwrap();
        assert!(off.is_none(), "nothing configured, nothing to do");
    }
}
