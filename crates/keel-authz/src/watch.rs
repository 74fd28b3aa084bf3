//! Files read again when their content changes: the policy and the JWKS.
//!
//! [`WatchedFile::reload`] reads the file; content it has seen before (the file in force,
//! or a bad version already reported) is left alone, so polling costs one read and a
//! comparison. New content is parsed: a good version replaces the old one atomically (calls
//! in progress finish with the version they started with), a bad one is logged once (warn,
//! with the file and the reason) and counted, and the last good version stays in force. A
//! file caught half-written fails and is picked up whole on the next reload; writing a
//! temporary file and renaming it over the old one avoids even that.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// Which file a reload concerns (the `file` label of `keel_auth_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The authorization policy (`auth.policy`).
    Policy,
    /// The token keys (`auth.jwks`).
    Jwks,
}

impl FileKind {
    /// `policy` or `jwks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Jwks => "jwks",
        }
    }

    /// The setting that names the file.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Policy => "auth.policy",
            Self::Jwks => "auth.jwks",
        }
    }
}

/// What one reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadOutcome {
    /// The content is what was seen last time: nothing to do.
    Unchanged,
    /// A new, valid version is in force.
    Reloaded,
    /// The new content cannot be read or used; the last good version stays in force.
    Failed,
}

impl ReloadOutcome {
    /// `unchanged`, `reloaded` or `failed` (the `outcome` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Reloaded => "reloaded",
            Self::Failed => "failed",
        }
    }
}

/// Called after every reload that changed something (`Reloaded` or `Failed`), e.g. to
/// count them in a metric.
pub type ReloadObserver = Arc<dyn Fn(FileKind, ReloadOutcome) + Send + Sync>;

/// How many reloads replaced the file and how many failed, since it was first loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// New versions put in force.
    pub reloaded: u64,
    /// New versions refused (unreadable or invalid).
    pub failed: u64,
}

/// A file the first load of which failed.
#[derive(Debug, thiserror::Error)]
#[error("{setting} = {path}: {reason}", setting = kind.setting(), path = path.display())]
pub struct LoadError {
    /// Which file.
    pub kind: FileKind,
    /// Its path.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
}

/// Parses a file's content into what it holds.
pub type Parse<T> = fn(&[u8]) -> Result<T, String>;

/// A file's current good version, replaced when the file changes.
pub struct WatchedFile<T> {
    kind: FileKind,
    path: PathBuf,
    parse: Parse<T>,
    current: ArcSwap<T>,
    /// The content last read (good or bad), or the error reading it: what a reload
    /// compares against.
    seen: Mutex<Result<Vec<u8>, std::io::ErrorKind>>,
    reloaded: AtomicU64,
    failed: AtomicU64,
    observer: Option<ReloadObserver>,
}

impl<T> std::fmt::Debug for WatchedFile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedFile")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl<T> WatchedFile<T> {
    /// Loads `path` for the first time: a file that cannot be read or parsed is an error.
    pub fn load(
        kind: FileKind,
        path: &Path,
        parse: Parse<T>,
        observer: Option<ReloadObserver>,
    ) -> Result<Self, LoadError> {
        let error = |reason: String| LoadError {
            kind,
            path: path.to_owned(),
            reason,
        };
        let content = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let value = parse(&content).map_err(error)?;
        Ok(Self {
            kind,
            path: path.to_owned(),
            parse,
            current: ArcSwap::from_pointee(value),
            seen: Mutex::new(Ok(content)),
            reloaded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            observer,
        })
    }

    /// The version in force.
    pub fn current(&self) -> arc_swap::Guard<Arc<T>> {
        self.current.load()
    }

    /// Reads the file again and puts a changed, valid version in force (see the module
    /// documentation). Blocking file I/O: call it off the async workers in servers.
    pub fn reload(&self) -> ReloadOutcome {
        let read = std::fs::read(&self.path);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let same = match (&read, &*seen) {
            (Ok(new), Ok(old)) => new == old,
            (Err(new), Err(old)) => new.kind() == *old,
            _ => false,
        };
        if same {
            return ReloadOutcome::Unchanged;
        }
        let outcome = match &read {
            Err(error) => {
                self.refuse(&error.to_string());
                ReloadOutcome::Failed
            }
            Ok(content) => match (self.parse)(content) {
                Ok(value) => {
                    self.current.store(Arc::new(value));
                    self.reloaded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(file = %self.path.display(), "{} reloaded", self.kind.setting());
                    ReloadOutcome::Reloaded
                }
                Err(reason) => {
                    self.refuse(&reason);
                    ReloadOutcome::Failed
                }
            },
        };
        *seen = read.map_err(|error| error.kind());
        drop(seen);
        if let Some(observer) = &self.observer {
            observer(self.kind, outcome);
        }
        outcome
    }

    fn refuse(&self, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            file = %self.path.display(),
            %reason,
            "{} not reloaded: the new version cannot be used; the last good one stays in force",
            self.kind.setting()
        );
    }

    /// Reloads so far.
    pub fn counts(&self) -> ReloadCounts {
        ReloadCounts {
            reloaded: self.reloaded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keel-authz-watch-{}-{name}", std::process::id()))
    }

    fn number(bytes: &[u8]) -> Result<u32, String> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| "not a number".to_owned())
    }

    #[test]
    fn a_bad_version_is_counted_once_and_the_good_one_stays() {
        let path = temp("numbers");
        std::fs::write(&path, "1").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let observer: ReloadObserver = Arc::new(move |kind, outcome| {
            log.lock().unwrap().push((kind, outcome));
        });
        let file = WatchedFile::load(FileKind::Policy, &path, number, Some(observer)).unwrap();
        assert_eq!(**file.current(), 1);
        assert_eq!(file.reload(), ReloadOutcome::Unchanged);

        std::fs::write(&path, "two").unwrap();
        assert_eq!(file.reload(), ReloadOutcome::Failed);
        assert_eq!(file.reload(), ReloadOutcome::Unchanged, "reported once");
        assert_eq!(**file.current(), 1);

        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.reload(), ReloadOutcome::Failed);
        assert_eq!(**file.current(), 1);

        std::fs::write(&path, "3").unwrap();
        assert_eq!(file.reload(), ReloadOutcome::Reloaded);
        assert_eq!(**file.current(), 3);
        assert_eq!(
            file.counts(),
            ReloadCounts {
                reloaded: 1,
                failed: 2
            }
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (FileKind::Policy, ReloadOutcome::Failed),
                (FileKind::Policy, ReloadOutcome::Failed),
                (FileKind::Policy, ReloadOutcome::Reloaded),
            ]
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_first_load_that_fails_names_the_setting_and_file() {
        let path = temp("missing");
        let error = WatchedFile::load(FileKind::Jwks, &path, number, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("auth.jwks = {}: ", path.display())),
            "{error}"
        );
    }
}
