//! Certificates and keys on disk, as `keel certs` writes them: `NAME.pem` (the certificate,
//! then its intermediates) beside `NAME.key` (PKCS#8, mode 0600), never overwriting a file
//! unless told to.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{Authority, Error};

/// The two files of a certificate: `PREFIX.pem` and `PREFIX.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8).
    pub key: PathBuf,
}

impl Pair {
    /// The files of `prefix`: `certs/server` (or `certs/server.pem`, `certs/server.key`)
    /// names `certs/server.pem` and `certs/server.key`.
    pub fn new(prefix: &Path) -> Self {
        let base = match prefix.extension().and_then(|ext| ext.to_str()) {
            Some("pem" | "key" | "crt") => prefix.with_extension(""),
            _ => prefix.to_owned(),
        };
        let with = |ext: &str| {
            let mut name = base.clone().into_os_string();
            name.push(ext);
            PathBuf::from(name)
        };
        Self {
            cert: with(".pem"),
            key: with(".key"),
        }
    }

    /// Writes both files, creating missing directories. Refuses, before writing anything,
    /// when either exists and `overwrite` is false. The key file is created with mode 0600.
    pub fn write(&self, cert_pem: &str, key_pem: &str, overwrite: bool) -> Result<(), Error> {
        if !overwrite {
            for path in [&self.cert, &self.key] {
                if path.exists() {
                    return Err(Error::Exists(path.clone()));
                }
            }
        }
        for path in [&self.cert, &self.key] {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|source| Error::Io {
                    action: "create the directory",
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }
        write_file(&self.key, key_pem, 0o600)?;
        write_file(&self.cert, cert_pem, 0o644)
    }

    /// Loads the certificate authority these files hold.
    pub fn read_authority(&self) -> Result<Authority, Error> {
        let cert = read(&self.cert)?;
        if !self.key.exists() {
            return Err(Error::MissingCaKey {
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        let key = read(&self.key)?;
        Authority::from_pem(
            &cert,
            &self.cert.display().to_string(),
            &key,
            &self.key.display().to_string(),
        )
    }
}

/// Reads a text file, saying which one could not be read.
pub fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    let failed = |source| Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(mode);
        let mut file = options.open(path).map_err(failed)?;
        // An existing file (overwritten) keeps its mode unless it is set again.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(failed)?;
        file.write_all(contents.as_bytes()).map_err(failed)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        let mut file = options.open(path).map_err(failed)?;
        file.write_all(contents.as_bytes()).map_err(failed)
    }
}
