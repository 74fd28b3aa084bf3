//! Helpers the workspace's tests share, used as a dev-dependency only: a bounded poll on a
//! condition (the way a test waits on an event it cannot be told about), a lookup of one
//! series in a Prometheus text exposition, a plain HTTP/1.1 GET through hyper's client, and
//! test certificates ([`tls`]).

pub mod tls;

/// A fresh temporary directory, removed on drop (also used for test certificates).
pub use tls::Dir;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How often a bounded poll looks again.
pub const POLL: Duration = Duration::from_millis(10);

/// A bounded poll: looks at `done` every [`POLL`] until it holds, and fails the test with
/// `what` if it does not within `within`.
pub async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    eventually_async(what, within, || std::future::ready(done())).await;
}

/// [`eventually`] for a check that must make calls: runs `check` until it says true,
/// pausing [`POLL`] between runs, at most `within`.
pub async fn eventually_async<F: Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let polled = tokio::time::timeout(within, async {
        while !check().await {
            // sleep: the poll's interval; what the test waits for is `check`
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "not within {within:?}: {what}");
}

/// The value of `series` (name plus optional `{labels}`, exactly as rendered) in a
/// Prometheus text exposition; `None` if no sample line has it.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.trim().parse().ok())?
    })
}

/// GETs `path` from `addr` over HTTP/1.1 on a fresh connection; the status code and the
/// body (decoded from whatever framing the server chose).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("connect {addr}: {error}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a GET request");
    let response = sender.send_request(request).await.expect("HTTP response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("HTTP body")
        .to_bytes();
    drop(sender);
    connection.abort();
    (status, String::from_utf8_lossy(&body).into_owned())
}
