//! Token issuers for tests (feature `testing`): fresh Ed25519 and P-256 keys, a fixed RSA
//! test key, their JWKS entries, and tokens signed, forged or left unsigned.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{Value, json};

/// A 2048-bit RSA key (PKCS#1) made once with `openssl genrsa` for tests: ring cannot
/// generate RSA keys.
const RSA_TEST_KEY: &str = include_str!("../tests/fixtures/rsa-test-key.pem");

/// A signing key with its key id: signs tokens, and describes its public half as a JWK.
pub struct TestIssuer {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    public: Value,
}

impl TestIssuer {
    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public: json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
        }
    }

    /// A fresh P-256 key (ES256).
    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }),
        }
    }

    /// The fixed RSA test key (RS256).
    pub fn rs256(kid: &str) -> Self {
        let base64: String = RSA_TEST_KEY
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(base64).unwrap();
        let pair = signature::RsaKeyPair::from_der(&der).unwrap();
        let public: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&der),
            public: json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(&public.n),
                "e": URL_SAFE_NO_PAD.encode(&public.e),
            }),
        }
    }

    /// This key's JWKS entry, with `kid`, `use` and `alg`.
    pub fn jwk(&self) -> Value {
        let mut jwk = self.public.clone();
        let alg = match self.algorithm {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            _ => "RS256",
        };
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(alg);
        jwk
    }

    /// A token with `claims`, signed by this key and naming it by `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// [`sign`](Self::sign) without a `kid` in the header.
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.encoding).unwrap()
    }

    /// A token signed by this key whose header claims `other`'s `kid`: a forgery.
    pub fn forge_as(&self, other: &TestIssuer, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(other.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A JWKS document holding `issuers`' public keys.
pub fn jwks(issuers: &[&TestIssuer]) -> String {
    json!({"keys": issuers.iter().map(|issuer| issuer.jwk()).collect::<Vec<_>>()}).to_string()
}

/// An unsigned token (`alg: none`) naming `kid`.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string();
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A token MACed with HS256 over `secret`, naming `kid`.
pub fn hmac(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Seconds since the Unix epoch, now (for `exp`, `nbf`, `iat`).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims valid for an hour from `issuer` for `audience`, about `subject`.
pub fn claims(issuer: &str, audience: &str, subject: &str) -> Value {
    json!({"iss": issuer, "aud": audience, "sub": subject, "exp": now() + 3600, "iat": now()})
}
