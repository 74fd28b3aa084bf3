//! Resolvers: from a target to the list of backend addresses, kept fresh.
//!
//! A [`Resolver`] resolves once per call of [`Resolver::resolve`]; the channel's resolver
//! task calls it again when [`Resolver::refresh_interval`] has passed, or sooner when a
//! backend's connection fails, but never more often than [`Resolver::min_interval`]. The
//! addresses go to the balancer through a `watch` channel, only when they change; a failed
//! resolution keeps the last good list (as grpc-go does).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::target::{Address, Target, parse_address};

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Finds the addresses of a target's backends. Implement it for service discovery Keel
/// does not know (a registry, an API) and pass it to
/// [`super::ChannelBuilder::resolver`].
pub trait Resolver: Send + 'static {
    /// The current addresses, or why they cannot be known.
    fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>>;

    /// How long a resolution stays fresh; `None` for lists that never change.
    fn refresh_interval(&self) -> Option<Duration>;

    /// The shortest time between two resolutions, however often they are asked for.
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }
}

/// Re-resolution settings for DNS targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsSettings {
    /// Resolve again this often (default 30 s).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Resolve at most this often, also after connection failures (default 30 s, as
    /// grpc-go's DNS resolver).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(30),
        }
    }
}

/// How often an address file is read again (it is small; reading it is cheaper than
/// watching it with inotify, and works on every file system).
const FILE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The resolver Keel uses for `target`.
pub(crate) fn for_target(target: &Target, dns: DnsSettings) -> Box<dyn Resolver> {
    match target {
        Target::Dns { host, port } => Box::new(Dns {
            host: host.clone(),
            port: *port,
            settings: dns,
        }),
        Target::Static(addresses) => Box::new(Fixed(addresses.clone())),
        Target::Unix(path) => Box::new(Fixed(vec![Address::Unix(path.clone())])),
        Target::File(path) => Box::new(AddressFile(path.clone())),
    }
}

/// A list that never changes.
struct Fixed(Vec<Address>);

impl Resolver for Fixed {
    fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>> {
        let addresses = self.0.clone();
        Box::pin(async move { Ok(addresses) })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        None
    }
}

/// A host name through the system resolver (`getaddrinfo`).
struct Dns {
    host: String,
    port: u16,
    settings: DnsSettings,
}

impl Resolver for Dns {
    fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|error| format!("resolving {}: {error}", self.host))?;
            let mut addresses: Vec<Address> = Vec::new();
            for addr in found {
                let address = Address::Tcp(addr);
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            if addresses.is_empty() {
                return Err(format!("{} has no addresses", self.host));
            }
            Ok(addresses)
        })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.settings.refresh_interval)
    }

    fn min_interval(&self) -> Duration {
        self.settings.min_interval
    }
}

/// A file of addresses, one per line (`ip:port`, `[v6]:port` or `unix:/path`); blank lines
/// and `#` comments are skipped.
struct AddressFile(PathBuf);

impl Resolver for AddressFile {
    fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>> {
        let path = self.0.clone();
        Box::pin(async move {
            let shown = path.display().to_string();
            let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
                .await
                .map_err(|error| format!("reading {shown}: {error}"))?
                .map_err(|error| format!("reading {shown}: {error}"))?;
            parse_address_file(&text).map_err(|error| format!("{shown}: {error}"))
        })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(FILE_POLL_INTERVAL)
    }
}

/// The addresses of an address file's text.
fn parse_address_file(text: &str) -> Result<Vec<Address>, String> {
    let mut addresses = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let address =
            parse_address(line).map_err(|error| format!("line {}: {error}", number + 1))?;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err("lists no addresses".to_owned());
    }
    Ok(addresses)
}

/// What the balancer is told: the addresses, and the last resolution error if the list is
/// empty because of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Resolution {
    pub(crate) addresses: Vec<Address>,
    pub(crate) error: Option<String>,
}

/// Resolves until every receiver of `out` is gone: again after the refresh interval, and
/// when `refresh` is notified (no sooner than the minimum interval after the last time).
pub(crate) async fn run(
    mut resolver: Box<dyn Resolver>,
    out: watch::Sender<Resolution>,
    refresh: Arc<Notify>,
    target: String,
) {
    loop {
        let resolved_at = Instant::now();
        let outcome = tokio::select! {
            outcome = resolver.resolve() => outcome,
            () = out.closed() => return,
        };
        match outcome {
            Ok(addresses) => {
                out.send_if_modified(|current| {
                    let next = Resolution {
                        addresses,
                        error: None,
                    };
                    let changed = *current != next;
                    if changed {
                        tracing::debug!(target = %target, addresses = ?next.addresses, "resolved");
                        *current = next;
                    }
                    changed
                });
            }
            Err(error) => {
                tracing::warn!(target = %target, %error, "resolving failed; keeping the last addresses");
                out.send_if_modified(|current| {
                    if current.addresses.is_empty() && current.error.as_ref() != Some(&error) {
                        current.error = Some(error);
                        true
                    } else {
                        false
                    }
                });
            }
        }
        let Some(interval) = resolver.refresh_interval() else {
            // Nothing will change: wait for the channel to go away.
            out.closed().await;
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = refresh.notified() => {
                tokio::time::sleep_until(resolved_at + resolver.min_interval()).await;
            }
            () = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_files_skip_comments_and_name_bad_lines() {
        let text =
            "# backends\n127.0.0.1:1\n\n  127.0.0.2:2  # second\nunix:/run/s.sock\n127.0.0.1:1\n";
        assert_eq!(
            parse_address_file(text).unwrap(),
            vec![
                Address::Tcp("127.0.0.1:1".parse().unwrap()),
                Address::Tcp("127.0.0.2:2".parse().unwrap()),
                Address::Unix("/run/s.sock".into()),
            ]
        );
        let error = parse_address_file("127.0.0.1:1\nbackend-2\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        assert!(
            parse_address_file("# none\n")
                .unwrap_err()
                .contains("no addresses")
        );
    }

    #[tokio::test]
    async fn dns_finds_localhost_and_explains_failures() {
        let mut dns = Dns {
            host: "localhost".into(),
            port: 7,
            settings: DnsSettings::default(),
        };
        let found = dns.resolve().await.unwrap();
        assert!(
            found.iter().all(
                |a| matches!(a, Address::Tcp(addr) if addr.port() == 7 && addr.ip().is_loopback())
            ),
            "{found:?}"
        );
        let mut missing = Dns {
            host: "no-such-host.invalid".into(),
            port: 7,
            settings: DnsSettings::default(),
        };
        let error = missing.resolve().await.unwrap_err();
        assert!(error.contains("no-such-host.invalid"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_requests_wait_for_the_minimum_interval() {
        struct Counting(Arc<std::sync::atomic::AtomicUsize>);
        impl Resolver for Counting {
            fn resolve(&mut self) -> BoxFuture<'_, Result<Vec<Address>, String>> {
                let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u16;
                Box::pin(async move { Ok(vec![Address::Tcp(([127, 0, 0, 1], n + 1).into())]) })
            }
            fn refresh_interval(&self) -> Option<Duration> {
                Some(Duration::from_secs(100))
            }
            fn min_interval(&self) -> Duration {
                Duration::from_secs(10)
            }
        }
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut rx) = watch::channel(Resolution::default());
        let refresh = Arc::new(Notify::new());
        tokio::spawn(run(
            Box::new(Counting(count.clone())),
            tx,
            refresh.clone(),
            "t".into(),
        ));
        rx.changed().await.unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

        let asked = Instant::now();
        refresh.notify_one();
        rx.changed().await.unwrap();
        assert!(
            asked.elapsed() >= Duration::from_secs(10),
            "{:?}",
            asked.elapsed()
        );
        assert!(
            asked.elapsed() < Duration::from_secs(11),
            "{:?}",
            asked.elapsed()
        );

        let waited = Instant::now();
        rx.changed().await.unwrap();
        assert!(
            waited.elapsed() >= Duration::from_secs(100),
            "the refresh interval"
        );
        drop(rx);
    }
}
