//! Calling and answering methods known only at run time, from descriptors (reflection, a
//! descriptor set): a tonic codec for prost-reflect messages, the standard types every such
//! client needs, and error details decoded for display. `keel call` and the gateway share
//! them.

mod codec;
mod status;
mod types;

pub use codec::{DynamicCodec, DynamicDecoder, DynamicEncoder};
pub use status::{Detail, details};
pub use types::{add_standard, standard};
