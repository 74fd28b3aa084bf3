//! The JetStream log against the NATS server at 127.0.0.1:4222: order, duplicates, resuming
//! after a restart, held records not redelivered, dead letters, lag, and a server that cannot
//! be reached. Each test has its own streams, subjects and consumer, deleted when it ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_bridge::log::jetstream::{JetStreamConfig, JetStreamLog};
use keel_bridge::log::{Appended, DeadLetter, LogError, LogReader, LogWriter};
use keel_bridge::record::Record;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const NATS: &str = "127.0.0.1:4222";

/// Long enough for any append in these tests; a wait that ends empty fails them.
const WAIT: Duration = Duration::from_secs(10);

fn record(device: &str, key: &str) -> Record {
    Record {
        device: device.into(),
        key: key.into(),
        route: "pay".into(),
        payload: Bytes::from(key.as_bytes().to_vec()),
        headers: vec![
            ("keel-mqtt-topic".into(), format!("devices/{device}/pay")),
            ("traceparent".into(), format!("tp-{key}")),
        ],
    }
}

/// A configuration of names no other test uses; its streams are deleted on drop.
struct Fixture {
    config: JetStreamConfig,
}

impl Fixture {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let unique = format!(
            "{}_{nanos}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            config: JetStreamConfig {
                url: format!("nats://{NATS}"),
                stream: format!("KEEL_TEST_{unique}"),
                dead_letter_stream: format!("KEEL_TEST_{unique}_DEAD"),
                subject_prefix: format!("keel.test.{unique}"),
                consumer: format!("deliver_{unique}"),
                request_timeout: Duration::from_secs(2),
                ..JetStreamConfig::default()
            },
        }
    }

    async fn open(&self) -> JetStreamLog {
        JetStreamLog::open(self.config.clone())
            .await
            .expect("the log opens")
    }

    async fn consumer_info(&self) -> async_nats::jetstream::consumer::Info {
        let client = async_nats::connect(NATS).await.unwrap();
        let stream = async_nats::jetstream::new(client)
            .get_stream(&self.config.stream)
            .await
            .unwrap();
        stream.consumer_info(&self.config.consumer).await.unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let names = [
            self.config.stream.clone(),
            self.config.dead_letter_stream.clone(),
        ];
        // A runtime of its own: this may run while a test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleaning up");
            runtime.block_on(async {
                if let Ok(client) = async_nats::connect(NATS).await {
                    let context = async_nats::jetstream::new(client);
                    for name in names {
                        let _ = context.delete_stream(name).await;
                    }
                }
            });
        })
        .join();
    }
}

fn keys<T>(batch: &[keel_bridge::log::Delivery<T>]) -> Vec<&str> {
    batch.iter().map(|d| d.record.key.as_str()).collect()
}

#[tokio::test]
async fn appends_are_read_in_order_and_duplicates_are_not_stored() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    let mut odd = record("dev 1/ü", "a");
    odd.headers
        .push(("keel-response-topic".into(), " 100% \r\nodd ".into()));
    assert_eq!(writer.append(odd.clone()).await.unwrap(), Appended::Stored);
    for key in ["b", "c"] {
        assert_eq!(
            writer.append(record("dev 1/ü", key)).await.unwrap(),
            Appended::Stored
        );
    }
    assert_eq!(
        writer.append(record("dev 1/ü", "b")).await.unwrap(),
        Appended::Duplicate
    );
    writer.check().await.unwrap();

    let mut reader = log.reader().await.unwrap();
    assert_eq!(reader.lag().await.unwrap(), Some(3));
    let batch = reader.next(10, WAIT).await.unwrap();
    assert_eq!(keys(&batch), ["a", "b", "c"]);
    // Headers come back sorted by name.
    odd.headers.sort();
    assert_eq!(batch[0].record, odd);
    assert_eq!(reader.lag().await.unwrap(), Some(0));
}

#[tokio::test]
async fn a_new_reader_resumes_with_the_records_not_done() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    for key in ["a", "b", "c", "d"] {
        writer.append(record("d1", key)).await.unwrap();
    }
    let mut reader = log.reader().await.unwrap();
    let batch = reader.next(4, WAIT).await.unwrap();
    assert_eq!(keys(&batch), ["a", "b", "c", "d"]);
    // a, c and d are done; b is not. The default ack_wait (30 s) is far beyond WAIT, so b
    // comes back at once only because the new reader makes the consumer anew.
    for at in [0, 2, 3] {
        reader.done(batch[at].token).await.unwrap();
    }
    drop(reader);
    writer.append(record("d1", "e")).await.unwrap();

    let mut again = log.reader().await.unwrap();
    let batch = again.next(10, WAIT).await.unwrap();
    assert_eq!(keys(&batch), ["b", "e"]);
    assert_eq!(fixture.consumer_info().await.num_redelivered, 0);
}

#[tokio::test]
async fn a_held_record_is_not_redelivered_after_ack_wait() {
    let mut fixture = Fixture::new();
    fixture.config.ack_wait = Duration::from_secs(1);
    let log = fixture.open().await;
    let writer = log.writer();
    writer.append(record("d1", "held")).await.unwrap();
    let mut reader = log.reader().await.unwrap();
    let held = reader.next(10, WAIT).await.unwrap();
    assert_eq!(keys(&held), ["held"]);

    // Three times ack_wait, each next() waiting its full 500 ms: nothing may come back.
    let until = Instant::now() + 3 * fixture.config.ack_wait;
    while Instant::now() < until {
        let batch = reader.next(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(keys(&batch), Vec::<&str>::new(), "a held record came back");
    }
    let info = fixture.consumer_info().await;
    assert_eq!((info.num_ack_pending, info.num_redelivered), (1, 0));

    // Other records still flow while one is held.
    writer.append(record("d2", "other")).await.unwrap();
    let batch = reader.next(10, WAIT).await.unwrap();
    assert_eq!(keys(&batch), ["other"]);
    for delivery in held.iter().chain(&batch) {
        reader.done(delivery.token).await.unwrap();
    }
    assert_eq!(fixture.consumer_info().await.num_ack_pending, 0);
    // Done again (a retried done) is harmless.
    reader.done(held[0].token).await.unwrap();
}

#[tokio::test]
async fn a_waiting_reader_wakes_on_an_append() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let mut reader = log.reader().await.unwrap();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (reader.next(10, WAIT).await, started.elapsed())
    });
    log.writer().append(record("d2", "x")).await.unwrap();
    let (batch, took) = waiting.await.unwrap();
    assert_eq!(keys(&batch.unwrap()), ["x"]);
    assert!(took < WAIT, "next waited out its whole wait: {took:?}");
}

#[tokio::test]
async fn dead_letters_keep_the_record_and_the_reason() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    // A dead letter shares its record's key; it is kept all the same.
    writer.append(record("d3", "k1")).await.unwrap();
    let poison = DeadLetter {
        record: record("d3", "k1"),
        reason: "TERMINAL_STATUS".into(),
        detail: "{\"code\":3,\n\"message\":\"bad\"}".into(),
    };
    let unkeyed = DeadLetter {
        record: Record {
            device: String::new(),
            key: String::new(),
            route: String::new(),
            payload: Bytes::from_static(b"\xff not json"),
            headers: Vec::new(),
        },
        reason: "MISSING_KEY".into(),
        detail: "no request_id".into(),
    };
    writer.dead_letter(poison.clone()).await.unwrap();
    writer.dead_letter(unkeyed.clone()).await.unwrap();
    assert_eq!(log.dead_letters().await.unwrap(), vec![poison, unkeyed]);

    // The deliver consumer sees the record, not the dead letters.
    let mut reader = log.reader().await.unwrap();
    let batch = reader.next(10, WAIT).await.unwrap();
    assert_eq!(keys(&batch), ["k1"]);
    assert_eq!(reader.lag().await.unwrap(), Some(0));
}

#[tokio::test]
async fn a_record_over_the_size_limit_is_refused_and_its_dead_letter_kept() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    let mut big = record("d4", "big");
    big.payload = Bytes::from(vec![7; 2 * 1024 * 1024]);
    let refused = writer.append(big.clone()).await.unwrap_err();
    let LogError::Refused(reason) = refused else {
        panic!("not refused: {refused:?}")
    };
    writer
        .dead_letter(DeadLetter {
            record: big,
            reason: "LOG_REFUSED".into(),
            detail: reason,
        })
        .await
        .unwrap();
    let letters = log.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record.key, "big");
    assert!(letters[0].record.payload.is_empty());
    assert!(
        letters[0].detail.contains("not kept"),
        "{}",
        letters[0].detail
    );
    writer.check().await.unwrap();
}

#[tokio::test]
async fn lag_counts_the_records_not_yet_handed_out() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    for key in ["a", "b", "c"] {
        writer.append(record("d5", key)).await.unwrap();
    }
    let mut reader = log.reader().await.unwrap();
    assert_eq!(reader.lag().await.unwrap(), Some(3));
    assert_eq!(keys(&reader.next(2, WAIT).await.unwrap()), ["a", "b"]);
    assert_eq!(reader.lag().await.unwrap(), Some(1));
    assert_eq!(keys(&reader.next(2, WAIT).await.unwrap()), ["c"]);
    assert_eq!(reader.lag().await.unwrap(), Some(0));
}

/// A TCP proxy to the NATS server that can be cut: its connections end and its port closes.
struct Proxy {
    addr: SocketAddr,
    accepting: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(NATS).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(forward);
            }
        });
        Self {
            addr,
            accepting,
            connections,
        }
    }

    fn cut(&self) {
        self.accepting.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

#[tokio::test]
async fn appends_while_nats_is_unreachable_are_unavailable_in_bounded_time() {
    let mut fixture = Fixture::new();
    let proxy = Proxy::start().await;
    fixture.config.url = format!("nats://{}", proxy.addr);
    let log = fixture.open().await;
    let writer = log.writer();
    assert_eq!(
        writer.append(record("d6", "before")).await.unwrap(),
        Appended::Stored
    );

    proxy.cut();
    let started = Instant::now();
    let outcome = writer.append(record("d6", "during")).await;
    assert!(
        matches!(outcome, Err(LogError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(matches!(
        writer.check().await,
        Err(LogError::Unavailable(_))
    ));
    // Two request timeouts (the append, the check) and some slack.
    let bound = 2 * fixture.config.request_timeout + Duration::from_secs(2);
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn opening_against_a_closed_port_is_unavailable() {
    let mut fixture = Fixture::new();
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    fixture.config.url = format!("nats://{closed}");
    let started = Instant::now();
    let outcome = JetStreamLog::open(fixture.config.clone()).await;
    assert!(
        matches!(outcome, Err(LogError::Unavailable(_))),
        "{:?}",
        outcome.map(drop)
    );
    assert!(
        started.elapsed() < fixture.config.request_timeout + Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_bad_configuration_is_refused() {
    let mut fixture = Fixture::new();
    fixture.config.subject_prefix = "keel.*".into();
    let outcome = JetStreamLog::open(fixture.config.clone()).await;
    assert!(
        matches!(&outcome, Err(LogError::Refused(reason)) if reason.contains("subject_prefix")),
        "{:?}",
        outcome.map(drop)
    );
}

/// A record appended while a long read waits is handed out at once, not when the read's
/// wait is over (a pull holds what it got until it is full or expires).
#[tokio::test]
async fn a_record_arriving_during_a_long_wait_is_handed_out_at_once() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    let mut reader = log.reader().await.unwrap();
    let long_wait = Duration::from_secs(20);
    let started = Instant::now();
    let read = tokio::spawn(async move { reader.next(10, long_wait).await });
    writer.append(record("d1", "late")).await.unwrap();
    let batch = read.await.unwrap().unwrap();
    assert_eq!(keys(&batch), ["late"]);
    assert!(
        started.elapsed() < long_wait / 4,
        "the record waited {:?} for the read to end",
        started.elapsed()
    );
}
