//! `keel bench`'s engine: a gRPC load generator on Keel's own client, in the spirit of ghz.
//! It calls any method in any of the four modes with messages from a JSON template rendered
//! per call ([`template`]), closed loop or at a fixed rate without coordinated omission
//! ([`run()`]), and summarizes latencies from an HDR histogram, status codes, errors and
//! latency over time ([`report`]), as text, JSON, CSV or one HTML page ([`html`]). Requests
//! are encoded before the call and responses skipped, not decoded, so the generator costs
//! far less per call than the server it loads.

mod codec;
pub mod html;
pub mod record;
pub mod report;
mod requests;
pub mod run;
pub mod template;

pub use codec::RawCodec;
pub use report::Report;
pub use requests::Requests;
pub use run::{Plan, Progress, Stop, run};
pub use template::Template;
