//! The devices' run, decided before the first publish: which device sends which request,
//! which requests overdraw, which are published twice and when, where the malformed payloads
//! go, and how much each payer is funded, so that the outcomes and the ledger can be checked
//! against it exactly.

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use rand::Rng;

use crate::pb::v1::ProcessRequest;

/// Most devices of one run: each is an MQTT connection, a socket, of its own.
pub const MAX_DEVICES: usize = 1000;
/// Most requests of one run: the plan and the tally hold each in memory.
pub const MAX_REQUESTS: usize = 1_000_000;
/// Longest run id. It prefixes device, account and request ids, and a key is
/// `{device}:{request id}`, which the service takes up to 128 characters.
pub const MAX_RUN_ID_LEN: usize = 40;
/// A resend goes out within this many publishes after its original (0: right after).
const MAX_RESEND_DELAY: usize = 200;

/// What a run is asked to do; each field is the `payments-devices` flag of the same name,
/// and [`Plan::new`]'s errors name the flags.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// Prefix of every device, account and request id of the run.
    pub run_id: String,
    /// Devices, each publishing on a topic (and connection) of its own.
    pub devices: usize,
    /// Requests in all, spread over the devices in turn.
    pub requests: usize,
    /// Fraction of the requests published a second time.
    pub resend: f64,
    /// Amount of each payment meant to succeed, in minor units.
    pub amount: i64,
    /// ISO 4217 currency of the accounts and payments.
    pub currency: String,
    /// Requests meant to overdraw their payer (FAILED_PRECONDITION, INSUFFICIENT_FUNDS).
    pub insufficient: usize,
    /// Payloads published that are not JSON at all.
    pub malformed: usize,
}

/// One device and the account it pays from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device id, `{run}-d{n}`: the last level of its request topic.
    pub id: String,
    /// Its payer account, `{run}-d{n}-payer`.
    pub payer: String,
    /// What the payer is funded with: exactly what its payments meant to succeed need.
    pub funded: i64,
}

/// One payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRequest {
    /// Index of the device sending it.
    pub device: usize,
    /// The request id, `{run}-r{n}`: the payload's `idempotencyKey`.
    pub request_id: String,
    /// The key the bridge calls payments with, `{device}:{request id}`.
    pub key: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Whether it asks for more than its payer will ever hold, so it must fail.
    pub overdraws: bool,
    /// The W3C `traceparent` it is published with (the same on its resend).
    pub traceparent: String,
}

/// One publish, in the order of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// Request `request` (an index into [`Plan::requests`]), the first time or again.
    Request {
        /// The request.
        request: usize,
        /// Whether this is the second publish of it.
        resend: bool,
    },
    /// Malformed payload number `index`, sent by device `device`.
    Malformed {
        /// The device sending it.
        device: usize,
        /// Its number among the malformed payloads.
        index: usize,
    },
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run id.
    pub run_id: String,
    /// The currency of every account and payment.
    pub currency: String,
    /// The devices, by index.
    pub devices: Vec<Device>,
    /// The account every payment goes to, `{run}-payee`, opened with nothing in it.
    pub payee: String,
    /// The requests, by index.
    pub requests: Vec<PlannedRequest>,
    /// Every publish, in order: each request once, the resent ones again a little later,
    /// the malformed payloads spread among them.
    pub sends: Vec<Send>,
    input: MessageDescriptor,
}

impl Plan {
    /// Plans a run; the error says which setting is wrong and why. Which requests overdraw
    /// or are resent, and how much later, is drawn from `rng`.
    pub fn new(settings: &PlanSettings, rng: &mut impl Rng) -> Result<Self, String> {
        check(settings)?;
        let run = &settings.run_id;
        let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .map_err(|error| format!("the payments descriptor set does not decode: {error}"))?;
        let input = pool
            .get_message_by_name("payments.v1.ProcessRequest")
            .ok_or("the payments descriptor set has no payments.v1.ProcessRequest")?;

        let overdraws = rand::seq::index::sample(rng, settings.requests, settings.insufficient);
        let mut overdraw = vec![false; settings.requests];
        for n in overdraws {
            overdraw[n] = true;
        }
        let mut devices: Vec<Device> = (0..settings.devices)
            .map(|d| Device {
                id: format!("{run}-d{d}"),
                payer: format!("{run}-d{d}-payer"),
                funded: 0,
            })
            .collect();
        for n in 0..settings.requests {
            if !overdraw[n] {
                devices[n % settings.devices].funded += settings.amount;
            }
        }
        let requests = (0..settings.requests)
            .map(|n| {
                let device = n % settings.devices;
                let request_id = format!("{run}-r{n}");
                PlannedRequest {
                    device,
                    key: format!("{}:{request_id}", devices[device].id),
                    request_id,
                    // More than the payer ever holds: it fails whenever it is processed.
                    amount: if overdraw[n] {
                        devices[device].funded + settings.amount
                    } else {
                        settings.amount
                    },
                    overdraws: overdraw[n],
                    traceparent: format!(
                        "00-{:032x}-{:016x}-01",
                        rng.random::<u128>() | 1,
                        rng.random::<u64>() | 1
                    ),
                }
            })
            .collect();

        // Each publish gets a place (position, then originals before resends before
        // malformed payloads, then index); sorting by it gives the order.
        let resends = (settings.requests as f64 * settings.resend).round() as usize;
        let spread = (2 * settings.devices).min(MAX_RESEND_DELAY);
        let mut places: Vec<((usize, u8, usize), Send)> = (0..settings.requests)
            .map(|n| {
                let send = Send::Request {
                    request: n,
                    resend: false,
                };
                ((n, 0, n), send)
            })
            .collect();
        for n in rand::seq::index::sample(rng, settings.requests, resends) {
            let send = Send::Request {
                request: n,
                resend: true,
            };
            places.push(((n + rng.random_range(0..=spread), 1, n), send));
        }
        for index in 0..settings.malformed {
            let at = index * settings.requests / settings.malformed;
            let device = index % settings.devices;
            places.push(((at, 2, index), Send::Malformed { device, index }));
        }
        places.sort_unstable_by_key(|(place, _)| *place);

        Ok(Self {
            run_id: run.clone(),
            currency: settings.currency.clone(),
            payee: format!("{run}-payee"),
            devices,
            requests,
            sends: places.into_iter().map(|(_, send)| send).collect(),
            input,
        })
    }

    /// Every account of the run with what it is funded with: the payers, then the payee.
    pub fn accounts(&self) -> Vec<(String, i64)> {
        let payers = self.devices.iter().map(|d| (d.payer.clone(), d.funded));
        payers.chain([(self.payee.clone(), 0)]).collect()
    }

    /// The requests meant to succeed and to overdraw.
    pub fn expected(&self) -> (usize, usize) {
        let overdraw = self.requests.iter().filter(|r| r.overdraws).count();
        (self.requests.len() - overdraw, overdraw)
    }

    /// The device a publish comes from.
    pub fn device_of(&self, send: Send) -> usize {
        match send {
            Send::Request { request, .. } => self.requests[request].device,
            Send::Malformed { device, .. } => device,
        }
    }

    /// The index of the device with id `id`, if it is one of the run's.
    pub fn device_index(&self, id: &str) -> Option<usize> {
        let n: usize = id
            .strip_prefix(&self.run_id)?
            .strip_prefix("-d")?
            .parse()
            .ok()?;
        (self.devices.get(n)?.id == id).then_some(n)
    }

    /// The index of the request with key `key`, if it is one of the run's.
    pub fn request_index(&self, key: &str) -> Option<usize> {
        let (_, request_id) = key.split_once(':')?;
        let n: usize = request_id
            .strip_prefix(&self.run_id)?
            .strip_prefix("-r")?
            .parse()
            .ok()?;
        (self.requests.get(n)?.key == key).then_some(n)
    }

    /// The `ProcessRequest` request `request` asks for.
    pub fn process_request(&self, request: usize) -> ProcessRequest {
        let planned = &self.requests[request];
        let device = &self.devices[planned.device];
        ProcessRequest {
            idempotency_key: planned.request_id.clone(),
            payer_account_id: device.payer.clone(),
            payee_account_id: self.payee.clone(),
            amount_minor: planned.amount,
            currency: self.currency.clone(),
            description: format!("payments-devices {}", device.id),
            metadata: Default::default(),
        }
    }

    /// What a publish carries: the proto3 JSON of its `ProcessRequest`, or for a malformed
    /// one, text that is not JSON.
    pub fn payload(&self, send: Send) -> Vec<u8> {
        match send {
            Send::Request { request, .. } => {
                let encoded = self.process_request(request).encode_to_vec();
                let message = DynamicMessage::decode(self.input.clone(), encoded.as_slice())
                    .expect("a ProcessRequest decodes as its own descriptor");
                serde_json::to_vec(&message).expect("a message serializes as JSON")
            }
            Send::Malformed { index, .. } => format!(
                "{{\"idempotencyKey\": \"{}-m{index}\", this is not JSON",
                self.run_id
            )
            .into_bytes(),
        }
    }
}

/// Checks the settings; the error names the flag.
fn check(settings: &PlanSettings) -> Result<(), String> {
    let run = &settings.run_id;
    if run.is_empty()
        || run.len() > MAX_RUN_ID_LEN
        || !run
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "--run-id {run:?}: must be 1 to {MAX_RUN_ID_LEN} characters of A-Z a-z 0-9 _ - . \
             (it goes into topics, account ids and idempotency keys)"
        ));
    }
    if !(1..=MAX_DEVICES).contains(&settings.devices) {
        return Err(format!(
            "--devices {}: must be 1 to {MAX_DEVICES} (each device is an MQTT connection of its own)",
            settings.devices
        ));
    }
    if !(1..=MAX_REQUESTS).contains(&settings.requests) {
        return Err(format!(
            "--requests {}: must be 1 to {MAX_REQUESTS}",
            settings.requests
        ));
    }
    if !(0.0..=1.0).contains(&settings.resend) {
        return Err(format!(
            "--resend {}: is a fraction of the requests, 0 to 1 (0.05: one in twenty)",
            settings.resend
        ));
    }
    if settings.amount < 1 {
        return Err(format!(
            "--amount {}: must be at least 1 minor unit",
            settings.amount
        ));
    }
    // The largest amount planned is an overdraw: the most a payer is funded, plus one amount.
    let most_funded = settings.requests.div_ceil(settings.devices) as i64;
    if settings.amount.checked_mul(most_funded + 1).is_none() {
        return Err(format!(
            "--amount {}: too large, a payer's funding would overflow 64 bits",
            settings.amount
        ));
    }
    if settings.currency.len() != 3 || !settings.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "--currency {:?}: must be an ISO 4217 code such as EUR",
            settings.currency
        ));
    }
    if settings.insufficient > settings.requests {
        return Err(format!(
            "--insufficient {}: cannot be more than --requests {}",
            settings.insufficient, settings.requests
        ));
    }
    if settings.malformed > MAX_REQUESTS {
        return Err(format!(
            "--malformed {}: must be at most {MAX_REQUESTS}",
            settings.malformed
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn settings() -> PlanSettings {
        PlanSettings {
            run_id: "t1".into(),
            devices: 3,
            requests: 100,
            resend: 0.1,
            amount: 5,
            currency: "EUR".into(),
            insufficient: 7,
            malformed: 4,
        }
    }

    fn plan(settings: &PlanSettings) -> Plan {
        Plan::new(settings, &mut rand::rngs::StdRng::seed_from_u64(7)).unwrap()
    }

    #[test]
    fn every_request_is_sent_once_and_the_resent_ones_twice_originals_first() {
        let plan = plan(&settings());
        let mut seen = vec![0; plan.requests.len()];
        let mut malformed = 0;
        for send in &plan.sends {
            match *send {
                Send::Request { request, resend } => {
                    assert_eq!(resend, seen[request] == 1, "request {request}");
                    seen[request] += 1;
                }
                Send::Malformed { .. } => malformed += 1,
            }
        }
        assert!(seen.iter().all(|n| (1..=2).contains(n)));
        assert_eq!(seen.iter().filter(|n| **n == 2).count(), 10);
        assert_eq!(malformed, 4);
        assert_eq!(plan.sends.len(), 114);
    }

    #[test]
    fn payers_hold_exactly_what_their_payments_need_and_overdraws_exceed_it() {
        let plan = plan(&settings());
        assert_eq!(plan.expected(), (93, 7));
        for (d, device) in plan.devices.iter().enumerate() {
            let needed: i64 = plan
                .requests
                .iter()
                .filter(|r| r.device == d && !r.overdraws)
                .map(|r| r.amount)
                .sum();
            assert_eq!(device.funded, needed, "{}", device.id);
            for overdraw in plan
                .requests
                .iter()
                .filter(|r| r.device == d && r.overdraws)
            {
                assert!(overdraw.amount > device.funded);
            }
        }
        let funded: i64 = plan.accounts().iter().map(|(_, funded)| funded).sum();
        assert_eq!(funded, 93 * 5);
    }

    #[test]
    fn ids_keys_and_payloads_are_what_the_bridge_and_the_service_read() {
        let plan = plan(&settings());
        let first = &plan.requests[4];
        assert_eq!(first.request_id, "t1-r4");
        assert_eq!(first.key, "t1-d1:t1-r4");
        assert_eq!(plan.request_index("t1-d1:t1-r4"), Some(4));
        assert_eq!(plan.request_index("t1-d2:t1-r4"), None);
        assert_eq!(plan.request_index("t2-d1:t2-r4"), None);
        assert_eq!(plan.device_index("t1-d2"), Some(2));
        assert_eq!(plan.device_index("t1-d3"), None);
        assert_eq!(plan.device_index("t1-d02"), None);
        assert!(first.traceparent.starts_with("00-") && first.traceparent.len() == 55);

        let payload = plan.payload(Send::Request {
            request: 4,
            resend: false,
        });
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["idempotencyKey"], "t1-r4");
        assert_eq!(json["payerAccountId"], "t1-d1-payer");
        assert_eq!(json["payeeAccountId"], "t1-payee");
        assert_eq!(json["currency"], "EUR");
        // proto3 JSON writes 64-bit integers as strings.
        assert_eq!(json["amountMinor"], first.amount.to_string());

        let malformed = plan.payload(Send::Malformed {
            device: 0,
            index: 1,
        });
        assert!(serde_json::from_slice::<serde_json::Value>(&malformed).is_err());
    }

    #[test]
    fn bad_settings_name_their_flag() {
        type Change = fn(&mut PlanSettings);
        let cases: [(Change, &str); 9] = [
            (|s| s.run_id = "a/b".into(), "--run-id"),
            (|s| s.run_id = "x".repeat(41), "--run-id"),
            (|s| s.devices = 0, "--devices"),
            (|s| s.devices = 1001, "--devices"),
            (|s| s.requests = 0, "--requests"),
            (|s| s.resend = 1.5, "--resend"),
            (|s| s.amount = 0, "--amount"),
            (|s| s.amount = i64::MAX / 10, "--amount"),
            (|s| s.insufficient = 101, "--insufficient"),
        ];
        for (change, flag) in cases {
            let mut settings = settings();
            change(&mut settings);
            let error = Plan::new(&settings, &mut rand::rng()).unwrap_err();
            assert!(error.starts_with(flag), "{flag}: {error}");
        }
        let mut settings = settings();
        settings.currency = "eur".into();
        assert!(
            Plan::new(&settings, &mut rand::rng())
                .unwrap_err()
                .starts_with("--currency")
        );
        settings.currency = "EUR".into();
        settings.resend = f64::NAN;
        assert!(
            Plan::new(&settings, &mut rand::rng())
                .unwrap_err()
                .starts_with("--resend")
        );
    }
}
