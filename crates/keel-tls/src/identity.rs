//! Who a certificate names: a [`PeerIdentity`] read from a DER leaf (its SPIFFE ID, DNS SANs
//! and subject), with the SPIFFE X.509-SVID rules enforced. The server reads it from a
//! client's certificate once per connection; a client can read its server's the same way.
//!
//! SPIFFE rules (X.509-SVID §2, §4.1): a certificate with a `spiffe://` URI SAN has exactly
//! one URI SAN, and a leaf with a SPIFFE ID is not a CA. A certificate breaking either is
//! refused, not read as a weaker identity: a policy naming the SPIFFE ID must never match a
//! certificate that could also claim another one, or sign others.

use keel_core::identity::PeerIdentity;
use rustls_pki_types::CertificateDer;
use x509_parser::asn1_rs::ToDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

/// Why a certificate yields no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not a DER X.509 certificate (or with a malformed extension).
    #[error("the certificate cannot be parsed: {0}")]
    Malformed(String),
    /// A SPIFFE ID next to other URI SANs.
    #[error(
        "the certificate has {count} URI SANs, one of them a SPIFFE ID ({id}); an X.509-SVID \
         has exactly one URI SAN: reissue it with only the SPIFFE ID"
    )]
    SeveralUris {
        /// URI SANs found.
        count: usize,
        /// The SPIFFE ID among them.
        id: String,
    },
    /// A CA certificate used as a workload's leaf.
    #[error(
        "the certificate names SPIFFE ID {id} but is a CA (basicConstraints CA:TRUE); a \
         workload's X.509-SVID must not be a CA: reissue it as a leaf"
    )]
    SpiffeCa {
        /// The SPIFFE ID.
        id: String,
    },
    /// A `spiffe://` URI that is not a valid SPIFFE ID.
    #[error("the URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// The URI as written in the certificate.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The identity `der` names, with the SPIFFE rules checked.
///
/// The SPIFFE ID is the one `spiffe://` URI SAN; DNS SANs keep their certificate order;
/// the subject is written as RFC 4514 does (last RDN first, `CN=client,O=Keel`).
pub fn peer_identity(der: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let cert = parse(der)?;
    identity_of(&cert)
}

/// Parses `der` as one certificate, refusing trailing bytes.
pub(crate) fn parse<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, IdentityError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(IdentityError::Malformed(format!(
            "{} bytes follow the certificate",
            rest.len()
        ))),
        Ok((_, cert)) => Ok(cert),
        Err(error) => Err(IdentityError::Malformed(error.to_string())),
    }
}

/// The identity a parsed certificate names, with the SPIFFE rules checked.
pub(crate) fn identity_of(cert: &X509Certificate<'_>) -> Result<PeerIdentity, IdentityError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|error| IdentityError::Malformed(format!("subjectAltName: {error}")))?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    for name in sans.iter().flat_map(|ext| &ext.value.general_names) {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
            _ => {}
        }
    }
    let spiffe_id = match uris.iter().find(|uri| has_spiffe_scheme(uri)) {
        None => None,
        Some(uri) => {
            check_spiffe_id(uri).map_err(|reason| IdentityError::BadSpiffeId {
                uri: (*uri).to_owned(),
                reason,
            })?;
            let id = (*uri).to_owned();
            if uris.len() > 1 {
                return Err(IdentityError::SeveralUris {
                    count: uris.len(),
                    id,
                });
            }
            let constraints = cert
                .basic_constraints()
                .map_err(|error| IdentityError::Malformed(format!("basicConstraints: {error}")))?;
            if constraints.is_some_and(|ext| ext.value.ca) {
                return Err(IdentityError::SpiffeCa { id });
            }
            Some(id)
        }
    };
    Ok(PeerIdentity::new(
        spiffe_id,
        dns_names,
        rfc4514(cert.subject()),
    ))
}

fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://"))
}

/// Checks a SPIFFE ID's syntax (SPIFFE-ID §2): `spiffe://` in lower case, a trust domain of
/// lower-case letters, digits, `.`, `-` and `_`, and a path of non-empty segments of
/// letters, digits, `.`, `-` and `_`, none of them `.` or `..`; no query or fragment.
pub fn check_spiffe_id(uri: &str) -> Result<(), &'static str> {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return Err("the scheme must be `spiffe://` in lower case");
    };
    let (domain, path) = rest
        .split_once('/')
        .map_or((rest, None), |(d, p)| (d, Some(p)));
    if domain.is_empty() {
        return Err("the trust domain is empty");
    }
    if domain.len() > 255 {
        return Err("the trust domain is longer than 255 characters");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("the trust domain may hold only lower-case letters, digits, `.`, `-` and `_`");
    }
    if uri.len() > 2048 {
        return Err("it is longer than 2048 bytes");
    }
    let Some(path) = path else {
        return Ok(());
    };
    for segment in path.split('/') {
        match segment {
            "" => return Err("the path has an empty segment (a trailing or doubled `/`)"),
            "." | ".." => return Err("the path has a `.` or `..` segment"),
            _ => {}
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err("a path segment may hold only letters, digits, `.`, `-` and `_`");
        }
    }
    Ok(())
}

/// A distinguished name as RFC 4514 writes it: RDNs last to first, separated by `,`,
/// multi-valued ones joined by `+`, known attributes by short name (`CN`, `O`), others by
/// dotted OID, values escaped; a value that is not a string as `#` and its DER in hex.
pub(crate) fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_value(value, &mut out),
                Err(_) => {
                    out.push('#');
                    for byte in attr.attr_value().to_der_vec().unwrap_or_default() {
                        out.push_str(&format!("{byte:02x}"));
                    }
                }
            }
        }
    }
    out
}

/// Escapes an attribute value as RFC 4514 §2.4 asks.
fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
        } else if special {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_test_support::tls::Ca;
    use rand::{Rng, SeedableRng};

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_spiffe_id_dns_names_and_subject_are_read() {
        let ca = Ca::root("Keel Test Root");
        let leaf = ca
            .leaf("payments")
            .dns("payments.keel.test")
            .dns("payments")
            .uri("spiffe://keel.test/ns/prod/sa/payments")
            .issue();
        let peer = peer_identity(&der(&leaf.cert_pem)).unwrap();
        assert_eq!(
            peer.spiffe_id.as_deref(),
            Some("spiffe://keel.test/ns/prod/sa/payments")
        );
        assert_eq!(peer.dns_names, ["payments.keel.test", "payments"]);
        assert_eq!(peer.subject, "CN=payments,O=Keel Test");
        assert_eq!(peer.principal(), "spiffe://keel.test/ns/prod/sa/payments");
    }

    #[test]
    fn a_plain_uri_san_is_not_an_identity() {
        let ca = Ca::root("Keel Test Root");
        let leaf = ca.leaf("web").uri("https://example.test/").issue();
        let peer = peer_identity(&der(&leaf.cert_pem)).unwrap();
        assert_eq!(peer.spiffe_id, None);
        assert_eq!(peer.principal(), "CN=web,O=Keel Test");
    }

    #[test]
    fn spiffe_rules_refuse_two_uris_and_ca_leaves() {
        let ca = Ca::root("Keel Test Root");
        let two = ca
            .leaf("two")
            .uri("spiffe://keel.test/a")
            .uri("https://example.test/")
            .issue();
        let error = peer_identity(&der(&two.cert_pem)).unwrap_err();
        assert!(
            matches!(error, IdentityError::SeveralUris { count: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("exactly one URI SAN"), "{error}");

        let ca_leaf = ca.leaf("ca").uri("spiffe://keel.test/ca").ca().issue();
        let error = peer_identity(&der(&ca_leaf.cert_pem)).unwrap_err();
        assert_eq!(
            error,
            IdentityError::SpiffeCa {
                id: "spiffe://keel.test/ca".into()
            }
        );

        let bad = ca.leaf("bad").uri("spiffe://Keel.Test/a").issue();
        let error = peer_identity(&der(&bad.cert_pem)).unwrap_err();
        assert!(
            matches!(error, IdentityError::BadSpiffeId { .. }),
            "{error}"
        );
    }

    #[test]
    fn spiffe_id_syntax() {
        for good in [
            "spiffe://keel.test",
            "spiffe://keel.test/ns/prod/sa/payments",
            "spiffe://a_b-c.9/x.y-z_",
        ] {
            assert_eq!(check_spiffe_id(good), Ok(()), "{good}");
        }
        for bad in [
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://keel.test/a",
            "spiffe://keel.test/",
            "spiffe://keel.test//a",
            "spiffe://keel.test/a/../b",
            "spiffe://keel.test/a?x=1",
            "spiffe://user@keel.test/a",
            "spiffe://keel.test:8443/a",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects_are_escaped_as_rfc_4514_says() {
        let mut out = String::new();
        escape_value(" a,b+c\\ ", &mut out);
        assert_eq!(out, "\\ a\\,b\\+c\\\\\\ ");
        let mut out = String::new();
        escape_value("#x", &mut out);
        assert_eq!(out, "\\#x");
    }

    /// Garbage, and certificates with bytes flipped or cut, are errors, never a panic.
    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let ca = Ca::root("Keel Test Root");
        let leaf = ca
            .leaf("fuzz")
            .dns("fuzz.keel.test")
            .uri("spiffe://keel.test/fuzz")
            .issue();
        let good = der(&leaf.cert_pem).to_vec();
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        for round in 0..3000 {
            let mut bytes = good.clone();
            match round % 3 {
                0 => {
                    for _ in 0..rng.random_range(1..8) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                }
                1 => bytes.truncate(rng.random_range(0..good.len())),
                _ => {
                    bytes = (0..rng.random_range(0..600))
                        .map(|_| rng.random())
                        .collect();
                }
            }
            let _ = peer_identity(&CertificateDer::from(bytes));
        }
        assert!(peer_identity(&CertificateDer::from(Vec::new())).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            peer_identity(&CertificateDer::from(trailing)),
            Err(IdentityError::Malformed(_))
        ));
    }
}
