//! Log output for Keel binaries: `<PREFIX>_LOG` filters (default `info`), `<PREFIX>_LOG_FORMAT`
//! picks `text` (default) or `json`. Logs go to stderr; stdout is for results.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// A log setting that cannot be used, naming the variable and a valid example.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoggingError(String);

/// Installs the global subscriber, configured by `{prefix}_LOG` and `{prefix}_LOG_FORMAT`.
pub fn init(prefix: &str) -> Result<(), LoggingError> {
    let filter_var = format!("{prefix}_LOG");
    let filter = match std::env::var(&filter_var) {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|e| {
            LoggingError(format!(
                "invalid {filter_var} filter {spec:?} ({e}); example: {filter_var}=info,keel=debug"
            ))
        })?,
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let format_var = format!("{prefix}_LOG_FORMAT");
    match std::env::var(&format_var).as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => {
            return Err(LoggingError(format!(
                "{format_var} must be `text` or `json`, not {other:?}"
            )));
        }
    }
    Ok(())
}
