//! `keel bench`'s engine: a gRPC load generator in the spirit of ghz, on HTTP/2 connections of
//! its own with Keel's client TLS ([`connection`]).
//! It calls any method in any of the four modes with messages from a JSON template rendered
//! per call ([`template`]), closed loop or at a fixed rate without coordinated omission
//! ([`run()`]), and summarizes latencies from an HDR histogram, status codes, errors and
//! latency over time ([`report`]), as text, JSON, CSV or one HTML page ([`html`]). It also
//! makes REST calls (a JSON body rendered from the same template, success on 2xx, failures
//! counted by HTTP status), so a gateway's routes are loaded the same way. Requests
//! are encoded before the call and responses skipped, not decoded, so the generator costs
//! far less per call than the server it loads.

pub mod connection;
pub mod html;
pub mod record;
pub mod report;
mod requests;
pub mod run;
pub mod template;

pub use report::Report;
pub use requests::{Call, Requests};
pub use run::{Plan, Progress, Stop, Target, run};
pub use template::Template;
