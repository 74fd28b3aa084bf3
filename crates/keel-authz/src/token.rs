//! End users' bearer tokens: `authorization: Bearer <JWT>`, verified against the keys of a
//! JWKS file, becoming [`Claims`].
//!
//! Accepted signatures are RS256, ES256 (P-256) and EdDSA (Ed25519); `alg: none`, HMAC
//! (`HS*`) and everything else are refused before any key is looked at, so a token cannot
//! choose a weaker check. The header's `kid` picks the key (a token without one is
//! accepted when the set holds exactly one key for its algorithm). `exp` is required and
//! `nbf` honoured, both with a bounded clock skew; `iss` must be the configured issuer and
//! `aud` must name the configured audience; `sub` is required.
//!
//! Errors say what the client can do about them and never repeat the token or any other
//! text taken from it.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keel_core::identity::Claims;
use serde_json::{Map, Value};

/// The algorithms Keel verifies.
const ACCEPTED: &str = "RS256, ES256 or EdDSA";

/// Why a call's bearer token was refused. Each maps to UNAUTHENTICATED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The call carries no token and the server requires one.
    #[error("this call needs a bearer token: send `authorization: Bearer <JWT>`")]
    Missing,
    /// The `authorization` header or the token is not a well-formed JWT.
    #[error("the bearer token is malformed: {0}")]
    Malformed(&'static str),
    /// The token is signed with an algorithm the server does not accept.
    #[error("the token's signature algorithm is not accepted (use {ACCEPTED})")]
    UnsupportedAlgorithm,
    /// No key of the server's key set matches the token's `kid` and algorithm.
    #[error(
        "the token was signed with a key the server does not know (keys may have rotated: get a \
         new token)"
    )]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the allowed clock skew).
    #[error("the token has expired: get a new one")]
    Expired,
    /// `nbf` is still ahead (beyond the allowed clock skew).
    #[error("the token is not valid yet (nbf is in the future: check the clocks)")]
    NotYetValid,
    /// `aud` does not name this service.
    #[error("the token is for another audience than this service")]
    WrongAudience,
    /// `iss` is not the issuer this server trusts.
    #[error("the token comes from an issuer this server does not trust")]
    WrongIssuer,
}

impl TokenError {
    /// The UPPER_SNAKE reason for `google.rpc.ErrorInfo` (`TOKEN_EXPIRED`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "TOKEN_MISSING",
            Self::Malformed(_) => "TOKEN_MALFORMED",
            Self::UnsupportedAlgorithm => "TOKEN_UNSUPPORTED_ALGORITHM",
            Self::UnknownKey => "TOKEN_UNKNOWN_KEY",
            Self::BadSignature => "TOKEN_BAD_SIGNATURE",
            Self::Expired => "TOKEN_EXPIRED",
            Self::NotYetValid => "TOKEN_NOT_YET_VALID",
            Self::WrongAudience => "TOKEN_WRONG_AUDIENCE",
            Self::WrongIssuer => "TOKEN_WRONG_ISSUER",
        }
    }

    /// The challenge an HTTP server would send in `WWW-Authenticate` (RFC 6750):
    /// `Bearer error="invalid_token", error_description="..."`, or a bare `Bearer` when
    /// no token came.
    pub fn challenge(&self) -> String {
        let code = match self {
            Self::Missing => return "Bearer".to_owned(),
            Self::Malformed(_) => "invalid_request",
            _ => "invalid_token",
        };
        let description = self.to_string().replace(['"', '\\', '`'], "'");
        format!("Bearer error=\"{code}\", error_description=\"{description}\"")
    }
}

/// The token of `authorization: Bearer <token>`, `None` when the header is absent.
///
/// ```
/// use keel_authz::token::{TokenError, bearer};
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(bearer(&headers), Ok(None));
/// headers.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
/// assert_eq!(bearer(&headers), Ok(Some("abc.def.ghi")));
/// headers.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
/// assert!(matches!(bearer(&headers), Err(TokenError::Malformed(_))));
/// ```
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, TokenError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::Malformed(
            "send one authorization header, not several",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| TokenError::Malformed("the authorization header is not ASCII text"))?;
    let (scheme, token) = text.split_once(' ').ok_or(TokenError::Malformed(
        "the authorization header must be `Bearer <JWT>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Malformed(
            "only the Bearer scheme is accepted: `authorization: Bearer <JWT>`",
        ));
    }
    let token = token.trim_start_matches(' ').trim_end();
    if token.is_empty() {
        return Err(TokenError::Malformed("the bearer token is empty"));
    }
    Ok(Some(token))
}

/// A JWKS file (`{"keys": [...]}`) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeySetError(String);

/// The usable public keys of a JWKS document.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Clone)]
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|key| (key.id.as_deref().unwrap_or("(no kid)"), key.algorithm)),
            )
            .finish()
    }
}

impl KeySet {
    /// Reads a JWKS document. Keys Keel cannot verify with (HMAC secrets, other curves and
    /// algorithms, encryption keys) are skipped with a warning, so an identity provider's
    /// full set loads; a set left with no usable key is an error.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeySetError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_slice(bytes)
            .map_err(|error| KeySetError(format!("not a JWKS document: {error}")))?;
        let mut keys = Vec::new();
        for (i, value) in document.keys.into_iter().enumerate() {
            match usable(value) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::warn!("JWKS key {i} skipped: {why}"),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError(format!(
                "no usable key (Keel verifies {ACCEPTED}: RSA, P-256 or Ed25519 signing keys)"
            )));
        }
        Ok(Self { keys })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key (never true of a set [`from_slice`](Self::from_slice)
    /// returned).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn find(&self, id: Option<&str>, algorithm: Algorithm) -> Option<&Key> {
        let mut candidates = self.keys.iter().filter(|key| key.algorithm == algorithm);
        match id {
            Some(id) => candidates.find(|key| key.id.as_deref() == Some(id)),
            None => {
                let only = candidates.next()?;
                candidates.next().is_none().then_some(only)
            }
        }
    }
}

/// A key Keel can verify with, from one JWKS entry.
fn usable(value: Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|error| format!("unreadable: {error}"))?;
    if matches!(jwk.common.public_key_use, Some(ref usage) if *usage != PublicKeyUse::Signature) {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (HMAC) key: HS* tokens are refused".into());
        }
        _ => return Err(format!("an unsupported curve (Keel verifies {ACCEPTED})")),
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(other) => return Err(format!("algorithm {other:?} (Keel verifies {ACCEPTED})")),
    };
    if declared.is_some_and(|declared| declared != algorithm) {
        return Err("its \"alg\" does not fit its key type".into());
    }
    let decoding =
        DecodingKey::from_jwk(&jwk).map_err(|error| format!("unusable key material: {error}"))?;
    Ok(Key {
        id: jwk.common.key_id.clone(),
        algorithm,
        decoding,
    })
}

/// Checks tokens for one issuer and audience.
#[derive(Debug, Clone)]
pub struct Verifier {
    issuer: String,
    audience: String,
    clock_skew: Duration,
}

impl Verifier {
    /// Accepts tokens `issuer` issued for `audience`, allowing `clock_skew` on `exp` and
    /// `nbf` (whole seconds count).
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        clock_skew: Duration,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            clock_skew,
        }
    }

    /// Verifies `token` against `keys` and returns its claims: `sub`, `iss`, and every
    /// claim whose value is a string or a list of strings.
    pub fn verify(&self, keys: &KeySet, token: &str) -> Result<Claims, TokenError> {
        let header = token.split('.').next().unwrap_or_default();
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed("a JWT has three dot-separated parts"));
        }
        let header: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed("the header is not base64url JSON"))?;
        let algorithm = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some("EdDSA") => Algorithm::EdDSA,
            Some(_) => return Err(TokenError::UnsupportedAlgorithm),
            None => return Err(TokenError::Malformed("the header names no algorithm")),
        };
        if header.contains_key("crit") {
            return Err(TokenError::Malformed(
                "the header has critical extensions (crit) this server does not implement",
            ));
        }
        let id = match header.get("kid") {
            None => None,
            Some(Value::String(id)) => Some(id.as_str()),
            Some(_) => return Err(TokenError::Malformed("the header's kid is not a string")),
        };
        let key = keys.find(id, algorithm).ok_or(TokenError::UnknownKey)?;

        let mut validation = Validation::new(algorithm);
        validation.leeway = self.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::UnsupportedAlgorithm
                }
                ErrorKind::MissingRequiredClaim(_) => TokenError::Malformed(
                    "the token lacks a required claim (exp, iss, aud and sub are)",
                ),
                _ => TokenError::Malformed("the token's parts do not decode"),
            })?;
        claims(data.claims)
    }
}

/// The claims Keel keeps: strings and lists of strings.
fn claims(all: Map<String, Value>) -> Result<Claims, TokenError> {
    let mut values = BTreeMap::new();
    for (name, value) in all {
        match value {
            Value::String(text) => {
                values.insert(name, vec![text]);
            }
            Value::Array(items) if items.iter().all(Value::is_string) => {
                let texts = items
                    .into_iter()
                    .filter_map(|item| match item {
                        Value::String(text) => Some(text),
                        _ => None,
                    })
                    .collect();
                values.insert(name, texts);
            }
            _ => {}
        }
    }
    let single = |name: &str| match values.get(name).map(Vec::as_slice) {
        Some([one]) => Ok(one.clone()),
        _ => Err(TokenError::Malformed("sub and iss must be strings")),
    };
    let (subject, issuer) = (single("sub")?, single("iss")?);
    Ok(Claims::new(subject, issuer, values))
}

#[cfg(test)]
mod tests;
