//! A TCP proxy in front of the test PostgreSQL that a test takes down and brings back, to play
//! a database outage: while down, live connections are cut and new ones refused.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// The proxy; listening on `127.0.0.1:port()` while up.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    /// Starts a proxy to `target` on an ephemeral loopback port (inside a Tokio runtime).
    pub fn start(target: SocketAddr) -> Self {
        let mut proxy = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            target,
            running: Mutex::new(None),
        };
        proxy.addr = proxy.listen(proxy.addr);
        proxy
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cuts every connection and stops listening.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(task) = running {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        self.listen(self.addr);
    }

    fn listen(&self, addr: SocketAddr) -> SocketAddr {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let bound = listener.local_addr().unwrap();
        let target = self.target;
        // One task owns the listener and every connection: aborting it cuts them all.
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.running.lock().unwrap() = Some(task);
        bound
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.running.get_mut().unwrap().take() {
            task.abort();
        }
    }
}

/// A fresh PostgreSQL test database whose store connects through a new proxy, so the test can
/// take the database "down" with [`Proxy::stop`]; the fixture's own checks connect directly.
/// Connections are given up after 500 ms, so an outage is reported quickly.
pub async fn postgres_behind_proxy() -> (Proxy, super::TestDb) {
    use std::str::FromStr;
    let admin = sqlx::postgres::PgConnectOptions::from_str(&super::postgres_admin_url()).unwrap();
    let target = tokio::net::lookup_host((admin.get_host(), admin.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target);
    let config = payments::store::StoreConfig::default()
        .acquire_timeout(std::time::Duration::from_millis(500));
    let port = proxy.port();
    let db = super::TestDb::reached_by(super::Backend::Postgres, |url| via_port(url, port), config)
        .await;
    (proxy, db)
}

/// The URL `url` with its host and port replaced by 127.0.0.1:`port`.
fn via_port(url: &str, port: u16) -> String {
    let authority_start = url.find("://").unwrap() + 3;
    let host_start = url[authority_start..]
        .find('@')
        .map_or(authority_start, |at| authority_start + at + 1);
    let host_end = host_start + url[host_start..].find('/').unwrap();
    format!("{}127.0.0.1:{port}{}", &url[..host_start], &url[host_end..])
}
