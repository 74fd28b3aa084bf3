//! Verifies a presented chain with webpki, as rustls does, and says *why* it fails: which
//! certificate expired, which issuer nobody has, which names a certificate holds instead of
//! the one asked for.

use std::fmt;
use std::time::SystemTime;

use rustls_pki_types::{
    CertificateDer, ServerName, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use webpki::{EndEntityCert, KeyUsage};

use crate::inspect::{CertInfo, Timeliness, format_span, format_time, inspect, unix_seconds};

/// What a certificate is verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A server's certificate (extended key usage serverAuth, when restricted).
    Server,
    /// A client's certificate (clientAuth).
    Client,
}

impl Purpose {
    fn usage(self) -> KeyUsage {
        match self {
            Self::Server => KeyUsage::server_auth(),
            Self::Client => KeyUsage::client_auth(),
        }
    }

    fn words(self) -> &'static str {
        match self {
            Self::Server => "server authentication (extended key usage serverAuth)",
            Self::Client => "client authentication (extended key usage clientAuth)",
        }
    }
}

/// One reason a presented chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// No certificate was presented.
    Empty,
    /// A certificate could not be parsed.
    Unreadable {
        /// Its position in the chain (0 = leaf).
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A certificate's validity ended.
    Expired {
        /// Its position in the chain (0 = leaf).
        index: usize,
        /// Its subject.
        subject: String,
        /// End of validity (Unix seconds).
        not_after: i64,
        /// The time of verification (Unix seconds).
        now: i64,
    },
    /// A certificate's validity has not begun.
    NotYetValid {
        /// Its position in the chain (0 = leaf).
        index: usize,
        /// Its subject.
        subject: String,
        /// Start of validity (Unix seconds).
        not_before: i64,
        /// The time of verification (Unix seconds).
        now: i64,
    },
    /// The leaf is self-signed and not a trusted root.
    SelfSigned {
        /// Its subject.
        subject: String,
    },
    /// The chain ends at a root that is not trusted.
    UntrustedRoot {
        /// The root's subject.
        subject: String,
    },
    /// The chain's top certificate names an issuer that is neither presented nor trusted:
    /// a missing intermediate, or a CA that is not trusted.
    UnknownIssuer {
        /// The top certificate's subject.
        subject: String,
        /// The issuer it names.
        issuer: String,
        /// Whether only the leaf was presented (no intermediate at all).
        leaf_only: bool,
    },
    /// A trusted CA has the issuer's name but did not sign the certificate: a different
    /// CA of the same name (a regenerated development CA, typically).
    DifferentKey {
        /// The issuer's name.
        issuer: String,
    },
    /// The leaf is not valid for the name asked for.
    NameMismatch {
        /// The name asked for.
        expected: String,
        /// The names the leaf holds (`DNS:...`, `IP:...`, `URI:...`).
        presented: Vec<String>,
    },
    /// A certificate's extended key usage excludes the purpose.
    WrongPurpose {
        /// Its subject.
        subject: String,
        /// What it was verified for.
        purpose: Purpose,
    },
    /// The leaf is a CA certificate.
    CaAsLeaf {
        /// Its subject.
        subject: String,
    },
    /// Any other failure webpki reports.
    Other(String),
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "no certificate was presented"),
            Self::Unreadable { index, reason } => {
                write!(f, "certificate {index} cannot be read: {reason}")
            }
            Self::Expired {
                index,
                subject,
                not_after,
                now,
            } => write!(
                f,
                "expired: {} \"{subject}\" was valid until {}, {} ago (now: {})",
                position(*index),
                format_time(*not_after),
                format_span(now - not_after),
                format_time(*now)
            ),
            Self::NotYetValid {
                index,
                subject,
                not_before,
                now,
            } => write!(
                f,
                "not yet valid: {} \"{subject}\" is valid from {}, {} from now (now: {}; \
                 is a clock wrong?)",
                position(*index),
                format_time(*not_before),
                format_span(not_before - now),
                format_time(*now)
            ),
            Self::SelfSigned { subject } => write!(
                f,
                "self-signed: the certificate \"{subject}\" signed itself, and it is not among \
                 the trusted roots"
            ),
            Self::UntrustedRoot { subject } => write!(
                f,
                "untrusted root: the chain ends at the root CA \"{subject}\", which is not \
                 among the trusted roots"
            ),
            Self::UnknownIssuer {
                subject,
                issuer,
                leaf_only: true,
            } => write!(
                f,
                "unknown issuer: \"{subject}\" was issued by \"{issuer}\", which is neither in \
                 the chain presented (it holds only the leaf) nor among the trusted roots: a \
                 missing intermediate, or a CA that is not trusted"
            ),
            Self::UnknownIssuer {
                subject, issuer, ..
            } => write!(
                f,
                "unknown issuer: the chain presented ends at \"{subject}\", issued by \
                 \"{issuer}\", which is not among the trusted roots"
            ),
            Self::DifferentKey { issuer } => write!(
                f,
                "wrong CA: a trusted CA is named \"{issuer}\", but it did not sign this chain; \
                 another CA of the same name did (was the CA made again?)"
            ),
            Self::NameMismatch {
                expected,
                presented,
            } => {
                let names = if presented.is_empty() {
                    "none (no subject alternative names)".to_owned()
                } else {
                    presented.join(", ")
                };
                write!(
                    f,
                    "name mismatch: the certificate is not valid for \"{expected}\"; its names: \
                     {names}"
                )
            }
            Self::WrongPurpose { subject, purpose } => write!(
                f,
                "wrong purpose: \"{subject}\" is not for {}",
                purpose.words()
            ),
            Self::CaAsLeaf { subject } => write!(
                f,
                "CA as leaf: \"{subject}\" is a CA certificate, presented where a server or \
                 client certificate belongs"
            ),
            Self::Other(reason) => write!(f, "the chain does not verify: {reason}"),
        }
    }
}

fn position(index: usize) -> String {
    match index {
        0 => "the certificate".to_owned(),
        n => format!("chain certificate {n}"),
    }
}

/// The signature algorithms webpki checks with ring: what rustls's ring provider accepts.
fn algorithms() -> [&'static dyn SignatureVerificationAlgorithm; 14] {
    use webpki::ring::*;
    [
        ECDSA_P256_SHA256,
        ECDSA_P256_SHA384,
        ECDSA_P384_SHA256,
        ECDSA_P384_SHA384,
        ED25519,
        RSA_PKCS1_2048_8192_SHA256,
        RSA_PKCS1_2048_8192_SHA384,
        RSA_PKCS1_2048_8192_SHA512,
        RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    ]
}

/// Trust anchors from CA certificates (a `--ca` bundle), skipping any webpki cannot use.
pub fn trust_anchors(certs: &[CertificateDer<'_>]) -> Vec<TrustAnchor<'static>> {
    certs
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .map(|anchor| anchor.to_owned())
        .collect()
}

/// Verifies `chain` (leaf first, then intermediates) against the trusted `roots` for
/// `purpose` at `now`, and the leaf against `name` when given. Returns every problem found
/// (none: the chain is good). Validity is checked for each presented certificate, and the
/// path is checked at a moment they are all valid, so an expired certificate from an
/// untrusted CA shows both problems.
pub fn check_chain(
    chain: &[CertificateDer<'_>],
    roots: &[TrustAnchor<'_>],
    purpose: Purpose,
    name: Option<&ServerName<'_>>,
    now: SystemTime,
) -> Vec<ChainProblem> {
    let Some(leaf) = chain.first() else {
        return vec![ChainProblem::Empty];
    };
    let mut infos = Vec::with_capacity(chain.len());
    for (index, der) in chain.iter().enumerate() {
        match inspect(der) {
            Ok(info) => infos.push(info),
            Err(error) => {
                return vec![ChainProblem::Unreadable {
                    index,
                    reason: error.to_string(),
                }];
            }
        }
    }
    let root_names: Vec<&[u8]> = roots.iter().map(|root| root.subject.as_ref()).collect();
    let mut problems = Vec::new();
    let now_seconds = unix_seconds(now);
    for (index, info) in infos.iter().enumerate() {
        match info.timeliness(now) {
            Timeliness::Valid => {}
            Timeliness::Expired => problems.push(ChainProblem::Expired {
                index,
                subject: info.subject.clone(),
                not_after: info.not_after,
                now: now_seconds,
            }),
            Timeliness::NotYetValid => problems.push(ChainProblem::NotYetValid {
                index,
                subject: info.subject.clone(),
                not_before: info.not_before,
                now: now_seconds,
            }),
        }
    }
    let at = if problems.is_empty() {
        now_seconds
    } else {
        moment_all_valid(&infos).unwrap_or(now_seconds)
    };
    let end_entity = match EndEntityCert::try_from(leaf) {
        Ok(cert) => cert,
        Err(error) => {
            problems.push(ChainProblem::Other(error.to_string()));
            return problems;
        }
    };
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.max(0) as u64));
    let verified = end_entity.verify_for_usage(
        &algorithms(),
        roots,
        &chain[1..],
        time,
        purpose.usage(),
        None,
        None,
    );
    #[allow(deprecated, reason = "webpki may still report the old EKU variant")]
    match verified {
        Ok(_) => {}
        Err(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => {
            problems.push(explain_issuer(&infos, &root_names));
        }
        Err(webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_)) => {
            let wanted = |usage: (bool, bool)| match purpose {
                Purpose::Server => usage.0,
                Purpose::Client => usage.1,
            };
            let culprit = infos
                .iter()
                .find(|info| info.extended_usage.is_some_and(|usage| !wanted(usage)))
                .unwrap_or(&infos[0]);
            problems.push(ChainProblem::WrongPurpose {
                subject: culprit.subject.clone(),
                purpose,
            });
        }
        Err(webpki::Error::CaUsedAsEndEntity) => problems.push(ChainProblem::CaAsLeaf {
            subject: infos[0].subject.clone(),
        }),
        // Already reported per certificate above.
        Err(webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })
            if at != now_seconds => {}
        Err(error) => problems.push(ChainProblem::Other(error.to_string())),
    }
    if let Some(name) = name {
        if end_entity.verify_is_valid_for_subject_name(name).is_err() {
            problems.push(ChainProblem::NameMismatch {
                expected: name.to_str().into_owned(),
                presented: infos[0].names(),
            });
        }
    }
    problems
}

/// A moment (Unix seconds) when every certificate is valid, if there is one.
fn moment_all_valid(infos: &[CertInfo]) -> Option<i64> {
    let start = infos.iter().map(|info| info.not_before).max()?;
    let end = infos.iter().map(|info| info.not_after).min()?;
    (start <= end).then_some(start)
}

/// Why no path to a trusted root was found, from the names in the chain and the roots.
fn explain_issuer(infos: &[CertInfo], roots: &[&[u8]]) -> ChainProblem {
    // Climb from the leaf through the presented certificates, by name.
    let mut top = 0;
    let mut climbed = vec![0];
    while !infos[top].self_issued {
        let Some(next) = (0..infos.len())
            .find(|&index| !climbed.contains(&index) && infos[top].issued_by(&infos[index]))
        else {
            break;
        };
        climbed.push(next);
        top = next;
    }
    let reached = &infos[top];
    if reached.self_issued {
        if roots.contains(&reached.subject_der.as_slice()) {
            ChainProblem::DifferentKey {
                issuer: reached.subject.clone(),
            }
        } else if top == 0 {
            ChainProblem::SelfSigned {
                subject: reached.subject.clone(),
            }
        } else {
            ChainProblem::UntrustedRoot {
                subject: reached.subject.clone(),
            }
        }
    } else if roots.contains(&reached.issuer_der.as_slice()) {
        ChainProblem::DifferentKey {
            issuer: reached.issuer.clone(),
        }
    } else {
        ChainProblem::UnknownIssuer {
            subject: reached.subject.clone(),
            issuer: reached.issuer.clone(),
            leaf_only: infos.len() == 1,
        }
    }
}
