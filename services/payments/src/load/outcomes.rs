//! The run's bookkeeping: every publish and how the broker answered it, every outcome the
//! bridge published and whether it is the one its request must get, and from all of that
//! what the run showed and what went wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use super::ledger::ExpectedPayment;
use super::mqtt::{Ack, Event};
use super::plan::{Plan, Send};
use super::timing::{TimingSummary, Timings};

/// One outcome as the bridge publishes it on a response topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The device the request came from.
    pub device: String,
    /// The request's key, `{device}:{request id}`.
    pub key: String,
    /// The final gRPC code's name, `OK` or `FAILED_PRECONDITION`.
    pub code: String,
    /// The `google.rpc.ErrorInfo` reason among the status details, if any.
    pub reason: Option<String>,
    /// The status message.
    pub message: String,
    /// On OK, the id of the payment in the response.
    pub payment_id: Option<String>,
}

impl Outcome {
    /// Reads `{"device", "key", "code", "status": google.rpc.Status JSON, "response"}`.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let json: serde_json::Value =
            serde_json::from_slice(payload).map_err(|error| format!("not JSON: {error}"))?;
        let text = |field: &str| {
            json.get(field)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("no string {field:?} in {json}"))
        };
        let status = &json["status"];
        let reason = status["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|detail| {
                detail["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/google.rpc.ErrorInfo"))
            })
            .find_map(|detail| detail["reason"].as_str().map(str::to_owned));
        let payment = &json["response"]["payment"];
        let payment_id = payment["paymentId"]
            .as_str()
            .or_else(|| payment["payment_id"].as_str())
            .map(str::to_owned);
        Ok(Self {
            device: text("device")?,
            key: text("key")?,
            code: text("code")?,
            reason,
            message: status["message"].as_str().unwrap_or_default().to_owned(),
            payment_id,
        })
    }
}

/// What was counted, as the summary reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests published at least once.
    pub published: usize,
    /// Second publishes of a request.
    pub resent: usize,
    /// Malformed payloads published.
    pub malformed: usize,
    /// Requests the broker acknowledged (PUBACK) at least one publish of.
    pub acknowledged: usize,
    /// PUBACKs in all, resends and malformed payloads included.
    pub pubacks: usize,
    /// PUBACKs saying that nobody subscribes to the topic.
    pub no_subscribers: usize,
    /// Requests with at least one outcome.
    pub outcomes: usize,
    /// Outcomes beyond the first of a request (a resend answered again).
    pub duplicates: usize,
    /// Outcomes of devices not in this run, ignored.
    pub foreign: usize,
    /// Device connections lost and resumed (a broker restart, a network cut).
    pub disconnects: usize,
    /// Times the response subscription's connection was lost and resumed.
    pub subscriber_disconnects: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Planned,
    Published,
    Acked,
    Refused,
    Failed,
}

/// The first outcome of a request.
#[derive(Debug)]
struct Seen {
    code: String,
    payment_id: Option<String>,
}

/// Wrong things by kind: how many, and the first.
#[derive(Debug, Default)]
struct Problems(BTreeMap<&'static str, (usize, String)>);

impl Problems {
    fn add(&mut self, kind: &'static str, example: String) {
        self.0.entry(kind).or_insert((0, example)).0 += 1;
    }
}

/// Everything the run saw, fed [`Event`]s as they come.
#[derive(Debug)]
pub struct Tally {
    plan: Arc<Plan>,
    counts: Counts,
    sends: Vec<SendState>,
    connected: usize,
    is_connected: Vec<bool>,
    lost: Vec<Option<String>>,
    awaiting: usize,
    awaiting_by_device: Vec<usize>,
    not_sent: (usize, Option<String>),
    refused: (usize, Option<String>),
    acked: Vec<bool>,
    outcomes: Vec<Option<Seen>>,
    acked_without_outcome: usize,
    codes: BTreeMap<String, usize>,
    problems: Problems,
    subscribed: bool,
    subscriber_lost: Option<String>,
    publishing_done: bool,
    timings: Timings,
}

impl Tally {
    /// Nothing seen yet of `plan`.
    pub fn new(plan: Arc<Plan>) -> Self {
        let (devices, requests) = (plan.devices.len(), plan.requests.len());
        Self {
            counts: Counts::default(),
            sends: vec![SendState::Planned; plan.sends.len()],
            connected: 0,
            is_connected: vec![false; devices],
            lost: vec![None; devices],
            awaiting: 0,
            awaiting_by_device: vec![0; devices],
            not_sent: (0, None),
            refused: (0, None),
            acked: vec![false; requests],
            outcomes: (0..requests).map(|_| None).collect(),
            acked_without_outcome: 0,
            codes: BTreeMap::new(),
            problems: Problems::default(),
            subscribed: false,
            subscriber_lost: None,
            publishing_done: false,
            timings: Timings::new(requests),
            plan,
        }
    }

    /// Takes one event into account.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { device } => {
                if !std::mem::replace(&mut self.is_connected[device], true) {
                    self.connected += 1;
                }
            }
            Event::DeviceDisconnected { .. } => self.counts.disconnects += 1,
            Event::SubscriberDisconnected { .. } => self.counts.subscriber_disconnects += 1,
            Event::DeviceLost { device, error } => {
                if self.lost[device].is_none() {
                    self.lost[device] = Some(error);
                    self.awaiting -= std::mem::take(&mut self.awaiting_by_device[device]);
                }
            }
            Event::Published { send } => self.published(send),
            Event::PublishFailed { send, error } => self.publish_failed(send, error),
            Event::Acked { send, ack } => self.acked(send, ack),
            Event::PublishingDone => self.publishing_done = true,
            Event::Subscribed => self.subscribed = true,
            Event::SubscriberLost { error } => {
                self.subscriber_lost.get_or_insert(error);
            }
            Event::Response {
                topic,
                correlation,
                payload,
            } => self.response(&topic, correlation.as_ref(), &payload),
        }
    }

    fn count_send(&mut self, send: Send, up: bool) {
        let counter = match send {
            Send::Request { resend: false, .. } => &mut self.counts.published,
            Send::Request { resend: true, .. } => &mut self.counts.resent,
            Send::Malformed { .. } => &mut self.counts.malformed,
        };
        if up {
            *counter += 1;
        } else {
            *counter -= 1;
        }
    }

    fn published(&mut self, send: usize) {
        if self.sends[send] != SendState::Planned {
            return;
        }
        self.sends[send] = SendState::Published;
        let planned = self.plan.sends[send];
        self.count_send(planned, true);
        if let Send::Request { request, .. } = planned {
            self.timings.published(request, Instant::now());
        }
        let device = self.plan.device_of(planned);
        if self.lost[device].is_none() {
            self.awaiting += 1;
            self.awaiting_by_device[device] += 1;
        }
    }

    fn publish_failed(&mut self, send: usize, error: String) {
        let planned = self.plan.sends[send];
        let device = self.plan.device_of(planned);
        if self.sends[send] == SendState::Published {
            self.count_send(planned, false);
            if self.lost[device].is_none() {
                self.awaiting -= 1;
                self.awaiting_by_device[device] -= 1;
            }
        }
        self.sends[send] = SendState::Failed;
        self.not_sent.0 += 1;
        let id = &self.plan.devices[device].id;
        self.not_sent
            .1
            .get_or_insert_with(|| format!("{id}: {error}"));
    }

    fn acked(&mut self, send: usize, ack: Ack) {
        if self.sends[send] != SendState::Published {
            return;
        }
        let planned = self.plan.sends[send];
        let device = self.plan.device_of(planned);
        if self.lost[device].is_none() {
            self.awaiting -= 1;
            self.awaiting_by_device[device] -= 1;
        }
        self.counts.pubacks += 1;
        match ack {
            Ack::Refused(reason) => {
                self.sends[send] = SendState::Refused;
                self.refused.0 += 1;
                self.refused.1.get_or_insert(reason);
                return;
            }
            Ack::NoSubscribers => self.counts.no_subscribers += 1,
            Ack::Accepted => {}
        }
        self.sends[send] = SendState::Acked;
        if let Send::Request { request, .. } = planned
            && !std::mem::replace(&mut self.acked[request], true)
        {
            self.counts.acknowledged += 1;
            if self.outcomes[request].is_none() {
                self.acked_without_outcome += 1;
            }
        }
    }

    fn response(&mut self, topic: &str, correlation: Option<&Bytes>, payload: &[u8]) {
        let outcome = match Outcome::parse(payload) {
            Ok(outcome) => outcome,
            Err(error) => {
                if topic
                    .rsplit('/')
                    .next()
                    .and_then(|d| self.plan.device_index(d))
                    .is_some()
                {
                    self.problems
                        .add("unreadable outcomes", format!("on {topic}: {error}"));
                } else {
                    self.counts.foreign += 1;
                }
                return;
            }
        };
        let Some(device) = self.plan.device_index(&outcome.device) else {
            self.counts.foreign += 1;
            return;
        };
        let key = outcome.key.as_str();
        let Some(request) = self
            .plan
            .request_index(key)
            .filter(|r| self.plan.requests[*r].device == device)
        else {
            self.problems.add(
                "outcomes for a key this device never sent",
                format!("{} {key}", outcome.device),
            );
            return;
        };
        if topic.rsplit('/').next() != Some(outcome.device.as_str()) {
            self.problems.add(
                "outcomes on another device's topic",
                format!("{key} on {topic}"),
            );
        }
        match correlation {
            Some(data) if data.as_ref() == key.as_bytes() => {}
            Some(data) => self.problems.add(
                "outcomes whose correlation data is not their request's",
                format!("{key}: {:?}", String::from_utf8_lossy(data)),
            ),
            None => self.problems.add(
                "outcomes without their request's correlation data",
                key.to_owned(),
            ),
        }
        let planned = &self.plan.requests[request];
        let expected = if planned.overdraws {
            outcome.code == "FAILED_PRECONDITION"
                && outcome.reason.as_deref() == Some("INSUFFICIENT_FUNDS")
        } else {
            outcome.code == "OK" && outcome.payment_id.is_some()
        };
        if !expected {
            let wanted = if planned.overdraws {
                "FAILED_PRECONDITION INSUFFICIENT_FUNDS"
            } else {
                "OK with a payment"
            };
            self.problems.add(
                "outcomes other than their request must get",
                format!(
                    "{key}: expected {wanted}, got {} {} {:?}",
                    outcome.code,
                    outcome.reason.as_deref().unwrap_or("(no reason)"),
                    outcome.message
                ),
            );
        }
        match &self.outcomes[request] {
            None => {
                *self.codes.entry(outcome.code.clone()).or_default() += 1;
                self.counts.outcomes += 1;
                self.timings.answered(request, Instant::now());
                if self.acked[request] {
                    self.acked_without_outcome -= 1;
                }
                self.outcomes[request] = Some(Seen {
                    code: outcome.code,
                    payment_id: outcome.payment_id,
                });
            }
            Some(first) => {
                self.counts.duplicates += 1;
                if first.code != outcome.code || first.payment_id != outcome.payment_id {
                    self.problems.add(
                        "requests answered twice, differently",
                        format!(
                            "{key}: {} {:?}, then {} {:?}",
                            first.code, first.payment_id, outcome.code, outcome.payment_id
                        ),
                    );
                }
            }
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Publish-to-outcome latencies and the outcome rate so far, once anything was answered.
    pub fn timings(&self) -> Option<TimingSummary> {
        self.timings.summary()
    }

    /// Unique outcomes by code name.
    pub fn codes(&self) -> &BTreeMap<String, usize> {
        &self.codes
    }

    /// Devices connected so far.
    pub fn connected(&self) -> usize {
        self.connected
    }

    /// The first device lost, with why.
    pub fn first_lost(&self) -> Option<(&str, &str)> {
        self.lost.iter().enumerate().find_map(|(d, lost)| {
            lost.as_deref()
                .map(|error| (self.plan.devices[d].id.as_str(), error))
        })
    }

    /// Whether the response subscription is in place; why it never will be, if so.
    pub fn subscribed(&self) -> Result<bool, &str> {
        match &self.subscriber_lost {
            Some(error) => Err(error),
            None => Ok(self.subscribed),
        }
    }

    /// Whether publishing is over.
    pub fn publishing_done(&self) -> bool {
        self.publishing_done
    }

    /// Acknowledged requests without an outcome.
    pub fn missing(&self) -> usize {
        self.acked_without_outcome
    }

    /// Publishes handed to the broker that it has not answered.
    pub fn unacknowledged(&self) -> usize {
        self.sends
            .iter()
            .filter(|s| **s == SendState::Published)
            .count()
    }

    /// Whether nothing more is to come: everything published, every publish answered (or
    /// its device gone), and every acknowledged request answered (or no way to hear it).
    pub fn complete(&self) -> bool {
        self.publishing_done
            && self.awaiting == 0
            && (self.acked_without_outcome == 0 || self.subscriber_lost.is_some())
    }

    /// The payments the ledger must hold: one per request whose first outcome was OK.
    pub fn expected_payments(&self) -> Vec<ExpectedPayment> {
        let plan = &self.plan;
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(r, seen)| {
                let seen = seen.as_ref().filter(|seen| seen.code == "OK")?;
                let planned = &plan.requests[r];
                Some(ExpectedPayment {
                    key: planned.key.clone(),
                    payer: plan.devices[planned.device].payer.clone(),
                    payee: plan.payee.clone(),
                    amount: planned.amount,
                    payment_id: seen.payment_id.clone(),
                })
            })
            .collect()
    }

    /// What went wrong in the run, one sentence each; empty when nothing did.
    pub fn failures(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let lost = self.lost.iter().filter(|l| l.is_some()).count();
        if let Some((device, error)) = self.first_lost() {
            reasons.push(format!(
                "{lost} devices lost their MQTT connection (first: {device}: {error})"
            ));
        }
        if let (count, Some(first)) = &self.not_sent {
            reasons.push(format!("{count} publishes were not sent (first: {first})"));
        }
        if let Some(error) = &self.subscriber_lost {
            reasons.push(format!("the response subscription was lost: {error}"));
        }
        let unacknowledged = self.unacknowledged();
        if unacknowledged > 0 {
            reasons.push(format!(
                "{unacknowledged} publishes were never acknowledged by the broker"
            ));
        }
        if let (count, Some(first)) = &self.refused {
            reasons.push(format!(
                "the broker refused {count} publishes (first: {first})"
            ));
        }
        if self.acked_without_outcome > 0 {
            let first = (0..self.acked.len())
                .find(|r| self.acked[*r] && self.outcomes[*r].is_none())
                .map_or("", |r| self.plan.requests[r].key.as_str());
            let mut reason = format!(
                "{} acknowledged requests have no outcome (first: {first})",
                self.acked_without_outcome
            );
            if self.counts.no_subscribers > 0 {
                reason.push_str(&format!(
                    "; the broker said nobody subscribed to {} publishes: is the bridge \
                     running and subscribed to the request topics?",
                    self.counts.no_subscribers
                ));
            }
            reasons.push(reason);
        }
        for (kind, (count, first)) in &self.problems.0 {
            reasons.push(format!("{count} {kind} (first: {first})"));
        }
        let (ok, refused) = self.plan.expected();
        let code = |name: &str| self.codes.get(name).copied().unwrap_or(0);
        let others = self.counts.outcomes - code("OK") - code("FAILED_PRECONDITION");
        if code("OK") != ok || code("FAILED_PRECONDITION") != refused || others > 0 {
            reasons.push(format!(
                "outcomes do not add up: OK {} of {ok} expected, FAILED_PRECONDITION {} of \
                 {refused} expected, {others} other",
                code("OK"),
                code("FAILED_PRECONDITION")
            ));
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::load::PlanSettings;

    fn plan() -> Arc<Plan> {
        let settings = PlanSettings {
            run_id: "t".into(),
            devices: 2,
            requests: 10,
            resend: 0.2,
            amount: 3,
            currency: "EUR".into(),
            insufficient: 2,
            malformed: 1,
        };
        Arc::new(Plan::new(&settings, &mut rand::rngs::StdRng::seed_from_u64(1)).unwrap())
    }

    /// The outcome the bridge publishes for request `r` (see keel-bridge's deliver stage).
    fn outcome(plan: &Plan, r: usize, code: &str, payment: Option<&str>) -> Event {
        let planned = &plan.requests[r];
        let device = &plan.devices[planned.device].id;
        let mut json = serde_json::json!({
            "device": device, "key": planned.key, "route": "payments", "code": code,
            "status": {"code": 0, "message": "", "details": []},
        });
        if code == "FAILED_PRECONDITION" {
            json["status"] = serde_json::json!({"code": 9, "message": "insufficient funds",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "INSUFFICIENT_FUNDS", "domain": "payments.keel.dev"}]});
        }
        if let Some(id) = payment {
            json["response"] = serde_json::json!({"payment": {"paymentId": id}});
        }
        Event::Response {
            topic: format!("payment/response/{device}"),
            correlation: Some(Bytes::from(planned.key.clone())),
            payload: Bytes::from(serde_json::to_vec(&json).unwrap()),
        }
    }

    /// The outcome each request must get.
    fn right(plan: &Plan, r: usize) -> Event {
        if plan.requests[r].overdraws {
            outcome(plan, r, "FAILED_PRECONDITION", None)
        } else {
            outcome(plan, r, "OK", Some(&format!("pay-{r}")))
        }
    }

    /// A tally that saw every publish sent and acknowledged.
    fn published(plan: &Arc<Plan>) -> Tally {
        let mut tally = Tally::new(plan.clone());
        for device in 0..plan.devices.len() {
            tally.handle(Event::Connected { device });
        }
        for send in 0..plan.sends.len() {
            tally.handle(Event::Published { send });
            let ack = Ack::Accepted;
            tally.handle(Event::Acked { send, ack });
        }
        tally.handle(Event::PublishingDone);
        tally
    }

    #[test]
    fn a_run_where_every_request_gets_its_outcome_passes() {
        let plan = plan();
        let mut tally = published(&plan);
        assert_eq!(tally.missing(), 10);
        assert!(!tally.complete());
        for r in 0..10 {
            tally.handle(right(&plan, r));
        }
        // A resend answered again, with the same payment.
        tally.handle(right(&plan, 3));
        assert!(tally.complete());
        assert_eq!(tally.failures(), Vec::<String>::new());
        let counts = tally.counts();
        assert_eq!(
            (counts.published, counts.resent, counts.malformed),
            (10, 2, 1)
        );
        assert_eq!((counts.acknowledged, counts.pubacks), (10, 13));
        assert_eq!((counts.outcomes, counts.duplicates), (10, 1));
        assert_eq!(tally.codes()["OK"], 8);
        assert_eq!(tally.codes()["FAILED_PRECONDITION"], 2);
        let payments = tally.expected_payments();
        assert_eq!(payments.len(), 8);
        assert!(
            payments
                .iter()
                .all(|p| p.amount == 3 && p.payee == "t-payee")
        );
    }

    #[test]
    fn wrong_outcomes_are_each_named_with_their_first_example() {
        let plan = plan();
        let mut tally = published(&plan);
        let ok = (0..10).find(|r| !plan.requests[*r].overdraws).unwrap();
        let overdraw = (0..10).find(|r| plan.requests[*r].overdraws).unwrap();
        tally.handle(right(&plan, ok));
        // The same request answered again with another payment: money moved twice.
        tally.handle(outcome(&plan, ok, "OK", Some("pay-other")));
        // An overdraw that went through.
        tally.handle(outcome(&plan, overdraw, "OK", Some("pay-x")));
        // Another run's device: not ours, ignored.
        let mut foreign = right(&plan, 1);
        if let Event::Response { payload, .. } = &mut foreign {
            let text = String::from_utf8(payload.to_vec()).unwrap();
            *payload = Bytes::from(text.replace("\"t-d", "\"u-d"));
        }
        tally.handle(foreign);
        // Correlation data not echoed.
        let other = (0..10)
            .find(|r| *r != ok && !plan.requests[*r].overdraws)
            .unwrap();
        let mut bare = right(&plan, other);
        if let Event::Response { correlation, .. } = &mut bare {
            *correlation = None;
        }
        tally.handle(bare);
        tally.handle(Event::Response {
            topic: "payment/response/t-d0".into(),
            correlation: None,
            payload: Bytes::from_static(b"{\"device\": \"t-d0\""),
        });

        assert!(!tally.complete());
        assert_eq!(tally.missing(), 7);
        let failures = tally.failures().join("\n");
        for says in [
            "7 acknowledged requests have no outcome",
            "1 requests answered twice, differently",
            "1 outcomes other than their request must get",
            "expected FAILED_PRECONDITION INSUFFICIENT_FUNDS, got OK",
            "1 outcomes without their request's correlation data",
            "1 unreadable outcomes",
            "outcomes do not add up: OK 3 of 8 expected, FAILED_PRECONDITION 0 of 2 expected",
        ] {
            assert!(failures.contains(says), "{says:?} not in:\n{failures}");
        }
        assert_eq!(tally.counts().foreign, 1);
    }

    #[test]
    fn a_lost_device_ends_the_wait_for_its_acknowledgements_and_fails_the_run() {
        let plan = plan();
        let mut tally = Tally::new(plan.clone());
        for send in 0..plan.sends.len() {
            tally.handle(Event::Published { send });
        }
        tally.handle(Event::PublishingDone);
        assert!(!tally.complete());
        for device in 0..2 {
            let error = "connection reset".to_owned();
            tally.handle(Event::DeviceLost { device, error });
        }
        assert!(tally.complete());
        assert_eq!(tally.unacknowledged(), 13);
        let failures = tally.failures().join("\n");
        assert!(
            failures
                .contains("2 devices lost their MQTT connection (first: t-d0: connection reset)"),
            "{failures}"
        );
        assert!(
            failures.contains("13 publishes were never acknowledged"),
            "{failures}"
        );
    }

    #[test]
    fn a_device_that_reconnects_is_counted_and_its_publishes_still_awaited() {
        let plan = plan();
        let mut tally = Tally::new(plan.clone());
        tally.handle(Event::Connected { device: 0 });
        tally.handle(Event::Published { send: 0 });
        tally.handle(Event::PublishingDone);
        let error = "connection reset".to_owned();
        tally.handle(Event::DeviceDisconnected { device: 0, error });
        tally.handle(Event::SubscriberDisconnected {
            error: "connection reset".into(),
        });
        tally.handle(Event::Connected { device: 0 });
        assert_eq!(tally.connected(), 1);
        assert_eq!(tally.first_lost(), None);
        assert!(!tally.complete(), "the publish is still awaited");
        tally.handle(Event::Acked {
            send: 0,
            ack: Ack::Accepted,
        });
        assert_eq!(tally.unacknowledged(), 0);
        let counts = tally.counts();
        assert_eq!((counts.disconnects, counts.subscriber_disconnects), (1, 1));
        assert!(
            !tally.failures().iter().any(|f| f.contains("lost")),
            "{:?}",
            tally.failures()
        );
    }

    #[test]
    fn nobody_subscribed_is_hinted_at_when_outcomes_are_missing() {
        let plan = plan();
        let mut tally = Tally::new(plan.clone());
        tally.handle(Event::Published { send: 0 });
        tally.handle(Event::Acked {
            send: 0,
            ack: Ack::NoSubscribers,
        });
        tally.handle(Event::Published { send: 1 });
        tally.handle(Event::PublishFailed {
            send: 1,
            error: "gone".into(),
        });
        let failures = tally.failures().join("\n");
        assert!(failures.contains("is the bridge running"), "{failures}");
        assert!(
            failures.contains("1 publishes were not sent (first: t-d"),
            "{failures}"
        );
        assert!(failures.contains(": gone)"), "{failures}");
        assert_eq!(tally.counts().published, 1);
    }
}
