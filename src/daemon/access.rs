//! How clients reach the control plane and prove who they are.
//!
//! - The bearer token: one random secret in a file of its own (config
//!   `api.tokenFile`, default `STATE/api-token`), mode 0600, created by the
//!   first daemon or `claude-failover token` that needs it. Created with a
//!   no-clobber link, so two processes creating it at once agree on one
//!   token. A token file that others may read is refused.
//! - The endpoint record `STATE/api.json`: where the running leader serves
//!   (its real address, also when it listens on port 0) and its pid, written
//!   when it starts serving and removed when it stops. The CLI reads it to
//!   find the daemon.

use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The token file: `api.tokenFile` of the config, else `STATE/api-token`.
pub fn token_path(config: &crate::config::Config, state_dir: &Path) -> PathBuf {
    config
        .api
        .token_file
        .as_deref()
        .map(fsutil::expand_home)
        .unwrap_or_else(|| state_dir.join("api-token"))
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the API token file may be read by others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: the API token file is empty")]
    Empty { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the token at `path`. None when the file does not exist.
pub fn read_token(path: &Path) -> Result<Option<String>, TokenError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(token))
}

/// Reads the token at `path`, creating it (random, mode 0600) when missing.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    if let Some(t) = read_token(path)? {
        return Ok(t);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fsutil::ensure_dir(dir).map_err(io(dir))?;
    let token = crate::secret::random_hex(32);
    let tmp =
        fsutil::write_temp(path, format!("{token}\n").as_bytes(), Some(0o600)).map_err(io(path))?;
    let made = std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        // A hard link never replaces an existing file: whoever links first wins.
        .and_then(|_| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match made {
        Ok(()) => {
            fsutil::sync_dir(dir).map_err(io(dir))?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_token(path)?.ok_or_else(|| TokenError::Empty {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Where the running leader serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The Unix socket, when one is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    pub pid: u32,
    /// The store it serves (a CLI pointed at another store must not use it).
    pub store: PathBuf,
}

pub fn endpoint_path(state_dir: &Path) -> PathBuf {
    state_dir.join("api.json")
}

pub fn write_endpoint(state_dir: &Path, e: &Endpoint) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(e).expect("endpoint serializes");
    fsutil::write_atomic(&endpoint_path(state_dir), &data, Some(0o644), true)
}

/// Removes the record if it is still this process's.
pub fn remove_endpoint(state_dir: &Path) {
    if read_endpoint(state_dir).is_some_and(|e| e.pid == std::process::id()) {
        let _ = std::fs::remove_file(endpoint_path(state_dir));
    }
}

pub fn read_endpoint(state_dir: &Path) -> Option<Endpoint> {
    std::fs::read(endpoint_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_private_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/api-token");
        let t = load_or_create_token(&p).unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&p).unwrap(), t, "stable");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_token(&p),
            Err(TokenError::Exposed { mode: 0o644, .. })
        ));
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(d.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
