//! The device simulator (`payments-devices`) in the parts that need no bridge: its flags, its
//! publishing through a real Mosquitto (127.0.0.1:1883) as a subscriber sees it, and its
//! ledger check against a real payments server on which the bridge's calls are made directly.
//! The whole path, simulator → Mosquitto → `keel bridge` → payments, is tested with the bridge.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb, on_both_backends};
use payments::load::{self, ExpectedPayment, Plan, PlanSettings};
use payments::pb::v1::ProcessRequest;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::service::Payments;
use prost_reflect::{DescriptorPool, DynamicMessage};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tonic::transport::Channel;

// ------------------------------------------------------------------------- the flags

/// Runs the binary with `args`; its exit code and stderr.
fn devices(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payments-devices"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_naming_the_flag_before_anything_is_touched() {
    for (args, says) in [
        (&["--devices", "0"][..], "--devices 0: must be 1 to 1000"),
        (&["--devices", "1001"], "each device is an MQTT connection"),
        (&["--requests", "0"], "--requests 0"),
        (&["--resend", "1.5"], "--resend 1.5: is a fraction"),
        (
            &["--requests", "10", "--insufficient", "11"],
            "--insufficient 11",
        ),
        (&["--amount", "0"], "--amount 0"),
        (&["--currency", "euro"], "--currency \"euro\""),
        (&["--run-id", "a/b"], "--run-id \"a/b\""),
        (
            &["--mqtt", "tcp://127.0.0.1:1883"],
            "must be mqtt://HOST:PORT",
        ),
        (
            &["--mqtt", "mqtt://127.0.0.1:x"],
            "the port is not a number",
        ),
        (&["--rate=-1"], "--rate -1"),
        (&["--wait", "NaN"], "--wait NaN"),
        (
            &["--topic-prefix", "payment/+"],
            "--topic-prefix \"payment/+\"",
        ),
        (&["--response-prefix", "r/#"], "--response-prefix"),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let (code, stderr) = devices(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {says:?} not in {stderr}");
    }
}

#[test]
fn an_unreachable_payments_server_is_a_setup_error() {
    let (code, stderr) = devices(&["--target", "http://127.0.0.1:1", "--requests", "1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to payments at http://127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn help_teaches_the_run_the_bridge_route_and_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_payments-devices"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for part in [
        "device+field:idempotency_key",
        "{device}:{request id}",
        "INSUFFICIENT_FUNDS",
        "Exit status: 0",
        "payments-devices --devices 200 --requests 20000 --rate 0 --json",
        "--malformed <N>",
    ] {
        assert!(help.contains(part), "{part:?} not in --help:\n{help}");
    }
}

// ------------------------------------------------------- publishing, as Mosquitto sees it

/// A subscriber on the test's own request topics, collecting what the devices publish.
struct Observer {
    messages: mpsc::Receiver<Publish>,
    _client: AsyncClient,
}

impl Observer {
    /// Subscribes to `filter` and returns once the broker granted it.
    async fn subscribe(client_id: &str, filter: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", 1883);
        options.set_max_packet_size(Some(256 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let subscribed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return,
                    Ok(_) => {}
                    Err(error) => {
                        panic!("Mosquitto on 127.0.0.1:1883 (see scripts/test.sh): {error}")
                    }
                }
            }
        })
        .await;
        assert!(subscribed.is_ok(), "no SUBACK from Mosquitto within 10 s");
        let (sender, messages) = mpsc::channel(4096);
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event
                    && sender.send(publish).await.is_err()
                {
                    return;
                }
            }
        });
        Self {
            messages,
            _client: client,
        }
    }

    /// The next `count` messages, which must come within `within`.
    async fn take(&mut self, count: usize, within: Duration) -> Vec<Publish> {
        let mut taken = Vec::with_capacity(count);
        let all = tokio::time::timeout(within, async {
            while taken.len() < count {
                taken.push(self.messages.recv().await.expect("the observer ended"));
            }
        })
        .await;
        assert!(
            all.is_ok(),
            "{} of {count} messages within {within:?}",
            taken.len()
        );
        taken
    }
}

/// Runs the binary with `args` off the runtime (the server under test runs on it).
async fn run_devices(args: Vec<String>) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_payments-devices"))
            .args(args)
            .output()
            .unwrap()
    });
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("payments-devices ends within 120 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bridge_every_publish_is_acknowledged_and_every_outcome_missing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = common::api::serve_payments_at(Payments::new(db.store.clone(), 0)).await;
    let run = format!("t{:08x}", rand::random::<u32>());
    let prefix = format!("test/{run}/request");
    let mut observer =
        Observer::subscribe(&format!("{run}-observer"), &format!("{prefix}/+")).await;

    let args = [
        "--target",
        &format!("http://{server}"),
        "--run-id",
        &run,
        "--devices",
        "4",
        "--requests",
        "40",
        "--resend",
        "0.2",
        "--insufficient",
        "5",
        "--malformed",
        "3",
        "--amount",
        "7",
        "--rate",
        "0",
        "--wait",
        "1",
        "--json",
        "--topic-prefix",
        &prefix,
        "--response-prefix",
        &format!("test/{run}/response"),
    ];
    let output = run_devices(args.iter().map(|a| a.to_string()).collect()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON line: {e}: {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    for (field, value) in [
        ("published", 40),
        ("resent", 8),
        ("malformed", 3),
        ("acknowledged", 40),
        ("pubacks", 51),
        ("no_subscribers", 0),
        ("unacknowledged", 0),
        ("outcomes", 0),
        ("missing", 40),
    ] {
        assert_eq!(summary[field], value, "{field} in {summary}");
    }
    assert_eq!(
        summary["expected"],
        serde_json::json!({"OK": 35, "FAILED_PRECONDITION": 5})
    );
    // Nothing was paid: the ledger holds no payment and every payer its funding.
    assert_eq!(
        summary["ledger"],
        serde_json::json!({"ok": true, "payments": 0, "problems": []})
    );
    assert_eq!(summary["ok"], false);
    let reasons = summary["reasons"].to_string();
    assert!(
        reasons.contains("40 acknowledged requests have no outcome"),
        "{reasons}"
    );
    assert!(
        stderr.contains("40 acknowledged requests have no outcome"),
        "{stderr}"
    );

    // What the bridge would have received.
    let messages = observer.take(51, Duration::from_secs(10)).await;
    let input = DescriptorPool::decode(payments::FILE_DESCRIPTOR_SET)
        .unwrap()
        .get_message_by_name("payments.v1.ProcessRequest")
        .unwrap();
    let mut malformed = 0;
    let mut by_key: BTreeMap<String, Vec<&Publish>> = BTreeMap::new();
    let mut last_seen: HashMap<String, usize> = HashMap::new();
    let mut requests: BTreeMap<String, (String, ProcessRequest)> = BTreeMap::new();
    for message in &messages {
        let topic = String::from_utf8(message.topic.to_vec()).unwrap();
        let device = topic
            .strip_prefix(&format!("{prefix}/"))
            .unwrap()
            .to_owned();
        assert_eq!(message.qos, QoS::AtLeastOnce);
        let mut json = serde_json::Deserializer::from_slice(&message.payload);
        let Ok(dynamic) = DynamicMessage::deserialize(input.clone(), &mut json) else {
            malformed += 1;
            continue;
        };
        let request: ProcessRequest = dynamic.transcode_to().unwrap();
        let key = format!("{device}:{}", request.idempotency_key);
        let properties = message.properties.as_ref().expect("MQTT 5 properties");
        assert_eq!(properties.correlation_data.as_deref(), Some(key.as_bytes()));
        let traceparent = &properties.user_properties[0];
        assert_eq!(traceparent.0, "traceparent");
        assert!(
            traceparent.1.len() == 55 && traceparent.1.starts_with("00-"),
            "{traceparent:?}"
        );
        assert_eq!(request.payer_account_id, format!("{device}-payer"));
        assert_eq!(request.payee_account_id, format!("{run}-payee"));
        assert_eq!(request.currency, "EUR");
        // One device's requests arrive in the order it sent them (a resend may come later).
        let number: usize = request
            .idempotency_key
            .rsplit('r')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if !by_key.contains_key(&key) {
            let last = last_seen.insert(device.clone(), number);
            assert!(
                last.is_none_or(|last| last < number),
                "{device}: {last:?} then {number}"
            );
        }
        by_key.entry(key.clone()).or_default().push(message);
        requests.insert(key, (device, request));
    }
    assert_eq!(malformed, 3);
    assert_eq!(by_key.len(), 40, "unique request ids");
    let resent: Vec<_> = by_key.values().filter(|sends| sends.len() == 2).collect();
    assert_eq!(resent.len(), 8);
    for sends in resent {
        assert_eq!(
            sends[0].payload, sends[1].payload,
            "a resend is the same request"
        );
        assert_eq!(sends[0].properties, sends[1].properties);
    }

    // Payers hold exactly what their payments need; the overdraws ask for more.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut overdraws = 0;
    for d in 0..4 {
        let device = format!("{run}-d{d}");
        let balance = load::accounts::balance(&channel, &format!("{device}-payer"))
            .await
            .unwrap();
        let mine: Vec<_> = requests.values().filter(|(of, _)| *of == device).collect();
        let fundable = mine.iter().filter(|(_, r)| r.amount_minor == 7).count() as i64;
        assert_eq!(balance, 7 * fundable, "{device}");
        for (_, request) in mine.iter().filter(|(_, r)| r.amount_minor != 7) {
            assert!(request.amount_minor > balance, "{request:?}");
            overdraws += 1;
        }
    }
    assert_eq!(overdraws, 5);
    assert_eq!(
        load::accounts::balance(&channel, &format!("{run}-payee"))
            .await
            .unwrap(),
        0
    );
}

// ------------------------------------------------------------------- the ledger check

on_both_backends!(
    the_ledger_matches_the_outcomes_of_the_bridges_calls,
    a_double_debit_fails_the_ledger_check,
    a_missing_or_misnamed_payment_fails_the_ledger_check,
);

/// A planned run with its accounts opened and funded over gRPC, on a server over `db`.
async fn opened(db: &TestDb) -> (Channel, Arc<Plan>) {
    let settings = PlanSettings {
        run_id: format!("l{:08x}", rand::random::<u32>()),
        devices: 3,
        requests: 12,
        resend: 0.25,
        amount: 4,
        currency: "EUR".into(),
        insufficient: 2,
        malformed: 0,
    };
    let plan = Arc::new(Plan::new(&settings, &mut rand::rng()).unwrap());
    let channel = common::api::serve(db.store.clone(), 0).await;
    load::accounts::open_accounts(&channel, &plan.accounts(), "EUR")
        .await
        .unwrap();
    (channel, plan)
}

/// Makes every publish's call as the bridge does (an anonymous Process under the key
/// `{device}:{request id}`, a resend under the same key) and returns the payments of the OK
/// outcomes, checking each outcome on the way.
async fn play(channel: &Channel, plan: &Plan) -> Vec<ExpectedPayment> {
    let mut client = PaymentServiceClient::new(channel.clone());
    let mut outcomes: BTreeMap<usize, ExpectedPayment> = BTreeMap::new();
    for send in &plan.sends {
        let load::Send::Request { request: r, resend } = *send else {
            continue;
        };
        let planned = &plan.requests[r];
        let request = ProcessRequest {
            idempotency_key: planned.key.clone(),
            ..plan.process_request(r)
        };
        match client.process(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let payment = response.payment.unwrap();
                assert!(!planned.overdraws, "{} overdrew", planned.key);
                assert_eq!(response.replayed, resend);
                let expected = ExpectedPayment {
                    key: planned.key.clone(),
                    payer: plan.devices[planned.device].payer.clone(),
                    payee: plan.payee.clone(),
                    amount: planned.amount,
                    payment_id: Some(payment.payment_id),
                };
                if let Some(first) = outcomes.insert(r, expected.clone()) {
                    assert_eq!(first, expected, "a replay names the same payment");
                }
            }
            Err(status) => {
                assert!(planned.overdraws, "{}: {status:?}", planned.key);
                assert_eq!(status.code(), tonic::Code::FailedPrecondition);
                let details = keel::error::Details::from_status(&status);
                assert_eq!(details.reason(), Some("INSUFFICIENT_FUNDS"));
            }
        }
    }
    outcomes.into_values().collect()
}

async fn the_ledger_matches_the_outcomes_of_the_bridges_calls(db: &TestDb) {
    let (channel, plan) = opened(db).await;
    let expected = play(&channel, &plan).await;
    assert_eq!(expected.len(), 10);
    let check = load::check_ledger(&channel, &plan.accounts(), &expected)
        .await
        .unwrap();
    assert_eq!(check.problems, Vec::<String>::new());
    assert_eq!(check.payments, 10);
    // Every payer is spent to zero; the payee holds it all.
    for device in &plan.devices {
        assert_eq!(
            load::accounts::balance(&channel, &device.payer)
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(
        load::accounts::balance(&channel, &plan.payee)
            .await
            .unwrap(),
        40
    );
    db.assert_ledger_consistent().await;
}

async fn a_double_debit_fails_the_ledger_check(db: &TestDb) {
    let (channel, plan) = opened(db).await;
    let expected = play(&channel, &plan).await;
    // A resend that moved money a second time, under another key. Its payer is spent to
    // zero by now, so a deposit (which the check is told of) pays for the second debit.
    let twice = &expected[0];
    let mut accounts = plan.accounts();
    let deposit = payments::pb::v1::DepositRequest {
        account_id: twice.payer.clone(),
        amount_minor: twice.amount,
        idempotency_key: format!("{}-topup", twice.payer),
    };
    payments::pb::v1::account_service_client::AccountServiceClient::new(channel.clone())
        .deposit(deposit)
        .await
        .unwrap();
    accounts
        .iter_mut()
        .find(|(id, _)| *id == twice.payer)
        .unwrap()
        .1 += twice.amount;
    let again = ProcessRequest {
        idempotency_key: format!("{}-again", twice.key),
        payer_account_id: twice.payer.clone(),
        payee_account_id: twice.payee.clone(),
        amount_minor: twice.amount,
        currency: "EUR".into(),
        ..ProcessRequest::default()
    };
    PaymentServiceClient::new(channel.clone())
        .process(again)
        .await
        .unwrap();

    let check = load::check_ledger(&channel, &accounts, &expected)
        .await
        .unwrap();
    assert_eq!(check.payments, 11);
    let problems = check.problems.join("\n");
    assert_eq!(check.problems.len(), 3, "{problems}");
    for says in [
        format!(
            "under key \"{}-again\" moved 4 from {}",
            twice.key, twice.payer
        ),
        "though no OK outcome was seen for that key".to_owned(),
        format!("{} holds 0, expected 4 (funded with", twice.payer),
        format!(
            "{} holds 44, expected 40 (funded with 0, 0 OK payments out, 10 in)",
            plan.payee
        ),
    ] {
        assert!(problems.contains(&says), "{says:?} not in:\n{problems}");
    }
}

async fn a_missing_or_misnamed_payment_fails_the_ledger_check(db: &TestDb) {
    let (channel, plan) = opened(db).await;
    let mut expected = play(&channel, &plan).await;
    // An outcome that said OK for an overdraw (no payment exists), and one naming the
    // wrong payment.
    let overdraw = plan.requests.iter().find(|r| r.overdraws).unwrap();
    expected.push(ExpectedPayment {
        key: overdraw.key.clone(),
        payer: plan.devices[overdraw.device].payer.clone(),
        payee: plan.payee.clone(),
        amount: 4,
        payment_id: None,
    });
    expected[0].payment_id = Some("pay_not_this_one".into());

    let check = load::check_ledger(&channel, &plan.accounts(), &expected)
        .await
        .unwrap();
    let problems = check.problems.join("\n");
    for says in [
        format!(
            "no payment under key {}, whose outcome was OK",
            overdraw.key
        ),
        format!(
            "the outcome of {} named payment pay_not_this_one, the ledger holds",
            expected[0].key
        ),
        format!(
            "{} holds 0, expected -4",
            plan.devices[overdraw.device].payer
        ),
        format!("{} holds 40, expected 44", plan.payee),
    ] {
        assert!(problems.contains(&says), "{says:?} not in:\n{problems}");
    }
    assert_eq!(check.problems.len(), 4, "{problems}");
}
