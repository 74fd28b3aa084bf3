//! Proto3 JSON read as Go's `protojson` reads it (what grpc-gateway runs), at every scalar
//! type's extremes: `scalar` holds the rules for one value, `body` applies them to a request
//! body by its message's descriptor. Both hand prost-reflect values it reads exactly, and it
//! builds the message.

mod body;
mod scalar;

pub(crate) use body::{BodyError, read_field, read_message};
pub(crate) use scalar::{Token, scalar, wrapped};
