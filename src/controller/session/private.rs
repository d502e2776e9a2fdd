//! What the session controller keeps to itself, in the state dir: the
//! running agent's hook secret and the settings file it was launched with
//! (both mode 0600). Nothing here is read by another controller; every
//! fact about a session that others need is in its status.
//!
//! `STATE/sessions/NS/NAME/secret`, `STATE/sessions/NS/NAME/settings.json`.

use crate::api::ObjectKey;
use crate::fsutil::write_atomic;
use std::path::{Path, PathBuf};

pub fn dir(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    state_dir
        .join("sessions")
        .join(&key.namespace)
        .join(&key.name)
}

pub fn settings_path(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    dir(state_dir, key).join("settings.json")
}

/// The secret the running agent posts with. Falls back to the record an
/// earlier version of the daemon kept (`runtime.json`), so its agents keep
/// being heard after an upgrade.
pub fn load_secret(state_dir: &Path, key: &ObjectKey) -> Option<String> {
    let d = dir(state_dir, key);
    if let Ok(s) = std::fs::read_to_string(d.join("secret")) {
        let s = s.trim().to_string();
        return (!s.is_empty()).then_some(s);
    }
    let old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("runtime.json")).ok()?).ok()?;
    old.get("secret")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Saves the secret of the agent about to start (before it starts: a
/// daemon dying next must still hear it).
pub fn save_secret(state_dir: &Path, key: &ObjectKey, secret: &str) -> std::io::Result<()> {
    let d = dir(state_dir, key);
    crate::fsutil::ensure_dir(&d)?;
    // Secrets inside: only the owner may look.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        state_dir.join("sessions"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    // Not fsync'd: a takeover saves it between the old agent's kill and
    // the Enter, eight at once in a swap, and only a running agent needs it
    // (a power loss takes the agent too; its relaunch writes another).
    crate::fsutil::replace_volatile(&d.join("secret"), secret.as_bytes(), Some(0o600))
}

/// Writes the settings file of a launch.
pub fn save_settings(
    state_dir: &Path,
    key: &ObjectKey,
    settings: &serde_json::Value,
) -> std::io::Result<PathBuf> {
    let p = settings_path(state_dir, key);
    if let Some(d) = p.parent() {
        crate::fsutil::ensure_dir(d)?;
    }
    write_atomic(
        &p,
        &serde_json::to_vec_pretty(settings).expect("JSON"),
        Some(0o600),
        false,
    )?;
    Ok(p)
}

/// The files of one standby agent (`STATE/sessions/NS/NAME/standby-ID/`:
/// its secret, settings file and MCP config), apart from the agent's: the
/// agent a standby became still reads its own when the next standby
/// starts. `id` is the standby's start-up conversation id.
pub fn standby_dir(state_dir: &Path, key: &ObjectKey, id: &str) -> PathBuf {
    dir(state_dir, key).join(format!("standby-{id}"))
}

/// Saves a standby's secret and settings file; the settings file's path.
pub fn save_standby(
    state_dir: &Path,
    key: &ObjectKey,
    id: &str,
    secret: &str,
    settings: &serde_json::Value,
) -> std::io::Result<PathBuf> {
    let d = standby_dir(state_dir, key, id);
    crate::fsutil::ensure_dir(&d)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        state_dir.join("sessions"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    write_atomic(&d.join("secret"), secret.as_bytes(), Some(0o600), true)?;
    let p = d.join("settings.json");
    write_atomic(
        &p,
        &serde_json::to_vec_pretty(settings).expect("JSON"),
        Some(0o600),
        false,
    )?;
    Ok(p)
}

/// The secret of standby `id`.
pub fn load_standby_secret(state_dir: &Path, key: &ObjectKey, id: &str) -> Option<String> {
    let s = std::fs::read_to_string(standby_dir(state_dir, key, id).join("secret")).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Removes the files of every standby but `keep`'s.
pub fn remove_standbys(
    state_dir: &Path,
    key: &ObjectKey,
    keep: Option<&str>,
) -> std::io::Result<()> {
    let keep = keep.map(|id| format!("standby-{id}"));
    let Ok(entries) = std::fs::read_dir(dir(state_dir, key)) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("standby-") && Some(&name) != keep.as_ref() {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Forgets the session (on delete). Transcripts live elsewhere and stay.
pub fn remove(state_dir: &Path, key: &ObjectKey) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir(state_dir, key)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_private_and_an_old_record_is_read() {
        let d = tempfile::tempdir().unwrap();
        let key = ObjectKey::new(crate::api::Kind::Session, "default", "s");
        assert_eq!(load_secret(d.path(), &key), None);
        std::fs::create_dir_all(dir(d.path(), &key)).unwrap();
        std::fs::write(
            dir(d.path(), &key).join("runtime.json"),
            r#"{"secret":"old","agentSessionId":"x"}"#,
        )
        .unwrap();
        assert_eq!(load_secret(d.path(), &key).as_deref(), Some("old"));
        save_secret(d.path(), &key, "new").unwrap();
        assert_eq!(load_secret(d.path(), &key).as_deref(), Some("new"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir(d.path(), &key).join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        remove(d.path(), &key).unwrap();
        assert_eq!(load_secret(d.path(), &key), None);
    }
}
