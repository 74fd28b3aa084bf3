//! What the `http2.*` settings put on the wire: the server's first SETTINGS frame and its
//! connection WINDOW_UPDATE, read byte by byte from a real connection, for the defaults and
//! for `adaptive_window`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestServer, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// What the server announced before any request.
#[derive(Debug)]
struct Announced {
    settings: BTreeMap<u16, u32>,
    /// The connection window's increment, if the server sent one.
    connection_window_update: Option<u32>,
}

/// Opens a connection, sends the preface and empty SETTINGS, acknowledges the server's, and
/// collects frames until a PING round trip shows nothing more is coming unprompted.
async fn announced(server: &TestServer) -> Announced {
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(PREFACE).await.unwrap();
    socket.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let mut settings = None;
    let mut connection_window_update = None;
    loop {
        let (kind, flags, stream, payload) =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut socket))
                .await
                .expect("the server answers within 10 s");
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let pairs = payload
                    .chunks_exact(6)
                    .map(|p| {
                        let id = u16::from_be_bytes([p[0], p[1]]);
                        (id, u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
                    })
                    .collect();
                settings = Some(pairs);
                socket.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap();
                // The PING's answer comes after whatever the server queued before it.
                socket.write_all(&frame(0x6, 0, &[7; 8])).await.unwrap();
            }
            WINDOW_UPDATE if stream == 0 => {
                let increment = u32::from_be_bytes(payload[..4].try_into().unwrap());
                connection_window_update = Some(increment & 0x7fff_ffff);
            }
            0x6 if flags & ACK != 0 => break,
            _ => {}
        }
    }
    Announced {
        settings: settings.expect("a SETTINGS frame before the PING's answer"),
        connection_window_update,
    }
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

async fn read_frame(socket: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    socket.read_exact(&mut head).await.unwrap();
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; length];
    socket.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
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
