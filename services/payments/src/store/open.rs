//! Opening a store from a URL: the one place that knows which backends exist.

use std::sync::Arc;

use super::api::Store;
use super::config::StoreConfig;
use super::error::StoreError;
use super::{postgres, sqlite};

/// Opens the store `url` names with the default [`StoreConfig`]: `sqlite://path/to/file.db`
/// (created with its directory if missing) or `postgres://user@host:port/database`. Applies
/// pending migrations.
///
/// Errors: [`StoreError::Config`] for an unsupported or malformed URL,
/// [`StoreError::Unavailable`] when the database cannot be reached in
/// [`StoreConfig::acquire_timeout`].
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, StoreConfig::default()).await
}

/// [`open`] with a configuration.
pub async fn open_with(url: &str, config: StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    match scheme {
        "sqlite" => Ok(Arc::new(sqlite::open(url, config).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(postgres::open(url, config).await?)),
        _ => Err(StoreError::Config(format!(
            "unsupported database URL {:?}: expected sqlite://... or postgres://...",
            redact(url)
        ))),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("mysql://u:secret@h/db"), "mysql://u:***@h/db");
        assert_eq!(super::redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(super::redact("nonsense"), "nonsense");
    }
}
