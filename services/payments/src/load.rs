//! What the load tools share, in the library so that tests drive it against a real server.
//!
//! - [`accounts`]: the calls around a run: open and fund the run's own accounts, read
//!   balances, list an account's payments.

pub mod accounts;
