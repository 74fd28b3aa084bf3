//! Thread-per-core serving: a listener served by N threads, each a current-thread Tokio
//! runtime accepting on a socket of its own, all bound to the one port with `SO_REUSEPORT`.
//!
//! The kernel spreads new connections over the sockets (by a hash of the connection's
//! addresses), and a connection lives on the thread that accepted it: its requests are polled
//! there, with no work stealing and no wake-ups across threads. Each thread runs the same
//! accept loop and connection driver as the shared runtime does ([`accept::run`]), with
//! `max_connections` split between the threads (each takes `ceil(limit / N)`), so every limit,
//! timeout, drain and metric holds as on one socket. Linux lets only processes of the same
//! user bind a port already bound with `SO_REUSEPORT`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use super::accept::{self, Accepted};
use super::connection::Shared;
use super::{ListenerConfig, ListenerReport, ListenerService, ResponseBody};

/// Pending connections the kernel queues per socket, as `TcpListener::bind` does.
const BACKLOG: u32 = 1024;

/// One thread's socket and runtime, made at bind so that failures show there.
#[derive(Debug)]
pub(super) struct Shard {
    socket: std::net::TcpListener,
    runtime: tokio::runtime::Runtime,
}

impl Shard {
    /// The address its socket is bound to.
    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds `threads` sockets to `addr` (port 0: the port the first one got) and builds their
/// runtimes.
pub(super) fn bind(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<Shard>> {
    let mut addr = addr;
    let mut shards = Vec::with_capacity(threads);
    for _ in 0..threads {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        // Registered with the caller's runtime here, then taken back: each thread registers
        // its socket with its own runtime.
        let socket = socket.listen(BACKLOG)?.into_std()?;
        addr = socket.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        shards.push(Shard { socket, runtime });
    }
    Ok(shards)
}

/// Serves every shard on a thread of its own until each has closed; the report sums theirs.
pub(super) async fn serve<S, B>(
    shards: Vec<Shard>,
    shared: impl Fn(ListenerConfig) -> Arc<Shared<S>>,
    config: &ListenerConfig,
) -> ListenerReport
where
    S: ListenerService<B>,
    B: ResponseBody,
{
    let threads = shards.len();
    let mut per_thread = config.clone();
    let limit = config.connection.max_connections;
    per_thread.connection.max_connections = limit.div_ceil(threads.max(1));
    let mut reports = Vec::with_capacity(threads);
    for (index, Shard { socket, runtime }) in shards.into_iter().enumerate() {
        let shared = shared(per_thread.clone());
        let (report, reported) = oneshot::channel();
        let name = format!("keel-{}-{index}", config.name);
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let accepted = runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(tcp) => accept::run(tcp, shared).await,
                        Err(error) => {
                            tracing::error!(thread = name, %error, "cannot serve the socket");
                            Accepted::default()
                        }
                    }
                });
                let _ = report.send(accepted);
            });
        match spawned {
            Ok(_) => reports.push(reported),
            Err(error) => {
                tracing::error!(listener = config.name, %error, "cannot start a serving thread");
            }
        }
    }
    let mut total = ListenerReport::default();
    let mut cut_at_close = 0;
    for reported in reports {
        let Ok(accepted) = reported.await else {
            continue;
        };
        let report = accepted.report;
        total.drained += report.drained;
        total.failed += report.failed;
        total.forced += report.forced;
        total.cut += report.cut;
        // Each thread read the same listener-wide gauge when it closed by force.
        cut_at_close = cut_at_close.max(accepted.cut_at_close);
    }
    total.cut += cut_at_close;
    total
}
