//! The Kafka log against the Kafka-protocol broker (tansu) at 127.0.0.1:9092: order per
//! device, resuming after a restart past the records done and no further, dead letters, lag,
//! brokers that cannot be reached, and a private broker killed and restarted under appends.
//! Each test has its own topics and consumer group (the group is deleted when it ends).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_bridge::log::kafka::{KafkaConfig, KafkaLog, KafkaReader, KafkaToken};
use keel_bridge::log::{Appended, DeadLetter, Delivery, LogError, LogReader, LogWriter};
use keel_bridge::record::Record;
use keel_test_support::{Dir, eventually_async};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use tokio::net::TcpStream;
use tokio::sync::watch;

const KAFKA: &str = "127.0.0.1:9092";

/// Long enough for any append or group join in these tests; a wait that ends empty fails them.
const WAIT: Duration = Duration::from_secs(30);

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

/// A configuration of names no other test uses; its consumer group is deleted on drop. Its
/// topics stay: tansu 0.6.0's DeleteTopics deletes every topic of the cluster
/// (docs/notes/kafka-broker.md).
struct Fixture {
    config: KafkaConfig,
}

impl Fixture {
    fn new() -> Self {
        Self::on(KAFKA)
    }

    fn on(brokers: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let unique = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            config: KafkaConfig {
                brokers: brokers.into(),
                topic: format!("keel-test-{unique}"),
                dead_letter_topic: format!("keel-test-{unique}-dead"),
                partitions: 3,
                consumer: format!("keel-test-{unique}"),
                request_timeout: Duration::from_secs(5),
                ..KafkaConfig::default()
            },
        }
    }

    async fn open(&self) -> KafkaLog {
        KafkaLog::open(self.config.clone())
            .await
            .expect("the log opens")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let config = self.config.clone();
        // A runtime of its own: this may run while a test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleaning up");
            runtime.block_on(async {
                let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
                    .set("bootstrap.servers", &config.brokers)
                    .create();
                let Ok(admin) = admin else { return };
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
                let cleanup = admin.delete_groups(&[&config.consumer], &options);
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
            });
        })
        .join();
    }
}

fn keys(batch: &[Delivery<KafkaToken>]) -> Vec<&str> {
    batch.iter().map(|d| d.record.key.as_str()).collect()
}

/// Exactly `count` records, reading until they came (the first read also waits for the group
/// to assign the partitions).
async fn take(reader: &mut KafkaReader, count: usize) -> Vec<Delivery<KafkaToken>> {
    let mut taken = Vec::new();
    let deadline = Instant::now() + WAIT;
    while taken.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} came",
            taken.len()
        );
        taken.extend(reader.next(count - taken.len(), WAIT).await.unwrap());
    }
    taken
}

/// Reads until the group has assigned the reader its partitions, which must hold no records.
async fn join(reader: &mut KafkaReader) {
    let deadline = Instant::now() + WAIT;
    while reader.lag().await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the group assigned nothing");
        let batch = reader.next(1, Duration::from_millis(100)).await.unwrap();
        assert_eq!(keys(&batch), Vec::<&str>::new());
    }
}

#[tokio::test]
async fn appends_are_read_in_order_per_device_and_resent_keys_are_stored_again() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    let mut odd = record("dev 1/ü", "a");
    odd.headers
        .push(("keel-response-topic".into(), " 100% \r\nodd ".into()));
    let mut appended = vec![odd.clone()];
    for (device, key) in [("dev 1/ü", "b"), ("d2", "x"), ("dev 1/ü", "c"), ("d2", "y")] {
        appended.push(record(device, key));
    }
    // Kafka cannot tell a resend: the contract's duplicate reaches deliver.
    appended.push(record("dev 1/ü", "b"));
    let started = Instant::now();
    for record in &appended {
        assert_eq!(
            writer.append(record.clone()).await.unwrap(),
            Appended::Stored
        );
    }
    eprintln!(
        "{} appends, one at a time, took {:?}",
        appended.len(),
        started.elapsed()
    );
    writer.check().await.unwrap();

    let mut reader = log.reader().unwrap();
    let batch = take(&mut reader, appended.len()).await;
    let mut by_device: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for delivery in &batch {
        by_device
            .entry(&delivery.record.device)
            .or_default()
            .push(&delivery.record.key);
    }
    assert_eq!(by_device["dev 1/ü"], ["a", "b", "c", "b"]);
    assert_eq!(by_device["d2"], ["x", "y"]);
    // Every field comes back, headers in the order they were written.
    let first = batch.iter().find(|d| d.record.key == "a").unwrap();
    assert_eq!(first.record, odd);
    assert_eq!(reader.lag().await.unwrap(), Some(0));
}

#[tokio::test]
async fn a_new_reader_resumes_at_the_oldest_record_not_done() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
    for key in ["a", "b", "c", "d"] {
        writer.append(record("d1", key)).await.unwrap();
    }
    let mut reader = log.reader().unwrap();
    let batch = take(&mut reader, 4).await;
    assert_eq!(keys(&batch), ["a", "b", "c", "d"]);
    // a, c and d are done, out of order; b is not. Dropping the reader commits.
    for at in [3, 0, 2] {
        reader.done(batch[at].token.clone()).await.unwrap();
    }
    drop(reader);
    writer.append(record("d1", "e")).await.unwrap();

    // b comes again, and so do c and d behind it: one offset per partition (replays).
    let mut again = log.reader().unwrap();
    let batch = take(&mut again, 4).await;
    assert_eq!(keys(&batch), ["b", "c", "d", "e"]);
    // All done now, in reverse order; a done twice is harmless.
    for delivery in batch.iter().rev() {
        again.done(delivery.token.clone()).await.unwrap();
    }
    again.done(batch[0].token.clone()).await.unwrap();
    drop(again);
    writer.append(record("d1", "f")).await.unwrap();

    let mut third = log.reader().unwrap();
    assert_eq!(keys(&take(&mut third, 1).await), ["f"]);
    let nothing = third.next(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(keys(&nothing), Vec::<&str>::new());
}

#[tokio::test]
async fn a_waiting_reader_wakes_on_an_append() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let mut reader = log.reader().unwrap();
    join(&mut reader).await;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (reader.next(10, WAIT).await, started.elapsed())
    });
    let started = Instant::now();
    log.writer().append(record("d2", "x")).await.unwrap();
    let appended = started.elapsed();
    let (batch, took) = waiting.await.unwrap();
    assert_eq!(keys(&batch.unwrap()), ["x"]);
    assert!(took < WAIT, "next waited out its whole wait: {took:?}");
    eprintln!(
        "the append was acknowledged in {appended:?}; the reader had it {:?} after it began",
        started.elapsed()
    );
}

#[tokio::test]
async fn dead_letters_keep_the_record_and_the_reason() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let writer = log.writer();
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

    // The group reads the record, not the dead letters.
    let mut reader = log.reader().unwrap();
    assert_eq!(keys(&take(&mut reader, 1).await), ["k1"]);
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
    let mut reader = log.reader().unwrap();
    assert_eq!(keys(&take(&mut reader, 2).await), ["a", "b"]);
    assert_eq!(reader.lag().await.unwrap(), Some(1));
    assert_eq!(keys(&take(&mut reader, 1).await), ["c"]);
    assert_eq!(reader.lag().await.unwrap(), Some(0));
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn opening_against_a_closed_port_is_unavailable_in_bounded_time() {
    let mut fixture = Fixture::on(&closed_port().to_string());
    fixture.config.request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let outcome = KafkaLog::open(fixture.config.clone()).await;
    assert!(
        matches!(outcome, Err(LogError::Unavailable(_))),
        "{:?}",
        outcome.map(drop)
    );
    let bound = fixture.config.request_timeout + Duration::from_secs(2);
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_bad_configuration_is_refused() {
    let mut fixture = Fixture::new();
    fixture.config.topic = "no/slashes".into();
    let outcome = KafkaLog::open(fixture.config.clone()).await;
    assert!(
        matches!(&outcome, Err(LogError::Refused(reason)) if reason.contains("topic")),
        "{:?}",
        outcome.map(drop)
    );
}

/// A tansu broker of this test's own, on a free port with its database in a temporary
/// directory, that can be killed (`kill -9`) and started again on the same data.
struct PrivateBroker {
    dir: Dir,
    addr: SocketAddr,
    child: Option<Child>,
}

impl PrivateBroker {
    async fn start() -> Self {
        let mut broker = Self {
            dir: Dir::new(),
            addr: closed_port(),
            child: None,
        };
        broker.run().await;
        broker
    }

    /// Starts the broker and waits for its port.
    async fn run(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("the broker's log file");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = self.addr;
        eventually_async("the broker's port opens", WAIT, || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    /// SIGKILL, and waits until the process is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 the broker");
            child.wait().expect("the broker exits");
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("tansu.log"));
            eprintln!("the private broker's log:\n{}", log.unwrap_or_default());
        }
    }
}

/// The tansu binary: on the PATH, or where `cargo install` puts it.
fn tansu() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .expect("HOME or CARGO_HOME is set");
        home.join("bin").join("tansu")
    })
}

/// What the appending tasks saw.
#[derive(Default)]
struct Appends {
    /// Keys acknowledged, by device, in the order acknowledged.
    acked: BTreeMap<String, Vec<String>>,
    acked_count: usize,
    failed: usize,
    latencies: Vec<Duration>,
}

/// Waits until the appending tasks' counts (acknowledged, failed) satisfy `done`.
async fn until(
    watch: &mut watch::Receiver<(usize, usize)>,
    what: &str,
    done: impl Fn((usize, usize)) -> bool,
) {
    let waited = tokio::time::timeout(WAIT, watch.wait_for(|&seen| done(seen))).await;
    assert!(waited.is_ok(), "not within {WAIT:?}: {what}");
}

#[tokio::test]
async fn the_broker_restarted_under_load_loses_nothing() {
    let mut broker = PrivateBroker::start().await;
    let mut fixture = Fixture::on(&broker.addr.to_string());
    fixture.config.request_timeout = Duration::from_secs(3);
    let log = fixture.open().await;

    // Four devices, each appended to by its own task, one record at a time; a failed append
    // is tried again with the same key, as ingest does.
    let appends = Arc::new(Mutex::new(Appends::default()));
    let (seen, mut watch) = watch::channel((0, 0));
    let seen = Arc::new(seen);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for device in 0..4 {
        let (writer, appends, seen, stop) =
            (log.writer(), appends.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let device = format!("dev-{device}");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{device}:{n}");
                let started = Instant::now();
                let outcome = writer.append(record(&device, &key)).await;
                let mut appends = appends.lock().unwrap();
                match outcome {
                    Ok(_) => {
                        appends.latencies.push(started.elapsed());
                        appends.acked.entry(device.clone()).or_default().push(key);
                        appends.acked_count += 1;
                        n += 1;
                    }
                    Err(LogError::Unavailable(_)) => appends.failed += 1,
                    Err(refused) => panic!("{refused:?}"),
                }
                seen.send_replace((appends.acked_count, appends.failed));
            }
        }));
    }
    until(&mut watch, "200 appends before the kill", |(acked, _)| {
        acked >= 200
    })
    .await;
    let latencies = appends.lock().unwrap().latencies.clone();

    broker.kill();
    let (at_kill, _) = *watch.borrow_and_update();
    until(
        &mut watch,
        "an append fails while the broker is down",
        |(_, failed)| failed >= 1,
    )
    .await;
    let started = Instant::now();
    let check = log.writer().check().await;
    assert!(matches!(check, Err(LogError::Unavailable(_))), "{check:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "check took {:?}",
        started.elapsed()
    );

    broker.run().await;
    let restarted = Instant::now();
    until(
        &mut watch,
        "200 more appends after the restart",
        |(acked, _)| acked >= at_kill + 200,
    )
    .await;
    let recovered = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let appends = Arc::try_unwrap(appends).ok().unwrap().into_inner().unwrap();

    // Every acknowledged append is there, each device's in order (a key tried again after a
    // failure may be there twice: the contract's duplicate, a replay at the target).
    let mut reader = log.reader().unwrap();
    let mut read: HashMap<String, Vec<String>> = HashMap::new();
    let mut remaining: usize = appends.acked_count;
    let deadline = Instant::now() + WAIT;
    let mut seen_keys = HashSet::new();
    let mut duplicates = 0;
    while remaining > 0 {
        assert!(
            Instant::now() < deadline,
            "{remaining} acknowledged appends are missing"
        );
        for delivery in reader.next(1000, WAIT).await.unwrap() {
            let record = delivery.record;
            if !seen_keys.insert(record.key.clone()) {
                duplicates += 1;
                continue;
            }
            let acked = appends
                .acked
                .get(&record.device)
                .is_some_and(|keys| keys.contains(&record.key));
            if acked {
                remaining -= 1;
            }
            read.entry(record.device).or_default().push(record.key);
        }
    }
    for (device, acked) in &appends.acked {
        let got: Vec<&String> = read[device]
            .iter()
            .filter(|key| acked.contains(key))
            .collect();
        let expected: Vec<&String> = acked.iter().collect();
        assert_eq!(got, expected, "{device}: acknowledged appends out of order");
    }
    let mut sorted = latencies;
    sorted.sort();
    eprintln!(
        "{} appends acknowledged ({} failed while the broker was down, {duplicates} read twice); \
         appends took p50 {:?}, p99 {:?} before the kill; 200 more were acknowledged {recovered:?} \
         after the restart began",
        appends.acked_count,
        appends.failed,
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 99 / 100],
    );
}
