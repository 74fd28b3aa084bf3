//! What the load tools share, in the library so that tests drive it against a real server.
//!
//! - [`accounts`]: the calls around a run, for `payments-load` and `payments-devices`: open
//!   and fund the run's own accounts, read balances, list an account's payments.
//! - The device simulator behind `payments-devices`: the run's [`Plan`] (requests, overdraws,
//!   resends, malformed payloads, exact funding); its MQTT side ([`Devices`] publishing with
//!   QoS 1, one connection per device, and the response [`Subscription`]); the [`Tally`] of
//!   acknowledgements and outcomes, with their [timings](TimingSummary); and [`check_ledger`], which compares the service's
//!   payments and balances with the outcomes.

pub mod accounts;
mod ledger;
mod mqtt;
mod outcomes;
mod plan;
mod timing;

pub use ledger::{ExpectedPayment, LedgerCheck, check_ledger};
pub use mqtt::{Ack, Broker, Devices, Event, Subscription, Topics, publish_plan};
pub use outcomes::{Counts, Outcome, Tally};
pub use plan::{
    Device, MAX_DEVICES, MAX_REQUESTS, MAX_RUN_ID_LEN, Plan, PlanSettings, PlannedRequest, Send,
};
pub use timing::TimingSummary;
