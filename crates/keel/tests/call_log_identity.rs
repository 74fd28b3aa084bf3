//! The call log names the identity a client's certificate proved.
//!
//! In a test binary of its own: it reads the log through a subscriber set for its thread
//! alone, and with other tests calling on other threads of the same process, tracing's
//! per-callsite interest cache sometimes kept this thread's records from it (an empty log,
//! one run in two under load).

mod common;

use std::sync::Arc;

use common::mutual_tls::{CLIENT_ID, Pki, call, start};
use keel::config::ClientAuth;

/// A writer the test reads back: the call log of this test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The call log names the identity the client's certificate proved. (A current-thread
/// runtime: the server's tasks run on this thread, under this thread's subscriber.)
#[tokio::test(flavor = "current_thread")]
async fn the_call_log_names_the_peer_identity() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("keel::rpc=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new();
    let server = start(pki.server_tls(ClientAuth::Required)).await;
    let target = format!("static:///{}", server.addr);
    assert_eq!(
        call(&target, &pki.client_tls(true)).await.unwrap(),
        CLIENT_ID
    );

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let finished = log
        .lines()
        .find(|line| line.contains("finished call") && line.contains("side=\"server\""))
        .unwrap_or_else(|| panic!("no server call record in:\n{log}"));
    assert!(
        finished.contains(&format!("peer_identity={CLIENT_ID}")),
        "{finished}"
    );
}
