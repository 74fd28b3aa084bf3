//! What the `http2.*` settings put on the wire: the server's first SETTINGS frame and its
//! connection WINDOW_UPDATE, read frame by frame from a real connection, for the defaults
//! and for `adaptive_window`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::raw_h2::{ACK, PING, RawClient, SETTINGS, WINDOW_UPDATE, frame};
use common::{TestServer, config};

const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// What the server announced before any request.
#[derive(Debug)]
struct Announced {
    settings: BTreeMap<u16, u32>,
    /// The connection window's increment, if the server sent one.
    connection_window_update: Option<u32>,
}

/// Opens a connection and collects frames until a PING round trip, sent once the server's
/// SETTINGS arrived, shows nothing more is coming unprompted.
async fn announced(server: &TestServer) -> Announced {
    let mut client = RawClient::connect(server.addr).await;
    let mut settings = None;
    let mut connection_window_update = None;
    loop {
        let frame_read = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("the server answers within 10 s")
            .expect("the server keeps the connection open");
        match (frame_read.kind, frame_read.flags & ACK, frame_read.stream) {
            (SETTINGS, 0, _) => {
                let pairs = frame_read
                    .payload
                    .chunks_exact(6)
                    .map(|p| {
                        let id = u16::from_be_bytes([p[0], p[1]]);
                        (id, u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
                    })
                    .collect();
                settings = Some(pairs);
                // Its answer comes after whatever the server queued before it.
                client.send(&[frame(PING, 0, 0, &[7; 8])]).await;
            }
            (WINDOW_UPDATE, _, 0) => {
                let increment = u32::from_be_bytes(frame_read.payload[..4].try_into().unwrap());
                connection_window_update = Some(increment & 0x7fff_ffff);
            }
            (PING, ACK, _) => break,
            _ => {}
        }
    }
    Announced {
        settings: settings.expect("a SETTINGS frame before the PING's answer"),
        connection_window_update,
    }
}

#[tokio::test]
async fn the_default_windows_and_stream_limit_are_announced() {
    let server = TestServer::start(config()).await;
    let announced = announced(&server).await;
    assert_eq!(
        announced.settings.get(&MAX_CONCURRENT_STREAMS),
        Some(&256),
        "{announced:?}"
    );
    assert_eq!(
        announced.settings.get(&INITIAL_WINDOW_SIZE),
        Some(&(1 << 20)),
        "{announced:?}"
    );
    assert_eq!(
        announced.connection_window_update,
        Some((4 << 20) - 65_535),
        "{announced:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn adaptive_window_starts_from_the_protocols_windows() {
    let mut cfg = config();
    cfg.http2.adaptive_window = true;
    cfg.http2.max_concurrent_streams = 100;
    let server = TestServer::start(cfg).await;
    let announced = announced(&server).await;
    assert_eq!(
        announced.settings.get(&MAX_CONCURRENT_STREAMS),
        Some(&100),
        "{announced:?}"
    );
    // 65,535 is the protocol's initial window: announced as such, or left unsaid.
    assert!(
        matches!(
            announced.settings.get(&INITIAL_WINDOW_SIZE),
            None | Some(&65_535)
        ),
        "{announced:?}"
    );
    assert_eq!(announced.connection_window_update, None, "{announced:?}");
    server.stop().await;
}
