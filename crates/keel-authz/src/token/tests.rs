//! Tokens from each accepted key type, and every way a token is refused.

use serde_json::json;

use super::*;
use crate::testing::{self, TestIssuer};

const ISSUER: &str = "https://issuer.keel.test";
const AUDIENCE: &str = "payments";

fn verifier() -> Verifier {
    Verifier::new(ISSUER, AUDIENCE, Duration::from_secs(60))
}

fn keys(issuers: &[&TestIssuer]) -> KeySet {
    KeySet::from_slice(testing::jwks(issuers).as_bytes()).unwrap()
}

#[test]
fn rs256_es256_and_eddsa_tokens_verify_into_claims() {
    let (rsa, ec, ed) = (
        TestIssuer::rs256("rsa-1"),
        TestIssuer::es256("ec-1"),
        TestIssuer::ed25519("ed-1"),
    );
    let set = keys(&[&rsa, &ec, &ed]);
    assert_eq!(set.len(), 3);
    for issuer in [&rsa, &ec, &ed] {
        let mut body = testing::claims(ISSUER, AUDIENCE, "alice");
        body["scope"] = json!("pay read");
        body["groups"] = json!(["team-a", "admins"]);
        body["level"] = json!(3);
        let claims = verifier().verify(&set, &issuer.sign(&body)).unwrap();
        assert_eq!(claims.subject, "alice");
        assert_eq!(claims.issuer, ISSUER);
        assert_eq!(claims.get("groups"), ["team-a", "admins"]);
        assert_eq!(claims.get("scope"), ["pay read"]);
        assert_eq!(claims.get("aud"), [AUDIENCE]);
        assert!(claims.get("level").is_empty(), "numbers are not kept");
    }
}

#[test]
fn each_refusal_has_its_own_error() {
    let (good, other) = (TestIssuer::ed25519("k1"), TestIssuer::ed25519("k2"));
    let set = keys(&[&good]);
    let verify = |token: &str| verifier().verify(&set, token).unwrap_err();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = testing::claims(ISSUER, AUDIENCE, "alice");
        change(&mut body);
        good.sign(&body)
    };
    let now = testing::now();
    assert_eq!(
        verify(&with(&|c| c["exp"] = json!(now - 120))),
        TokenError::Expired
    );
    assert_eq!(
        verify(&with(&|c| c["nbf"] = json!(now + 120))),
        TokenError::NotYetValid
    );
    assert_eq!(
        verify(&with(&|c| c["aud"] = json!("ledger"))),
        TokenError::WrongAudience
    );
    assert_eq!(
        verify(&with(&|c| c["iss"] = json!("https://evil.test"))),
        TokenError::WrongIssuer
    );
    let body = testing::claims(ISSUER, AUDIENCE, "alice");
    assert_eq!(
        verify(&other.forge_as(&good, &body)),
        TokenError::BadSignature
    );
    assert_eq!(verify(&other.sign(&body)), TokenError::UnknownKey);
    assert_eq!(
        verify(&testing::unsigned("k1", &body)),
        TokenError::UnsupportedAlgorithm
    );
    assert_eq!(
        verify(&testing::hmac("k1", b"secret", &body)),
        TokenError::UnsupportedAlgorithm
    );
    assert!(matches!(verify("abc"), TokenError::Malformed(_)));
    assert!(matches!(verify("a.b.c"), TokenError::Malformed(_)));
    assert!(matches!(
        verify(&with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        })),
        TokenError::Malformed(_)
    ));
    // Within the skew, still fine.
    verifier()
        .verify(&set, &with(&|c| c["exp"] = json!(now - 30)))
        .unwrap();
}

#[test]
fn a_token_without_kid_needs_a_single_candidate_key() {
    let (a, b) = (TestIssuer::ed25519("a"), TestIssuer::ed25519("b"));
    let body = testing::claims(ISSUER, AUDIENCE, "alice");
    verifier()
        .verify(&keys(&[&a]), &a.sign_without_kid(&body))
        .unwrap();
    assert_eq!(
        verifier()
            .verify(&keys(&[&a, &b]), &a.sign_without_kid(&body))
            .unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn errors_never_repeat_the_token() {
    let good = TestIssuer::ed25519("kid-with-\"quotes\"");
    let set = keys(&[&TestIssuer::ed25519("k")]);
    let token = good.sign(&testing::claims(ISSUER, AUDIENCE, "alice"));
    let error = verifier().verify(&set, &token).unwrap_err();
    for part in token.split('.') {
        assert!(!error.to_string().contains(part));
        assert!(!error.challenge().contains(part));
    }
    assert!(!error.challenge().contains("quotes"));
    assert_eq!(
        TokenError::Expired.challenge(),
        "Bearer error=\"invalid_token\", error_description=\"the token has expired: get a new \
         one\""
    );
    assert_eq!(TokenError::Missing.challenge(), "Bearer");
}

#[test]
fn unusable_keys_are_skipped_and_an_empty_set_is_refused() {
    let ed = TestIssuer::ed25519("ed");
    let document = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RS512", "kid": "rs512"},
        {"kty": "wat"},
        ed.jwk(),
    ]});
    let set = KeySet::from_slice(document.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    let only_hmac = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    assert!(KeySet::from_slice(only_hmac.to_string().as_bytes()).is_err());
    assert!(KeySet::from_slice(b"[]").is_err());
}

#[test]
fn arbitrary_tokens_and_key_sets_give_errors_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let good = TestIssuer::ed25519("k");
    let set = keys(&[&good]);
    let token = good.sign(&testing::claims(ISSUER, AUDIENCE, "alice"));
    for _ in 0..5_000 {
        let mut bytes = token.clone().into_bytes();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = b"ab.-_=+/ \x00"[rng.random_range(0..10)];
        }
        let mutated = String::from_utf8_lossy(&bytes);
        if mutated != token {
            let _ = verifier().verify(&set, &mutated);
        }
        let jwks = testing::jwks(&[&good]);
        let mut bytes = jwks.into_bytes();
        let at = rng.random_range(0..bytes.len());
        bytes[at] = rng.random();
        let _ = KeySet::from_slice(&bytes);
    }
}
