//! Whether an account's config dir holds a login Claude Code can use, read
//! from the files Claude Code keeps (never written here).
//!
//! Claude Code keeps an account's credentials in its `CLAUDE_CONFIG_DIR`:
//! `.credentials.json` (`claudeAiOauth`: a subscription login, on Linux),
//! `.claude.json`'s `primaryApiKey` (a Console login), or `settings.json`'s
//! `apiKeyHelper`. A Session can also bring a credential in its agent's
//! environment (`ANTHROPIC_API_KEY`, ...). On macOS the subscription login
//! is in the Keychain, which the files do not show: there the check says
//! it cannot tell.
//!
//! Measured (docs/claude-code-probe.md, "Shared credentials"): sessions of
//! one config dir refresh its token one at a time, each reading what the
//! last wrote; but two config dirs holding copies of one login log each
//! other out (a refresh rotates the refresh token, the other copy's next
//! refresh is refused and Claude Code empties its `.credentials.json`).

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Environment variables through which an agent can bring its own
/// credential.
pub const CREDENTIAL_ENV: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
];

/// How an account authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `.credentials.json`, a subscription (claude.ai) login.
    Subscription,
    /// `.claude.json`'s `primaryApiKey`, a Console login.
    ConsoleKey,
    /// `settings.json`'s `apiKeyHelper`.
    KeyHelper,
    /// A variable in the agents' environment (its name).
    Environment(String),
}

/// What the files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    LoggedIn(Method),
    /// What is missing, and what to do.
    NotLoggedIn {
        problem: String,
        fix: String,
    },
    /// The files cannot tell (the macOS Keychain).
    Unknown(String),
}

impl Login {
    pub fn logged_in(&self) -> bool {
        matches!(self, Login::LoggedIn(_))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Subscription => f.write_str("subscription login in .credentials.json"),
            Method::ConsoleKey => f.write_str("Console API key in .claude.json"),
            Method::KeyHelper => f.write_str("apiKeyHelper in settings.json"),
            Method::Environment(v) => write!(f, "{v} in the agents' environment"),
        }
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is not valid JSON ({e})", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn non_empty(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// The login of the account `name` whose config dir is `config_dir`.
/// `env_credential` names a variable that brings a credential to its
/// agents, if any (see [`env_credential`]).
pub fn check(name: &str, config_dir: &Path, env_credential: Option<&str>) -> Login {
    let dir = config_dir.display();
    let not = |problem: String| Login::NotLoggedIn {
        problem,
        fix: format!(
            "log in with `claude-failover login {name}`, or give its Sessions \
             ANTHROPIC_API_KEY in spec.agent.env"
        ),
    };
    if let Some(var) = env_credential {
        return Login::LoggedIn(Method::Environment(var.into()));
    }
    if !config_dir.is_dir() {
        return not(format!("config dir {dir} does not exist"));
    }
    let creds = config_dir.join(".credentials.json");
    match read_json(&creds) {
        Err(e) => return not(e),
        Ok(Some(v)) if v.get("claudeAiOauth").is_some() => {
            if non_empty(&v, "/claudeAiOauth/accessToken")
                || non_empty(&v, "/claudeAiOauth/refreshToken")
            {
                return Login::LoggedIn(Method::Subscription);
            }
            return not(format!(
                "the login in {dir} has expired (Claude Code emptied .credentials.json after a \
                 refused token refresh; another copy of this login may have refreshed it)"
            ));
        }
        Ok(_) => {}
    }
    match read_json(&config_dir.join(".claude.json")) {
        Ok(Some(v)) if non_empty(&v, "/primaryApiKey") => {
            return Login::LoggedIn(Method::ConsoleKey);
        }
        Err(e) => return not(e),
        _ => {}
    }
    if let Ok(Some(v)) = read_json(&config_dir.join("settings.json"))
        && non_empty(&v, "/apiKeyHelper")
    {
        return Login::LoggedIn(Method::KeyHelper);
    }
    if cfg!(target_os = "macos") {
        return Login::Unknown(format!(
            "no credentials in {dir}; on macOS a subscription login is kept in the Keychain"
        ));
    }
    not(format!("no credentials in {dir}"))
}

/// The first variable of [`CREDENTIAL_ENV`] set (non-empty) in `env`.
pub fn env_credential<'a, I>(env: I) -> Option<&'static str>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let set: Vec<&str> = env
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k)
        .collect();
    CREDENTIAL_ENV.iter().copied().find(|c| set.contains(c))
}

/// A fingerprint of the login in `config_dir` (its refresh token, hashed;
/// the token itself never leaves this function). Two config dirs with the
/// same fingerprint hold copies of one login.
pub fn fingerprint(config_dir: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let v = read_json(&config_dir.join(".credentials.json")).ok()??;
    let token = v.pointer("/claudeAiOauth/refreshToken")?.as_str()?;
    if token.is_empty() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    Some(h.finish())
}

/// The accounts' (name, config dir) in order of preference (priority, then
/// name): the first holder of a login keeps it, later ones hold copies.
pub fn config_dirs_by_preference<'a>(
    accounts: impl IntoIterator<Item = &'a crate::api::Account>,
) -> Vec<(String, PathBuf)> {
    let mut accounts: Vec<&crate::api::Account> = accounts.into_iter().collect();
    accounts.sort_by_key(|a| (a.spec.priority, a.metadata.name.clone()));
    accounts
        .iter()
        .map(|a| {
            (
                a.metadata.name.clone().unwrap_or_default(),
                crate::fsutil::expand_home(&a.spec.config_dir),
            )
        })
        .collect()
}

/// Accounts (name, config dir), in order of preference, that hold a copy
/// of an earlier one's login: `(copy, original)`. Accounts sharing one
/// config dir share one file (and Claude Code's lock), so they are not
/// copies.
pub fn copied_logins(accounts: &[(String, PathBuf)]) -> Vec<(String, String)> {
    let mut seen: Vec<(u64, &str, &Path)> = Vec::new();
    let mut out = Vec::new();
    for (name, dir) in accounts {
        let Some(fp) = fingerprint(dir) else { continue };
        match seen.iter().find(|(f, _, _)| *f == fp) {
            Some((_, first, first_dir)) if !same_dir(first_dir, dir) => {
                out.push((name.clone(), first.to_string()))
            }
            Some(_) => {}
            None => seen.push((fp, name, dir)),
        }
    }
    out
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Why an account must not be used for a copied login.
pub fn copied_login_message(original: &str, name: &str) -> String {
    format!(
        "holds a copy of account {original}'s login (the same refresh token): when one refreshes \
         it, Claude Code logs the other out; log in to this account on its own \
         (`claude-failover login {name} --force`)"
    )
}

/// Why an account cannot take sessions for want of a login: the phase
/// `Unavailable` with this (reason, message); None when its login is
/// usable (or cannot be told from the files).
pub fn unavailable(
    login: &Login,
    copy_of: Option<&str>,
    name: &str,
) -> Option<(&'static str, String)> {
    match (login, copy_of) {
        (Login::NotLoggedIn { problem, fix }, _) => {
            Some(("NotLoggedIn", format!("{problem}: {fix}")))
        }
        (_, Some(original)) => Some(("CopiedLogin", copied_login_message(original, name))),
        _ => None,
    }
}

/// A credential the Sessions that name `account` bring in their agent's
/// environment, else the daemon's own environment (which the pool's tmux
/// server, and so every agent, inherits).
pub fn agents_credential<'a>(
    account: &str,
    sessions: impl IntoIterator<Item = &'a crate::api::Session>,
    daemon_env: &[(String, String)],
) -> Option<&'static str> {
    sessions
        .into_iter()
        .filter(|s| s.spec.account.as_deref() == Some(account))
        .find_map(|s| {
            // A value from a file counts as set: the file is read at launch,
            // where one that is missing or unreadable fails naming it.
            env_credential(s.spec.agent.env.iter().map(|(k, v)| {
                let v = match v {
                    crate::api::EnvValue::Value(v) => v.as_str(),
                    crate::api::EnvValue::FromFile(f) => f.as_str(),
                };
                (k.as_str(), v)
            }))
        })
        .or_else(|| env_credential(daemon_env.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, file: &str, v: Value) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), v.to_string()).unwrap();
    }

    #[test]
    fn each_kind_of_login_and_each_way_to_lack_one() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("acct");
        let not = |l: Login| match l {
            Login::NotLoggedIn { problem, fix } => format!("{problem}: {fix}"),
            other => panic!("{other:?}"),
        };
        let why = not(check("work", &dir, None));
        assert!(why.contains("does not exist"), "{why}");
        assert!(why.contains("claude-failover login work"), "{why}");
        assert_eq!(
            check("work", &dir, Some("ANTHROPIC_API_KEY")),
            Login::LoggedIn(Method::Environment("ANTHROPIC_API_KEY".into()))
        );
        std::fs::create_dir_all(&dir).unwrap();
        assert!(not(check("work", &dir, None)).contains("no credentials"));
        write(
            &dir,
            ".credentials.json",
            json!({"claudeAiOauth": {"accessToken": "", "refreshToken": "r", "expiresAt": 0}}),
        );
        assert_eq!(
            check("work", &dir, None),
            Login::LoggedIn(Method::Subscription),
            "an expired token with its refresh token is a login"
        );
        // What Claude Code leaves after a refused refresh.
        write(
            &dir,
            ".credentials.json",
            json!({"claudeAiOauth": {"accessToken": "", "refreshToken": "", "expiresAt": 0}}),
        );
        assert!(not(check("work", &dir, None)).contains("has expired"));
        std::fs::write(dir.join(".credentials.json"), "{broken").unwrap();
        assert!(not(check("work", &dir, None)).contains("not valid JSON"));
        std::fs::remove_file(dir.join(".credentials.json")).unwrap();
        write(
            &dir,
            ".claude.json",
            json!({"primaryApiKey": "sk-ant-api03-x"}),
        );
        assert_eq!(
            check("work", &dir, None),
            Login::LoggedIn(Method::ConsoleKey)
        );
        write(
            &dir,
            ".claude.json",
            json!({"hasCompletedOnboarding": true}),
        );
        write(&dir, "settings.json", json!({"apiKeyHelper": "/bin/key"}));
        assert_eq!(
            check("work", &dir, None),
            Login::LoggedIn(Method::KeyHelper)
        );
        assert_eq!(
            env_credential([
                ("HOME", "/h"),
                ("ANTHROPIC_API_KEY", ""),
                ("CLAUDE_CODE_OAUTH_TOKEN", "t")
            ]),
            Some("CLAUDE_CODE_OAUTH_TOKEN")
        );
        assert_eq!(env_credential([("ANTHROPIC_API_KEY", "")]), None);
    }

    #[test]
    fn copies_of_one_login_are_found_without_showing_it() {
        let d = tempfile::tempdir().unwrap();
        let creds = |t: &str| json!({"claudeAiOauth": {"accessToken": "a", "refreshToken": t}});
        let dirs: Vec<(String, PathBuf)> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| (n.to_string(), d.path().join(n)))
            .collect();
        write(&dirs[0].1, ".credentials.json", creds("sk-ant-ort01-one"));
        write(&dirs[1].1, ".credentials.json", creds("sk-ant-ort01-two"));
        write(&dirs[2].1, ".credentials.json", creds("sk-ant-ort01-one"));
        let mut all = dirs.clone();
        // Two Accounts on one config dir share one file: not a copy.
        all.push(("a-too".into(), d.path().join("a")));
        assert_eq!(copied_logins(&all), [("c".to_string(), "a".to_string())]);
        assert_ne!(fingerprint(&dirs[0].1), fingerprint(&dirs[1].1));
        assert_eq!(fingerprint(&dirs[3].1), None);
        let m = copied_login_message("a", "c");
        assert!(!m.contains("sk-ant"), "{m}");
        let ok = Login::LoggedIn(Method::Subscription);
        assert_eq!(unavailable(&ok, None, "c"), None);
        assert_eq!(unavailable(&ok, Some("a"), "c").unwrap().0, "CopiedLogin");
        let missing = Login::NotLoggedIn {
            problem: "no credentials".into(),
            fix: "log in".into(),
        };
        assert_eq!(
            unavailable(&missing, None, "c"),
            Some(("NotLoggedIn", "no credentials: log in".into()))
        );
    }

    #[test]
    fn a_credential_in_the_agents_environment_counts() {
        use crate::api::{Session, SessionSpec};
        let mut s = Session::new(
            "s",
            SessionSpec {
                workdir: "/w".into(),
                account: Some("key".into()),
                agent: Default::default(),
                suspend: false,
                workspace: None,
                standby: None,
                node_name: None,
            },
        );
        s.spec
            .agent
            .env
            .insert("ANTHROPIC_API_KEY".into(), "sk-ant-api03-x".into());
        let sessions = [s];
        assert_eq!(
            agents_credential("key", &sessions, &[]),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(agents_credential("other", &sessions, &[]), None);
        let daemon = [("CLAUDE_CODE_OAUTH_TOKEN".to_string(), "t".to_string())];
        assert_eq!(
            agents_credential("other", &sessions, &daemon),
            Some("CLAUDE_CODE_OAUTH_TOKEN")
        );
        // A key from a file counts before the file is there: the launch,
        // not the account, says the file is missing.
        let mut from_file = sessions[0].clone();
        from_file.spec.account = Some("filed".into());
        from_file.spec.agent.env.insert(
            "ANTHROPIC_API_KEY".into(),
            crate::api::EnvValue::FromFile("/nonexistent/key".into()),
        );
        assert_eq!(
            agents_credential("filed", &[from_file], &[]),
            Some("ANTHROPIC_API_KEY")
        );
    }
}
