//! Which Claude Code releases the project supports, and how to tell which
//! one an agent runs.
//!
//! The range is what the test suite runs against: the whole Claude Code
//! suite on [`NEWEST_TESTED`] (pinned in `tools/claude-code`), the smoke
//! subset (launch, dispatch, failover with resume) on [`OLDEST_SUPPORTED`]
//! (pinned in `tools/claude-code/oldest`). A release outside it is still
//! run, but its Session says so in its `AgentVersion` condition: its screens,
//! hooks or settings may differ from what the project knows.

use std::cmp::Ordering;
use std::path::Path;
use std::time::Duration;

/// The oldest Claude Code release the suite still passes on.
pub const OLDEST_SUPPORTED: &str = "2.1.197";
/// The newest Claude Code release the suite runs against.
pub const NEWEST_TESTED: &str = "2.1.332";

/// How long `claude --version` may take (a cold 400 MB binary on a loaded
/// machine takes a second or two).
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// A release number, `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads the first `N.N.N` in `text` (`2.1.332 (Claude Code)`, `v2.1.332`).
    pub fn find(text: &str) -> Option<Version> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find_map(|word| {
                let mut parts = word.split('.');
                let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
                Some(Version(a.parse().ok()?, b.parse().ok()?, c.parse().ok()?))
            })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

fn parse_const(s: &str) -> Version {
    Version::find(s).expect("a constant version")
}

/// Where a release stands against the supported range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Within the range.
    Supported(Version),
    /// Older than the oldest supported release.
    TooOld(Version),
    /// Newer than the newest tested release.
    Untested(Version),
    /// No version could be read.
    Unknown,
}

impl Support {
    pub fn of(version: &str) -> Support {
        let Some(v) = Version::find(version) else {
            return Support::Unknown;
        };
        match (
            v.cmp(&parse_const(OLDEST_SUPPORTED)),
            v.cmp(&parse_const(NEWEST_TESTED)),
        ) {
            (Ordering::Less, _) => Support::TooOld(v),
            (_, Ordering::Greater) => Support::Untested(v),
            _ => Support::Supported(v),
        }
    }

    pub fn supported(&self) -> bool {
        matches!(self, Support::Supported(_))
    }

    /// The `AgentVersion` condition: (status, reason, message).
    pub fn condition(&self) -> (bool, &'static str, String) {
        let range = format!("{OLDEST_SUPPORTED} to {NEWEST_TESTED}");
        match self {
            Support::Supported(v) => (
                true,
                "Supported",
                format!("Claude Code {v} is within the supported range ({range})"),
            ),
            Support::TooOld(v) => (
                false,
                "VersionTooOld",
                format!(
                    "Claude Code {v} is older than the oldest supported release ({range}): \
                     update it (npm install -g @anthropic-ai/claude-code@{NEWEST_TESTED})"
                ),
            ),
            Support::Untested(v) => (
                false,
                "VersionUntested",
                format!(
                    "Claude Code {v} is newer than the newest tested release ({range}): \
                     its screens or hooks may differ; pin {NEWEST_TESTED} if sessions misbehave"
                ),
            ),
            Support::Unknown => (
                false,
                "VersionUnknown",
                "the agent did not report a Claude Code version".into(),
            ),
        }
    }
}

/// `COMMAND --version`, parsed. Errors name what went wrong.
pub fn of_binary(command: &Path) -> Result<Version, String> {
    let mut child = std::process::Command::new(command)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("DISABLE_AUTOUPDATER", "1")
        .spawn()
        .map_err(|e| format!("cannot run {} --version: {e}", command.display()))?;
    let deadline = std::time::Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --version did not answer within {}s",
                    command.display(),
                    VERSION_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", command.display())),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", command.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Version::find(&text).ok_or_else(|| {
        format!(
            "{} --version printed no version: {}",
            command.display(),
            text.trim()
        )
    })
}

/// The version a running agent reported: `version` in its statusLine input
/// or its `sessions/<pid>.json`.
pub fn reported(v: &serde_json::Value) -> Option<&str> {
    v.get("version").and_then(serde_json::Value::as_str)
}

/// The version in a running agent's `CONFIG_DIR/sessions/<pid>.json`.
pub fn of_pid_file(config_dir: &Path, pid: u32) -> Option<String> {
    let bytes = std::fs::read(config_dir.join("sessions").join(format!("{pid}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    reported(&v).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_placed_in_the_range() {
        assert_eq!(
            Version::find("2.1.332 (Claude Code)"),
            Some(Version(2, 1, 332))
        );
        assert_eq!(Version::find("v2.1.9"), Some(Version(2, 1, 9)));
        assert_eq!(Version::find("Claude Code"), None);
        assert!(Version(2, 1, 40) < Version(2, 1, 197), "numeric, not text");
        assert!(Support::of(OLDEST_SUPPORTED).supported());
        assert!(Support::of(NEWEST_TESTED).supported());
        assert!(Support::of("2.1.250").supported());
        assert_eq!(Support::of("2.1.196"), Support::TooOld(Version(2, 1, 196)));
        assert_eq!(
            Support::of("2.1.333"),
            Support::Untested(Version(2, 1, 333))
        );
        assert_eq!(Support::of("3.0.0"), Support::Untested(Version(3, 0, 0)));
        assert_eq!(Support::of(""), Support::Unknown);
        let (ok, reason, message) = Support::of("2.1.100").condition();
        assert!(!ok);
        assert_eq!(reason, "VersionTooOld");
        assert!(message.contains("2.1.197 to 2.1.332"), "{message}");
        assert_eq!(
            reported(&serde_json::json!({"version": "2.1.332"})),
            Some("2.1.332")
        );
    }

    #[test]
    fn a_binary_is_asked_for_its_version() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("claude");
        std::fs::write(&fake, "#!/bin/sh\necho '2.1.250 (Claude Code)'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A fork elsewhere in the test process may briefly hold the file
        // open for writing (ETXTBSY): try again.
        let got = (0..50)
            .map(|_| of_binary(&fake))
            .find(|r| !r.as_ref().is_err_and(|e| e.contains("busy")))
            .unwrap();
        assert_eq!(got, Ok(Version(2, 1, 250)));
        let err = of_binary(&d.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot run"), "{err}");
    }
}
