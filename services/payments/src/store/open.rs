//! Opening a store from a URL: the one place that knows which backends exist.

use std::sync::Arc;

use super::api::Store;
use super::config::StoreConfig;
use super::error::StoreError;
use super::group_commit::{BatchStore, GroupCommit};
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
///
/// Unless [`StoreConfig::batch_size`] is 1, payments go through group commit: a queue from
/// which [`StoreConfig::committers`] tasks (spawned on the current Tokio runtime) commit up to
/// `batch_size` waiting payments per transaction, with the same outcome for each as alone.
/// Dropping the returned store stops them.
///
/// Every operation is bounded in time by the configuration's timeouts (statement, transaction,
/// commit): a database that does not answer makes it fail with [`StoreError::Unavailable`],
/// a write within [`StoreConfig::write_timeout`], a read within
/// [`StoreConfig::transaction_timeout`].
pub async fn open_with(url: &str, config: StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    let (batch_size, committers) = (config.batch_size, config.committers);
    let write_timeout = config.write_timeout();
    let (engine, committers): (Arc<dyn BatchStore>, usize) = match scheme {
        "sqlite" => (
            Arc::new(sqlite::open(url, config).await?),
            or_default(committers, 1),
        ),
        "postgres" | "postgresql" => (
            Arc::new(postgres::open(url, config).await?),
            or_default(committers, 2),
        ),
        _ => {
            return Err(StoreError::Config(format!(
                "unsupported database URL {:?}: expected sqlite://... or postgres://...",
                redact(url)
            )));
        }
    };
    if batch_size > 1 {
        Ok(Arc::new(GroupCommit::start(
            engine,
            batch_size,
            committers,
            write_timeout,
        )))
    } else {
        Ok(engine)
    }
}

/// `configured`, or `default` when it is 0.
fn or_default(configured: usize, default: usize) -> usize {
    if configured == 0 { default } else { configured }
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
