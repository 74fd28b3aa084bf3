//! Log output for every `keel` command: `KEEL_LOG` filters (default `info`), `KEEL_LOG_FORMAT`
//! picks `text` (default) or `json`. Logs go to stderr; stdout is for results.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("KEEL_LOG")
        .or_else(|_| EnvFilter::try_new("info"))
        .context("invalid KEEL_LOG filter (example: KEEL_LOG=info,keel=debug)")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match std::env::var("KEEL_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => bail!("KEEL_LOG_FORMAT must be `text` or `json`, not {other:?}"),
    }
    Ok(())
}
