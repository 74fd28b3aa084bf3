//! Calling and answering methods known only at run time, from descriptors (reflection, a
//! descriptor set): a tonic codec for prost-reflect messages, the standard types every such
//! client needs, error details decoded for display, and a [`reflect`]ion client that fetches
//! a server's descriptors. `keel call` and the gateway share them; neither needs Keel's
//! server to do so.

mod codec;
pub mod reflect;
mod status;
mod types;

pub use codec::{DynamicCodec, DynamicDecoder, DynamicEncoder};
pub use status::{Detail, details, status_json};
pub use types::{add_standard, standard};
