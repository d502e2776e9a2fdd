//! An agent's environment as it starts: `agent.env` resolved. A value
//! `{valueFrom: {file: PATH}}` is read from its file at each launch (the
//! store keeps the path, never the secret); literal values are kept as
//! they are.
//!
//! A value file must be a regular file of at most [`MAX_VALUE_BYTES`],
//! readable by its owner only (as the API token file), holding one line
//! (a final line break is dropped). Errors name the variable and the file,
//! never the value.

use crate::api::EnvValue;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Largest value file read.
pub const MAX_VALUE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("agent.env.{name}: cannot read {}: {source}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent.env.{name}: {}: {problem}", path.display())]
    Bad {
        name: String,
        path: PathBuf,
        problem: String,
    },
}

/// The value of one variable (reading its file if it has one).
pub fn value(name: &str, v: &EnvValue) -> Result<String, EnvError> {
    match v {
        EnvValue::Value(s) => Ok(s.clone()),
        EnvValue::FromFile(f) => read_value(name, crate::fsutil::expand_home(f)),
    }
}

fn read_value(name: &str, path: PathBuf) -> Result<String, EnvError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let bad = |problem: String| EnvError::Bad {
        name: name.to_string(),
        path: path.clone(),
        problem,
    };
    let read = |source: std::io::Error| EnvError::Read {
        name: name.to_string(),
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(read)?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "others may read it (mode {mode:o}): run `chmod 600 {}`",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_VALUE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read)?;
    if bytes.len() as u64 > MAX_VALUE_BYTES {
        return Err(bad(format!("larger than {MAX_VALUE_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.chars().any(char::is_control) {
        return Err(bad(
            "holds more than one line (or a control character): a value is one line".into(),
        ));
    }
    Ok(text.to_string())
}

/// Every variable with its value; the first that cannot be read is an
/// error.
pub fn resolve(env: &BTreeMap<String, EnvValue>) -> Result<Vec<(String, String)>, EnvError> {
    env.iter()
        .map(|(k, v)| Ok((k.clone(), value(k, v)?)))
        .collect()
}

/// Every variable that can be read; one that cannot is left out and
/// logged (its name and file, never a value). For the launch itself,
/// after [`resolve`] has vouched for the files (the account's seeding).
pub fn resolve_or_skip(env: &BTreeMap<String, EnvValue>) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|(k, v)| match value(k, v) {
            Ok(s) => Some((k.clone(), s)),
            Err(e) => {
                tracing::warn!(error = %e, "agent environment variable left out");
                None
            }
        })
        .collect()
}

/// The value of `name`, if set and readable.
pub fn lookup(env: &BTreeMap<String, EnvValue>, name: &str) -> Option<String> {
    env.get(name).and_then(|v| value(name, v).ok())
}

/// Why a literal value must not be kept in the store, if it looks like a
/// secret: by its name (`*_KEY`, `*_TOKEN`, `*_SECRET`, `*_PASSWORD`) or
/// by its form (an Anthropic, OpenAI, GitHub, Slack, AWS or Google key).
pub fn looks_secret(name: &str, value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    let secret_name = [
        "_KEY",
        "_TOKEN",
        "_SECRET",
        "_PASSWORD",
        "_PASSWD",
        "_CREDENTIALS",
    ]
    .iter()
    .any(|s| upper.ends_with(s))
        || ["KEY", "TOKEN", "SECRET", "PASSWORD"].contains(&upper.as_str());
    if secret_name {
        return Some("its name says it is a secret");
    }
    let v = value.trim();
    let prefixed = [
        "sk-ant-",
        "sk-proj-",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "AIza",
    ]
    .iter()
    .any(|p| v.starts_with(p));
    let openai = v.starts_with("sk-") && v.len() >= 32;
    let aws = v.len() == 20
        && (v.starts_with("AKIA") || v.starts_with("ASIA"))
        && v.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    (prefixed || openai || aws).then_some("it has the form of a key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn values_come_from_private_one_line_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, "sk-ant-api03-xyz\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env: BTreeMap<String, EnvValue> = [
            ("A".to_string(), EnvValue::from("1")),
            (
                "ANTHROPIC_API_KEY".to_string(),
                EnvValue::FromFile(f.display().to_string()),
            ),
        ]
        .into();
        assert_eq!(
            resolve(&env).unwrap(),
            [
                ("A".to_string(), "1".to_string()),
                (
                    "ANTHROPIC_API_KEY".to_string(),
                    "sk-ant-api03-xyz".to_string()
                )
            ]
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(&env).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("xyz"), "{e}");
        assert_eq!(resolve_or_skip(&env), [("A".to_string(), "1".to_string())]);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&f, "two\nlines\n").unwrap();
        assert!(resolve(&env).unwrap_err().to_string().contains("one line"));
        std::fs::remove_file(&f).unwrap();
        let e = resolve(&env).unwrap_err().to_string();
        assert!(
            e.starts_with("agent.env.ANTHROPIC_API_KEY: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_told_by_name_or_form() {
        assert!(looks_secret("ANTHROPIC_API_KEY", "x").is_some());
        assert!(looks_secret("GITHUB_TOKEN", "abc").is_some());
        assert!(looks_secret("SOMETHING", "sk-ant-api03-abcdef").is_some());
        assert!(looks_secret("X", "AKIAABCDEFGHIJKLMNOP").is_some());
        assert!(looks_secret("ANTHROPIC_BASE_URL", "http://127.0.0.1:1").is_none());
        assert!(looks_secret("MAX_THINKING_TOKENS", "1024").is_none());
        assert!(looks_secret("DISABLE_TELEMETRY", "1").is_none());
        assert!(looks_secret("ANTHROPIC_API_KEY", "").is_none());
    }
}
