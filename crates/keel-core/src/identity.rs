//! Who is calling: the identity a peer proved with its certificate, and the end user a
//! bearer token names. The TLS layer puts a [`PeerIdentity`] in each request's extensions
//! (an `Arc`, shared by the connection's requests); token verification puts [`Claims`].
//! Handlers, logs, spans and the authorization policy read them from there (metric labels
//! too, when `observe.identity_label` is on).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The identity a peer proved with its certificate during the TLS handshake.
///
/// Its [`principal`](Self::principal) is the SPIFFE ID when the certificate has one,
/// else its first DNS SAN, else its subject: the SPIFFE ID takes precedence, so a rule
/// naming a DNS name never matches a workload that has a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The SPIFFE ID (the certificate's one `spiffe://` URI SAN), if any.
    pub spiffe_id: Option<String>,
    /// The DNS SANs, in certificate order.
    pub dns_names: Vec<String>,
    /// The subject distinguished name, RFC 4514 style (`CN=client,O=Keel`).
    pub subject: String,
}

impl PeerIdentity {
    /// An identity from its parts (normally read from a certificate by the TLS layer).
    pub fn new(spiffe_id: Option<String>, dns_names: Vec<String>, subject: String) -> Self {
        Self {
            spiffe_id,
            dns_names,
            subject,
        }
    }

    /// The name policies match: the SPIFFE ID, else the first DNS SAN, else the subject.
    pub fn principal(&self) -> &str {
        self.spiffe_id
            .as_deref()
            .or(self.dns_names.first().map(String::as_str))
            .unwrap_or(&self.subject)
    }

    /// The names a policy may match, in precedence order: only the SPIFFE ID when there
    /// is one, else every DNS SAN, else the subject.
    pub fn principals(&self) -> Vec<&str> {
        if let Some(id) = &self.spiffe_id {
            vec![id.as_str()]
        } else if !self.dns_names.is_empty() {
            self.dns_names.iter().map(String::as_str).collect()
        } else {
            vec![self.subject.as_str()]
        }
    }

    /// This identity, shared, as it goes into request extensions.
    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.principal())
    }
}

/// The verified claims of an end user's bearer token (JWT), as request extensions carry
/// them. Only verified tokens become `Claims`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Claims {
    /// `sub`: who the token speaks for.
    pub subject: String,
    /// `iss`: who issued it.
    pub issuer: String,
    /// Every claim whose value is a string or a list of strings, by name, each value
    /// kept; `sub` and `iss` included.
    pub values: BTreeMap<String, Vec<String>>,
}

impl Claims {
    /// Claims from their parts (normally built by token verification).
    pub fn new(subject: String, issuer: String, values: BTreeMap<String, Vec<String>>) -> Self {
        Self {
            subject,
            issuer,
            values,
        }
    }

    /// The values of claim `name` (empty when the token has none).
    pub fn get(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Who a request acts for, as a business rule such as account ownership sees it: the
/// token's subject when the caller presented one, else the peer's principal.
pub fn caller<B>(request: &http::Request<B>) -> Option<String> {
    caller_from(request.extensions())
}

/// [`caller`] over bare extensions (what tonic's `Request::extensions` gives a handler).
pub fn caller_from(extensions: &http::Extensions) -> Option<String> {
    if let Some(claims) = extensions.get::<Arc<Claims>>() {
        return Some(claims.subject.clone());
    }
    extensions
        .get::<Arc<PeerIdentity>>()
        .map(|peer| peer.principal().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spiffe: Option<&str>, dns: &[&str], subject: &str) -> PeerIdentity {
        PeerIdentity::new(
            spiffe.map(str::to_owned),
            dns.iter().map(|name| (*name).to_owned()).collect(),
            subject.to_owned(),
        )
    }

    #[test]
    fn the_spiffe_id_takes_precedence_over_dns_names_and_subject() {
        let workload = peer(
            Some("spiffe://keel.test/payments"),
            &["payments.keel.test"],
            "CN=payments",
        );
        assert_eq!(workload.principal(), "spiffe://keel.test/payments");
        assert_eq!(workload.principals(), ["spiffe://keel.test/payments"]);

        let host = peer(None, &["a.keel.test", "b.keel.test"], "CN=a");
        assert_eq!(host.principal(), "a.keel.test");
        assert_eq!(host.principals(), ["a.keel.test", "b.keel.test"]);

        let bare = peer(None, &[], "CN=old,O=Keel");
        assert_eq!(bare.principal(), "CN=old,O=Keel");
        assert_eq!(bare.to_string(), "CN=old,O=Keel");
    }

    #[test]
    fn the_caller_is_the_token_subject_before_the_peer() {
        let mut request = http::Request::new(());
        assert_eq!(caller(&request), None);
        request
            .extensions_mut()
            .insert(peer(None, &["svc.keel.test"], "CN=svc").shared());
        assert_eq!(caller(&request).as_deref(), Some("svc.keel.test"));
        request.extensions_mut().insert(Arc::new(Claims::new(
            "alice".into(),
            "https://issuer.test".into(),
            BTreeMap::new(),
        )));
        assert_eq!(caller(&request).as_deref(), Some("alice"));
    }
}
