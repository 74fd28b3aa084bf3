//! Channel targets: what a `keel_client::Channel` is built from, and the addresses a
//! resolver produces.
//!
//! | target | resolves to |
//! |---|---|
//! | `dns:///host:port` (also `host:port`, `http://host:port`) | the host's A/AAAA records, re-resolved |
//! | `static:///10.0.0.1:50051,10.0.0.2:50051` | that fixed list |
//! | `file:///etc/keel/backends` | the addresses in the file, one per line (`#` comments), watched |
//! | `unix:///run/app.sock` (also `unix:/run/app.sock`) | a Unix domain socket |

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One backend's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A parsed target: how to find the backends, and the `:authority` calls carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DNS name (or IP literal) and port.
    Dns {
        /// The host name or IP literal.
        host: String,
        /// The port.
        port: u16,
    },
    /// A fixed list of addresses.
    Static(Vec<Address>),
    /// A file listing addresses, watched for changes.
    File(PathBuf),
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// A target that cannot be used, saying what was expected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid target {target:?}: {reason}")]
pub struct TargetError {
    target: String,
    reason: String,
}

impl Target {
    /// Parses `dns:///host:port`, `static:///a:1,b:2`, `file:///path`, `unix:///path`,
    /// `unix:path`, `http://host:port` or plain `host:port`.
    pub fn parse(target: &str) -> Result<Self, TargetError> {
        let error = |reason: &str| TargetError {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = match target.split_once(':') {
            Some((scheme, rest))
                if matches!(scheme, "dns" | "static" | "file" | "unix" | "http") =>
            {
                (scheme, rest)
            }
            _ => ("", target),
        };
        match scheme {
            "dns" | "http" => {
                // dns:///host:port, dns://authority/host:port (the DNS server is not
                // configurable: the system resolver is used), http://host:port.
                let rest = rest.strip_prefix("//").ok_or_else(|| {
                    error("write dns:///host:port (three slashes) or http://host:port")
                })?;
                let host_port = if scheme == "dns" {
                    rest.split_once('/').map_or(rest, |(_, after)| after)
                } else {
                    rest.trim_end_matches('/')
                };
                let (host, port) = split_host_port(host_port)
                    .ok_or_else(|| error("expected host:port, e.g. dns:///payments:50051"))?;
                Ok(Self::Dns { host, port })
            }
            "static" => {
                let list = rest.trim_start_matches('/');
                let addresses = list
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| parse_address(item).map_err(|reason| error(&reason)))
                    .collect::<Result<Vec<_>, _>>()?;
                if addresses.is_empty() {
                    return Err(error("static:/// needs at least one ip:port"));
                }
                Ok(Self::Static(addresses))
            }
            "file" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(error("write file:///absolute/path"));
                }
                Ok(Self::File(PathBuf::from(path)))
            }
            "unix" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(error("write unix:///path/to/socket"));
                }
                Ok(Self::Unix(PathBuf::from(path)))
            }
            _ => {
                let (host, port) = split_host_port(rest).ok_or_else(|| {
                    error(
                        "expected host:port, dns:///host:port, static:///ip:port,..., \
                         file:///path or unix:///path",
                    )
                })?;
                Ok(Self::Dns { host, port })
            }
        }
    }

    /// The `:authority` calls carry by default: the host and port for DNS targets,
    /// `localhost` otherwise.
    pub fn authority(&self) -> String {
        match self {
            Self::Dns { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Self::Dns { host, port } => format!("{host}:{port}"),
            Self::Static(addresses) if addresses.len() == 1 => addresses[0].to_string(),
            _ => "localhost".to_owned(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns { .. } => write!(f, "dns:///{}", self.authority()),
            Self::Static(addresses) => {
                f.write_str("static:///")?;
                for (i, address) in addresses.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    address.fmt(f)?;
                }
                Ok(())
            }
            Self::File(path) => write!(f, "file://{}", path.display()),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_owned(), port))
}

/// One address of a static list or an address file: `ip:port`, `[v6]:port` or
/// `unix:/path`.
pub(crate) fn parse_address(text: &str) -> Result<Address, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = path.trim_start_matches("//");
        return if path.is_empty() {
            Err(format!("{text:?} names no socket path"))
        } else {
            Ok(Address::Unix(PathBuf::from(path)))
        };
    }
    text.parse::<SocketAddr>()
        .map(Address::Tcp)
        .map_err(|_| format!("{text:?} is not ip:port (static lists take IP addresses)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(text: &str) -> Address {
        Address::Tcp(text.parse().unwrap())
    }

    #[test]
    fn every_form_parses() {
        let dns = |host: &str, port| Target::Dns {
            host: host.into(),
            port,
        };
        assert_eq!(
            Target::parse("dns:///api:50051").unwrap(),
            dns("api", 50051)
        );
        assert_eq!(
            Target::parse("dns://8.8.8.8/api.example:443").unwrap(),
            dns("api.example", 443)
        );
        assert_eq!(Target::parse("api:1").unwrap(), dns("api", 1));
        assert_eq!(
            Target::parse("http://127.0.0.1:8/").unwrap(),
            dns("127.0.0.1", 8)
        );
        assert_eq!(Target::parse("[::1]:9").unwrap(), dns("::1", 9));
        assert_eq!(
            Target::parse("static:///127.0.0.1:1, 127.0.0.2:2,[::1]:3").unwrap(),
            Target::Static(vec![tcp("127.0.0.1:1"), tcp("127.0.0.2:2"), tcp("[::1]:3")])
        );
        assert_eq!(
            Target::parse("file:///etc/backends").unwrap(),
            Target::File("/etc/backends".into())
        );
        assert_eq!(
            Target::parse("unix:///run/a.sock").unwrap(),
            Target::Unix("/run/a.sock".into())
        );
        assert_eq!(
            Target::parse("unix:/run/a.sock").unwrap(),
            Target::Unix("/run/a.sock".into())
        );
    }

    #[test]
    fn mistakes_say_what_to_write() {
        for (target, hint) in [
            ("dns:api:1", "three slashes"),
            ("static:///", "at least one"),
            ("static:///api:1", "IP addresses"),
            ("file://relative", "absolute"),
            ("unix://", "socket"),
            ("api", "host:port"),
            ("api:http", "host:port"),
            ("", "host:port"),
        ] {
            let error = Target::parse(target).unwrap_err().to_string();
            assert!(error.contains(hint), "{target:?}: {error}");
        }
    }

    #[test]
    fn authorities_and_display_round_trip() {
        for text in [
            "dns:///api:50051",
            "dns:///[::1]:9",
            "static:///127.0.0.1:1,127.0.0.2:2",
            "file:///etc/backends",
            "unix:///run/a.sock",
        ] {
            let target = Target::parse(text).unwrap();
            assert_eq!(target.to_string(), text);
            assert_eq!(Target::parse(&target.to_string()).unwrap(), target);
        }
        assert_eq!(Target::parse("api:1").unwrap().authority(), "api:1");
        assert_eq!(Target::parse("[::1]:9").unwrap().authority(), "[::1]:9");
        assert_eq!(Target::parse("unix:/a").unwrap().authority(), "localhost");
    }
}
