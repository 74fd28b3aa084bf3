//! Layered loading: defaults, then a TOML file, then `PREFIX_*` environment variables, then
//! explicit overrides (command-line flags). Later layers win. Every value remembers where it
//! came from, so an error names both the key and its origin.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use keel_core::settings::{InvalidSetting, Validate};

/// Why a configuration could not be loaded. The message names the key and where its value
/// came from (file, environment variable or flag).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An override that is not of the form `KEY=VALUE`.
    #[error("{origin} expects KEY=VALUE, got {text:?}")]
    NotAPair {
        /// The text as given.
        text: String,
        /// Where it was given, e.g. `--set`.
        origin: String,
    },
    /// A key that the configuration does not have.
    #[error("unknown config key `{key}` (from {origin}); known keys: {known}")]
    UnknownKey {
        /// The dotted key as given.
        key: String,
        /// Where it was given.
        origin: String,
        /// Every key that exists, comma-separated.
        known: String,
    },
    /// A value of the wrong type or form.
    #[error("invalid value for config key `{key}` (from {origin}): {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// Where the value came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value of the right type that breaks a rule (out of range, inconsistent with
    /// another key): the same error a server's `bind` would return.
    #[error("invalid setting from {origin}: {setting}")]
    Setting {
        /// The key, its value and the rule.
        setting: InvalidSetting,
        /// Where the value came from (`defaults` when no layer set it).
        origin: String,
    },
}

/// Builds a configuration from its layers. See the module documentation for the order.
#[derive(Debug, Clone)]
pub struct Loader {
    env_prefix: String,
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    overrides: Vec<(String, String, String)>,
}

/// Variables under the prefix that are not configuration keys.
const RESERVED_ENV: &[&str] = &["CONFIG", "LOG", "LOG_FORMAT"];

impl Default for Loader {
    fn default() -> Self {
        Self::new("KEEL")
    }
}

impl Loader {
    /// A loader reading `{prefix}_*` variables, e.g. `KEEL_HTTP2_MAX_FRAME_SIZE` for
    /// `http2.max_frame_size`. `{prefix}_CONFIG`, `_LOG` and `_LOG_FORMAT` are reserved.
    pub fn new(env_prefix: &str) -> Self {
        Self {
            env_prefix: env_prefix.to_owned(),
            file: None,
            env: std::env::vars().collect(),
            overrides: Vec::new(),
        }
    }

    /// Reads this TOML file as the layer above the defaults.
    ///
    /// ```
    /// use keel::config::{Loader, ServerConfig};
    ///
    /// let path = std::env::temp_dir().join(format!("keel-doc-{}.toml", std::process::id()));
    /// std::fs::write(&path, "[http2]\nmax_concurrent_streams = 512\n")?;
    /// let loaded = Loader::new("KEEL")
    ///     .env(Vec::<(String, String)>::new())
    ///     .file(Some(&path))
    ///     .load::<ServerConfig>();
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(loaded?.http2.max_concurrent_streams, 512);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn file(mut self, path: Option<impl AsRef<Path>>) -> Self {
        self.file = path.map(|p| p.as_ref().to_owned());
        self
    }

    /// Replaces the process environment (for tests and embedding).
    ///
    /// ```
    /// use keel::config::{Loader, ServerConfig};
    ///
    /// let config: ServerConfig = Loader::new("KEEL")
    ///     .env([("KEEL_HTTP2_MAX_CONCURRENT_STREAMS", "512")])
    ///     .load()?;
    /// assert_eq!(config.http2.max_concurrent_streams, 512);
    /// # Ok::<(), keel::config::ConfigError>(())
    /// ```
    #[must_use]
    pub fn env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets dotted `key` to `value`, above every other layer; `origin` names the source in
    /// errors, e.g. `--listen`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel::config::{Loader, ServerConfig};
    ///
    /// let loader = Loader::new("KEEL").env(Vec::<(String, String)>::new());
    /// let config: ServerConfig = loader
    ///     .clone()
    ///     .set("shutdown.drain_delay", "10s", "--drain-delay")
    ///     .load()?;
    /// assert_eq!(config.shutdown.drain_delay, Duration::from_secs(10));
    ///
    /// let refused = loader.set("http2.max_frame_size", 1, "--set").load::<ServerConfig>();
    /// assert_eq!(
    ///     refused.unwrap_err().to_string(),
    ///     "invalid setting from --set: http2.max_frame_size = 1: must be between 16384 and \
    ///      16777215 bytes"
    /// );
    /// # Ok::<(), keel::config::ConfigError>(())
    /// ```
    #[must_use]
    pub fn set(mut self, key: &str, value: impl fmt::Display, origin: &str) -> Self {
        self.overrides
            .push((key.to_owned(), value.to_string(), origin.to_owned()));
        self
    }

    /// Sets `KEY=VALUE` from `pair` (e.g. a `--set` flag's argument), like [`Loader::set`].
    ///
    /// ```
    /// use keel::config::{Loader, ServerConfig};
    ///
    /// let loader = Loader::new("KEEL").env(Vec::<(String, String)>::new());
    /// let config: ServerConfig = loader
    ///     .clone()
    ///     .set_pair("http2.max_concurrent_streams=256", "--set")?
    ///     .load()?;
    /// assert_eq!(config.http2.max_concurrent_streams, 256);
    /// assert!(loader.set_pair("http2.max_concurrent_streams", "--set").is_err());
    /// # Ok::<(), keel::config::ConfigError>(())
    /// ```
    pub fn set_pair(self, pair: &str, origin: &str) -> Result<Self, ConfigError> {
        match pair.split_once('=') {
            Some((key, value)) => Ok(self.set(key.trim(), value.trim(), origin)),
            None => Err(ConfigError::NotAPair {
                text: pair.to_owned(),
                origin: origin.to_owned(),
            }),
        }
    }

    /// Merges the layers, deserializes and validates.
    pub fn load<T>(&self) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default + Validate,
    {
        let defaults = Value::try_from(T::default()).expect("defaults serialize to TOML");
        let Value::Table(mut merged) = defaults.clone() else {
            unreachable!("a config struct serializes to a table")
        };
        let mut leaves = BTreeMap::new();
        collect_leaves(&defaults, "", &mut leaves);
        let mut origins: BTreeMap<String, String> = BTreeMap::new();

        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let table: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let origin = format!("config file {}", path.display());
            merge(&mut merged, table, "", &origin, &mut origins);
        }

        let prefix = format!("{}_", self.env_prefix);
        let mut env: Vec<_> = self
            .env
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?, k, v)))
            .filter(|(rest, _, _)| !RESERVED_ENV.contains(rest))
            .collect();
        env.sort();
        for (rest, var, value) in env {
            let origin = format!("environment variable {var}");
            let Some(key) = leaves
                .keys()
                .find(|key| key.replace('.', "_").eq_ignore_ascii_case(rest))
                .cloned()
            else {
                // Other tools may share the prefix, so this is a warning, not an error.
                tracing::warn!(
                    variable = %var,
                    "ignoring {var}: it names no config key (known keys: {})",
                    leaves.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                continue;
            };
            let typed = scalar(&leaves[&key], value, &key, &origin)?;
            set_path(&mut merged, &key, typed);
            origins.insert(key, origin);
        }

        for (key, value, origin) in &self.overrides {
            let Some(default) = leaves.get(key) else {
                return Err(unknown(key.clone(), origin, &leaves));
            };
            let typed = scalar(default, value, key, origin)?;
            set_path(&mut merged, key, typed);
            origins.insert(key.clone(), origin.clone());
        }

        let origin_of = |key: &str| {
            origins
                .iter()
                .filter(|(k, _)| k.as_str() == key || k.starts_with(&format!("{key}.")))
                .map(|(_, o)| o.clone())
                .next()
                .unwrap_or_else(|| "defaults".to_owned())
        };
        let config: T = serde_path_to_error::deserialize(Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigError::Invalid {
                origin: origin_of(&key),
                // toml repeats the path on a second line; the key is already named.
                message: e
                    .into_inner()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                key,
            }
        })?;
        config.validate().map_err(|setting| ConfigError::Setting {
            origin: origin_of(&setting.key),
            setting,
        })?;
        Ok(config)
    }
}

fn unknown(key: String, origin: &str, leaves: &BTreeMap<String, Value>) -> ConfigError {
    ConfigError::UnknownKey {
        key,
        origin: origin.to_owned(),
        known: leaves.keys().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// Every dotted path to a non-table value, with the default value there.
fn collect_leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Table(table) => {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(v, &path, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// Deep-merges `layer` into `base`, recording the origin of every leaf it sets.
fn merge(
    base: &mut Table,
    layer: Table,
    prefix: &str,
    origin: &str,
    origins: &mut BTreeMap<String, String>,
) {
    for (k, v) in layer {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(Value::Table(inner)), Value::Table(layer)) => {
                merge(inner, layer, &path, origin, origins);
            }
            (_, v) => {
                base.insert(k, v);
                origins.insert(path, origin.to_owned());
            }
        }
    }
}

fn set_path(table: &mut Table, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("keys are non-empty");
    let mut current = table;
    for part in parts {
        current = current
            .entry(part)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("a config key's parents are tables");
    }
    current.insert(last.to_owned(), value);
}

/// Parses a flag or variable's text as the same TOML type as the key's default.
fn scalar(default: &Value, text: &str, key: &str, origin: &str) -> Result<Value, ConfigError> {
    let invalid = |expected: &str| ConfigError::Invalid {
        key: key.to_owned(),
        origin: origin.to_owned(),
        message: format!("expected {expected}, got {text:?}"),
    };
    Ok(match default {
        Value::Integer(_) => {
            Value::Integer(text.trim().parse().map_err(|_| invalid("an integer"))?)
        }
        Value::Float(_) => Value::Float(text.trim().parse().map_err(|_| invalid("a number"))?),
        Value::Boolean(_) => {
            Value::Boolean(text.trim().parse().map_err(|_| invalid("true or false"))?)
        }
        _ => Value::String(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use std::time::Duration;

    fn loader() -> Loader {
        Loader::new("KEEL").env(Vec::<(String, String)>::new())
    }

    fn file(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A file in the system temporary directory, removed on drop.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "keel-config-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_load_and_validate() {
        let config: ServerConfig = loader().load().unwrap();
        assert_eq!(config, ServerConfig::default());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let f = file(
            "listen = \"127.0.0.1:1\"\n[http2]\nmax_concurrent_streams = 7\n[shutdown]\ndrain_delay = \"1s\"\n",
        );
        let config: ServerConfig = loader()
            .file(Some(&f.0))
            .env([
                ("KEEL_HTTP2_MAX_CONCURRENT_STREAMS", "9"),
                ("KEEL_LOG", "debug"),
                ("OTHER_THING", "x"),
            ])
            .set("listen", "127.0.0.1:2", "--listen")
            .load()
            .unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.http2.max_concurrent_streams, 9);
        assert_eq!(config.shutdown.drain_delay, Duration::from_secs(1));
    }

    #[test]
    fn bad_file_value_names_key_and_file() {
        let f = file("[http2]\nmax_concurrent_streams = \"lots\"\n");
        let err = loader()
            .file(Some(&f.0))
            .load::<ServerConfig>()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`http2.max_concurrent_streams`"), "{msg}");
        assert!(msg.contains("config file"), "{msg}");
    }

    #[test]
    fn bad_duration_names_key() {
        let f = file("[shutdown]\ntimeout = \"soon\"\n");
        let msg = loader()
            .file(Some(&f.0))
            .load::<ServerConfig>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`shutdown.timeout`"), "{msg}");
    }

    #[test]
    fn unknown_file_key_is_rejected() {
        let f = file("[http2]\nmax_streams = 3\n");
        let msg = loader()
            .file(Some(&f.0))
            .load::<ServerConfig>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("max_streams"), "{msg}");
        assert!(msg.contains("http2"), "{msg}");
    }

    #[test]
    fn bad_env_value_names_variable() {
        let err = loader()
            .env([("KEEL_LIMITS_CONCURRENCY_LIMIT", "many")])
            .load::<ServerConfig>()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`limits.concurrency_limit`"), "{msg}");
        assert!(msg.contains("KEEL_LIMITS_CONCURRENCY_LIMIT"), "{msg}");
    }

    #[test]
    fn unknown_env_variable_is_ignored_but_unknown_flag_is_not() {
        let config: ServerConfig = loader().env([("KEEL_HTTP2_WINDOW", "1")]).load().unwrap();
        assert_eq!(config, ServerConfig::default());
        let msg = loader()
            .set("http2.window", "1", "--set")
            .load::<ServerConfig>()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("unknown config key `http2.window` (from --set)"),
            "{msg}"
        );
        assert!(msg.contains("http2.initial_stream_window"), "{msg}");
    }

    #[test]
    fn rule_violation_names_key_and_origin() {
        let msg = loader()
            .set("shutdown.drain_delay", "40s", "--set")
            .load::<ServerConfig>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "invalid setting from --set: shutdown.drain_delay = 40s: must be shorter than \
             shutdown.timeout (30s), or in-flight RPCs get no time to finish"
        );
    }

    #[test]
    fn pairs_set_keys_and_malformed_ones_say_the_form() {
        let config: ServerConfig = loader()
            .set_pair("http2.max_concurrent_streams = 5", "--set")
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(config.http2.max_concurrent_streams, 5);
        let err = loader().set_pair("listen", "--set").unwrap_err();
        assert_eq!(err.to_string(), "--set expects KEY=VALUE, got \"listen\"");
    }

    #[test]
    fn bad_listen_address_names_flag() {
        let msg = loader()
            .set("listen", "localhost", "--listen")
            .load::<ServerConfig>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`listen` (from --listen)"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file() {
        let f = file("[http2\n");
        let err = loader()
            .file(Some(&f.0))
            .load::<ServerConfig>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }
}
