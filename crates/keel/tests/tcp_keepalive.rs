//! `connection.tcp_keepalive` as the kernel sees it: the server's side of a real connection
//! carries a keepalive timer of the configured idle time (read with iproute2's `ss`), and
//! none when the setting is off.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::raw_h2::{ACK, PING, RawClient, frame};
use common::{TestServer, config};

/// Opens an HTTP/2 connection and waits for a PING round trip: by then the server has
/// accepted the connection, set its socket options, and its frames are acknowledged.
async fn connected(addr: SocketAddr) -> RawClient {
    let mut client = RawClient::connect(addr).await;
    client.send(&[frame(PING, 0, 0, &[9; 8])]).await;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("the server answers within 10 s")
            .expect("the server keeps the connection open");
        if read.kind == PING && read.flags & ACK != 0 {
            return client;
        }
    }
}

/// The timers `ss -o` shows on the server's side of connections to `server`, e.g.
/// `timer:(keepalive,59sec,0)`.
fn server_side_timers(server: SocketAddr) -> Vec<String> {
    let output = Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( sport = :{} )", server.port()))
        .output()
        .expect("iproute2's ss runs (Debian: apt-get install iproute2)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            line.split_whitespace()
                .find(|field| field.starts_with("timer:("))
                .unwrap_or("no timer")
                .to_owned()
        })
        .collect()
}

/// The seconds left on a `timer:(keepalive,Nsec,0)` (or `NminMsec`), if it is one.
fn keepalive_seconds(timer: &str) -> Option<u64> {
    let left = timer.strip_prefix("timer:(keepalive,")?.split(',').next()?;
    let (minutes, seconds) = match left.split_once("min") {
        Some((minutes, rest)) => (minutes.parse::<u64>().ok()?, rest),
        None => (0, left),
    };
    let seconds = seconds.strip_suffix("sec").unwrap_or(seconds);
    let seconds = if seconds.is_empty() {
        0
    } else {
        seconds.split('.').next()?.parse::<u64>().ok()?
    };
    Some(minutes * 60 + seconds)
}

#[tokio::test]
async fn accepted_connections_carry_the_configured_keepalive() {
    let mut cfg = config();
    cfg.connection.tcp_keepalive = Duration::from_secs(97);
    let server = TestServer::start(cfg).await;
    let client = connected(server.addr).await;
    let timers = server_side_timers(server.addr);
    assert_eq!(timers.len(), 1, "one connection to the server: {timers:?}");
    let left = keepalive_seconds(&timers[0])
        .unwrap_or_else(|| panic!("a keepalive timer on the server's socket: {timers:?}"));
    assert!(
        (80..=97).contains(&left),
        "the first probe is due 97 s after the last packet: {timers:?}"
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn no_keepalive_when_it_is_off() {
    let mut cfg = config();
    cfg.connection.tcp_keepalive = Duration::ZERO;
    let server = TestServer::start(cfg).await;
    let client = connected(server.addr).await;
    let timers = server_side_timers(server.addr);
    assert_eq!(timers, ["no timer"], "nothing armed on an idle socket");
    drop(client);
    server.stop().await;
}

#[test]
fn reads_the_timers_ss_prints() {
    assert_eq!(keepalive_seconds("timer:(keepalive,59sec,0)"), Some(59));
    assert_eq!(keepalive_seconds("timer:(keepalive,1min36sec,0)"), Some(96));
    assert_eq!(keepalive_seconds("timer:(keepalive,1min,0)"), Some(60));
    assert_eq!(keepalive_seconds("timer:(on,200ms,0)"), None);
}
