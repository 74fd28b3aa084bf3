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
