//! SPIFFE IDs, checked by the rules of the SPIFFE ID specification (SPIFFE-ID.md) and of
//! X.509 SVIDs: `spiffe://trust-domain/path`, lowercase scheme and trust domain, path
//! segments of letters, digits, `.`, `-` and `_`, and a non-empty path for a workload.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The longest SPIFFE ID the specification allows, in bytes (that of a URI SAN).
const MAX_ID_BYTES: usize = 2048;
/// The longest trust domain the specification allows, in bytes.
const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// A workload's SPIFFE ID, e.g. `spiffe://keel.test/payments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    path_start: usize,
}

impl SpiffeId {
    /// Checks `id` against the specification; the error says which rule it breaks.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidSpiffeId {
            id: id.to_owned(),
            reason,
        };
        if id.len() > MAX_ID_BYTES {
            return Err(invalid(format!("longer than {MAX_ID_BYTES} bytes")));
        }
        let Some(rest) = id.strip_prefix("spiffe://") else {
            return Err(invalid(
                "must start with spiffe:// (lowercase), as in spiffe://example.org/service".into(),
            ));
        };
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if trust_domain.is_empty() {
            return Err(invalid(
                "the trust domain (after spiffe://) is empty".into(),
            ));
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN_BYTES {
            return Err(invalid(format!(
                "the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
            )));
        }
        if let Some(bad) = trust_domain
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            let why = match bad {
                ':' => "a port".to_owned(),
                '@' => "user info".to_owned(),
                'A'..='Z' => format!("{bad:?} (trust domains are lowercase)"),
                _ => format!("{bad:?}"),
            };
            return Err(invalid(format!(
                "the trust domain {trust_domain:?} may hold only lowercase letters, digits, \
                 '.', '-' and '_', not {why}"
            )));
        }
        if path.is_empty() || path == "/" {
            return Err(invalid(
                "a workload's ID needs a path after the trust domain, as in spiffe://example.org/service"
                    .into(),
            ));
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() {
                return Err(invalid(
                    "the path has an empty segment (// or a trailing /)".into(),
                ));
            }
            if segment == "." || segment == ".." {
                return Err(invalid(format!(
                    "the path may not have a {segment:?} segment"
                )));
            }
            if let Some(bad) = segment
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
            {
                let why = match bad {
                    '?' => "a query ('?')".to_owned(),
                    '#' => "a fragment ('#')".to_owned(),
                    '%' => "percent-encoding ('%')".to_owned(),
                    _ => format!("{bad:?}"),
                };
                return Err(invalid(format!(
                    "path segments may hold only letters, digits, '.', '-' and '_', not {why}"
                )));
            }
        }
        Ok(Self {
            id: id.to_owned(),
            path_start: "spiffe://".len() + trust_domain.len(),
        })
    }

    /// The trust domain, e.g. `keel.test`.
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.path_start]
    }

    /// The path, e.g. `/payments`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(id: &str) -> Result<Self, Error> {
        Self::parse(id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_split_into_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://keel.test/payments/v1").unwrap();
        assert_eq!(id.trust_domain(), "keel.test");
        assert_eq!(id.path(), "/payments/v1");
        SpiffeId::parse("spiffe://a-b_c.9/Ns.x-y_z").unwrap();
    }

    #[test]
    fn every_rule_is_enforced_with_its_reason() {
        let cases = [
            ("http://keel.test/x", "must start with spiffe://"),
            ("SPIFFE://keel.test/x", "must start with spiffe://"),
            ("spiffe:///x", "trust domain (after spiffe://) is empty"),
            ("spiffe://Keel.test/x", "trust domains are lowercase"),
            ("spiffe://keel.test:8443/x", "a port"),
            ("spiffe://user@keel.test/x", "user info"),
            ("spiffe://keel.test", "needs a path"),
            ("spiffe://keel.test/", "needs a path"),
            ("spiffe://keel.test/a//b", "empty segment"),
            ("spiffe://keel.test/a/", "empty segment"),
            ("spiffe://keel.test/a/../b", "\"..\" segment"),
            ("spiffe://keel.test/./b", "\".\" segment"),
            ("spiffe://keel.test/a?b", "a query"),
            ("spiffe://keel.test/a#b", "a fragment"),
            ("spiffe://keel.test/a%20b", "percent-encoding"),
            ("spiffe://keel.test/a b", "' '"),
        ];
        for (id, reason) in cases {
            let error = SpiffeId::parse(id).unwrap_err().to_string();
            assert!(error.contains(reason), "{id}: {error}");
            assert!(error.contains(id), "{id}: {error}");
        }
        let long = format!("spiffe://{}/x", "a".repeat(256));
        assert!(
            SpiffeId::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("255")
        );
    }
}
