//! What a certificate says, read with x509-parser, in the terms a person checks: subject,
//! issuer, names, validity, serial, key, and what it may be used for.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;

use crate::Error;

/// A certificate's contents, for printing and for explaining a failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject, as `CN=localhost, O=Example`.
    pub subject: String,
    /// Issuer, in the same form.
    pub issuer: String,
    /// Subject, DER-encoded without its SEQUENCE header (as a webpki trust anchor holds
    /// it), to match against another certificate's issuer.
    pub subject_der: Vec<u8>,
    /// Issuer, in the same form.
    pub issuer_der: Vec<u8>,
    /// Serial number in hex, `4f:0a:...`.
    pub serial: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// DNS name SANs.
    pub dns: Vec<String>,
    /// IP address SANs.
    pub ips: Vec<IpAddr>,
    /// URI SANs (a SPIFFE ID is one).
    pub uris: Vec<String>,
    /// Whether it is a CA (basic constraints).
    pub is_ca: bool,
    /// Whether its issuer is its subject (a root, or a self-signed leaf).
    pub self_issued: bool,
    /// Extended key usage, when the certificate restricts it: (server auth, client auth).
    pub extended_usage: Option<(bool, bool)>,
    /// The key, as `ECDSA P-256`, `Ed25519`, `RSA 2048`.
    pub key: String,
    /// The SubjectPublicKeyInfo, DER-encoded.
    pub public_key_der: Vec<u8>,
}

impl CertInfo {
    /// Every name it can be verified for, as `DNS:localhost`, `IP:127.0.0.1`,
    /// `URI:spiffe://...`.
    pub fn names(&self) -> Vec<String> {
        let dns = self.dns.iter().map(|name| format!("DNS:{name}"));
        let ips = self.ips.iter().map(|ip| format!("IP:{ip}"));
        let uris = self.uris.iter().map(|uri| format!("URI:{uri}"));
        dns.chain(ips).chain(uris).collect()
    }

    /// Where `now` falls in its validity window.
    pub fn timeliness(&self, now: SystemTime) -> Timeliness {
        let now = unix_seconds(now);
        if now < self.not_before {
            Timeliness::NotYetValid
        } else if now > self.not_after {
            Timeliness::Expired
        } else {
            Timeliness::Valid
        }
    }

    /// Whether `other` is this certificate's issuer by name.
    pub fn issued_by(&self, other: &CertInfo) -> bool {
        self.issuer_der == other.subject_der
    }
}

/// Where a moment falls in a certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeliness {
    /// Before `not_before`.
    NotYetValid,
    /// Inside the window.
    Valid,
    /// After `not_after`.
    Expired,
}

/// Reads a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| Error::BadCertificate(error.to_string()))?;
    let (mut dns, mut ips, mut uris) = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::IPAddress(octets) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*octets) {
                        ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*octets) {
                        ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    let extended_usage = match cert.extended_key_usage() {
        Ok(Some(eku)) => Some((
            eku.value.server_auth || eku.value.any,
            eku.value.client_auth || eku.value.any,
        )),
        _ => None,
    };
    let spki = cert.public_key();
    let key = match (
        spki.algorithm.algorithm.to_id_string().as_str(),
        spki.parsed(),
    ) {
        ("1.3.101.112", _) => "Ed25519".to_owned(),
        (_, Ok(PublicKey::EC(point))) => format!("ECDSA P-{}", point.key_size()),
        (_, Ok(PublicKey::RSA(rsa))) => format!("RSA {}", rsa.key_size()),
        (oid, _) => format!("key algorithm {oid}"),
    };
    let subject_der = sequence_contents(cert.subject().as_raw()).to_vec();
    let issuer_der = sequence_contents(cert.issuer().as_raw()).to_vec();
    Ok(CertInfo {
        subject: name_or_empty(cert.subject().to_string()),
        issuer: name_or_empty(cert.issuer().to_string()),
        self_issued: subject_der == issuer_der,
        subject_der,
        issuer_der,
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns,
        ips,
        uris,
        is_ca: cert.is_ca(),
        extended_usage,
        key,
        public_key_der: spki.raw.to_vec(),
    })
}

/// A distinguished name given as DER (a full `Name` SEQUENCE, as a TLS CertificateRequest
/// lists them): its text (`CN=Keel Dev CA`) and its contents, comparable with
/// [`CertInfo::issuer_der`].
pub fn read_name(der: &[u8]) -> Option<(String, Vec<u8>)> {
    use x509_parser::prelude::FromDer as _;
    let (_, name) = x509_parser::x509::X509Name::from_der(der).ok()?;
    Some((
        name_or_empty(name.to_string()),
        sequence_contents(der).to_vec(),
    ))
}

/// The contents of a DER SEQUENCE (what follows its tag and length).
fn sequence_contents(der: &[u8]) -> &[u8] {
    let header = match der.get(1) {
        Some(&length) if length < 0x80 => 2,
        Some(&length) => 2 + usize::from(length & 0x7f),
        None => return der,
    };
    der.get(header..).unwrap_or(der)
}

fn name_or_empty(name: String) -> String {
    if name.is_empty() {
        "(empty)".to_owned()
    } else {
        name
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// A moment as `2026-01-31 12:00:00 UTC`.
pub fn format_time(unix_seconds: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_seconds) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => format!("{unix_seconds} s after the Unix epoch"),
    }
}

/// A span of time in the largest unit that fits: `3 days`, `5 hours`, `40 seconds`.
pub fn format_span(seconds: i64) -> String {
    let seconds = seconds.unsigned_abs();
    let (count, unit) = match seconds {
        0..120 => (seconds, "second"),
        120..7200 => (seconds / 60, "minute"),
        7200..172_800 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(-86_400), "1969-12-31 00:00:00 UTC");
        assert_eq!(format_span(1), "1 second");
        assert_eq!(format_span(-600), "10 minutes");
        assert_eq!(format_span(3 * 86_400 + 5), "3 days");
    }
}
