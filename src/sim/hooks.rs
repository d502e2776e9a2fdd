//! Hooks from the settings file, run as Claude Code runs them: `type:
//! http` POSTs the JSON payload, `type: command` runs `sh -c` with it on
//! stdin. HTTP hooks are skipped for `SessionStart` and `Setup`, like
//! Claude Code 2.1.197 does. One worker thread runs them in the order they
//! were fired, off the input path; a failing or slow hook only costs its
//! own timeout.

use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A hook's timeout when its entry names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Events for which Claude Code runs no HTTP hook.
const COMMAND_ONLY: &[&str] = &["SessionStart", "Setup"];

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
    Command(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub action: Action,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Group {
    matcher: Option<String>,
    hooks: Vec<Hook>,
}

impl Group {
    /// `matcher` absent, empty or `*` matches all; otherwise one of its
    /// `|`-separated names must equal the event's subject.
    fn matches(&self, subject: Option<&str>) -> bool {
        match (self.matcher.as_deref(), subject) {
            (None | Some("") | Some("*"), _) | (_, None) => true,
            (Some(m), Some(s)) => m.split('|').any(|p| p.trim() == s),
        }
    }
}

/// `$VAR` / `${VAR}` in a header value, filled only for allowed names.
fn expand(value: &str, allowed: &[String]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, used) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if used == 0 || name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        if allowed.iter().any(|a| a == name) {
            out.push_str(&std::env::var(name).unwrap_or_default());
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

fn parse_hook(event: &str, v: &Value) -> Option<Hook> {
    let timeout = v
        .get("timeout")
        .and_then(Value::as_f64)
        .filter(|t| *t > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT);
    let action = match v.get("type").and_then(Value::as_str)? {
        "http" if COMMAND_ONLY.contains(&event) => return None,
        "http" => {
            let allowed: Vec<String> = v
                .get("allowedEnvVars")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let headers = v
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| Some((k.clone(), expand(v.as_str()?, &allowed))))
                        .collect()
                })
                .unwrap_or_default();
            Action::Http {
                url: v.get("url")?.as_str()?.to_string(),
                headers,
            }
        }
        "command" => Action::Command(v.get("command")?.as_str()?.to_string()),
        _ => return None, // prompt and agent hooks are not simulated
    };
    Some(Hook { action, timeout })
}

/// The `hooks` section of a settings file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    events: HashMap<String, Vec<Group>>,
}

impl Config {
    pub fn from_settings(settings: &Value) -> Config {
        let mut events = HashMap::new();
        let Some(hooks) = settings.get("hooks").and_then(Value::as_object) else {
            return Config { events };
        };
        for (event, groups) in hooks {
            let groups: Vec<Group> = groups
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| Group {
                    matcher: g.get("matcher").and_then(Value::as_str).map(str::to_string),
                    hooks: g
                        .get("hooks")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|h| parse_hook(event, h))
                        .collect(),
                })
                .collect();
            events.insert(event.clone(), groups);
        }
        Config { events }
    }

    /// The hooks to run for `event` about `subject` (a tool name, a
    /// `source`, a `reason`, ...).
    pub fn select(&self, event: &str, subject: Option<&str>) -> Vec<Hook> {
        self.events
            .get(event)
            .into_iter()
            .flatten()
            .filter(|g| g.matches(subject))
            .flat_map(|g| g.hooks.iter().cloned())
            .collect()
    }
}

struct Job {
    hooks: Vec<Hook>,
    body: Vec<u8>,
}

/// Runs hooks in firing order on one worker thread.
pub struct Runner {
    config: Config,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs fired and not finished.
    pending: Arc<(Mutex<usize>, Condvar)>,
    /// Extra environment of command hooks.
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Runner {
    pub fn new(config: Config, env: Vec<(String, String)>, cwd: PathBuf) -> Runner {
        Runner {
            config,
            tx: Mutex::new(None),
            pending: Arc::new((Mutex::new(0), Condvar::new())),
            env,
            cwd,
        }
    }

    /// Queues `payload` for the hooks of `event`; returns at once.
    pub fn fire(&self, event: &str, payload: &Value, subject: Option<&str>) {
        let hooks = self.config.select(event, subject);
        if hooks.is_empty() {
            return;
        }
        let body = serde_json::to_vec(payload).expect("JSON serializes");
        let mut tx = self.tx.lock().expect("lock");
        if tx.is_none() {
            *tx = self.spawn_worker();
        }
        let Some(sender) = tx.as_ref() else {
            return;
        };
        *self.pending.0.lock().expect("lock") += 1;
        if sender.send(Job { hooks, body }).is_err() {
            *self.pending.0.lock().expect("lock") -= 1;
        }
    }

    fn spawn_worker(&self) -> Option<mpsc::Sender<Job>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = self.pending.clone();
        let env = self.env.clone();
        let cwd = self.cwd.clone();
        std::thread::Builder::new()
            .name("sim-hooks".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx {
                    for h in &job.hooks {
                        run_one(h, &job.body, &env, &cwd);
                    }
                    let (count, done) = &*pending;
                    *count.lock().expect("lock") -= 1;
                    done.notify_all();
                }
            })
            .ok()?;
        Some(tx)
    }

    /// Waits until every fired hook has run, or `limit` has passed.
    pub fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (count, done) = &*self.pending;
        let mut n = count.lock().expect("lock");
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = done.wait_timeout(n, left).expect("lock").0;
        }
        true
    }
}

fn run_one(h: &Hook, body: &[u8], env: &[(String, String)], cwd: &std::path::Path) {
    match &h.action {
        Action::Http { url, headers } => {
            let _ = super::proc::post(url, headers, body, h.timeout);
        }
        Action::Command(c) => {
            let _ = super::proc::run(c, body.to_vec(), env, cwd, h.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_are_read_like_claude_code() {
        let s = json!({"hooks": {
            "Stop": [{"hooks": [{"type": "http", "url": "http://127.0.0.1:1/h", "timeout": 2,
                                 "headers": {"X-A": "a=$SIM_T_OK", "X-B": "b=${SIM_T_NO}"},
                                 "allowedEnvVars": ["SIM_T_OK"]}]}],
            "SessionStart": [{"hooks": [
                {"type": "http", "url": "http://127.0.0.1:1/skipped"},
                {"type": "command", "command": "echo hi"}]}],
            "PreToolUse": [{"matcher": "Bash|Edit", "hooks": [{"type": "command", "command": "t"}]}],
        }});
        unsafe {
            std::env::set_var("SIM_T_OK", "yes");
            std::env::set_var("SIM_T_NO", "no");
        }
        let c = Config::from_settings(&s);
        let stop = c.select("Stop", None);
        assert_eq!(
            stop,
            [Hook {
                action: Action::Http {
                    url: "http://127.0.0.1:1/h".into(),
                    headers: vec![("X-A".into(), "a=yes".into()), ("X-B".into(), "b=".into())]
                },
                timeout: Duration::from_secs(2)
            }]
        );
        let start = c.select("SessionStart", Some("startup"));
        assert_eq!(start.len(), 1, "no HTTP hook for SessionStart");
        assert_eq!(start[0].action, Action::Command("echo hi".into()));
        assert_eq!(start[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.select("PreToolUse", Some("Edit")).len(), 1);
        assert!(c.select("PreToolUse", Some("Read")).is_empty());
        assert!(c.select("Notification", None).is_empty());
        assert_eq!(expand("$ and ${} and $X1.", &[]), "$ and ${} and .");
    }

    #[test]
    fn command_hooks_run_in_order_and_drain() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let cmd = format!("cat >> {}; echo >> {}", out.display(), out.display());
        let s = json!({"hooks": {"Stop": [{"hooks": [{"type": "command", "command": cmd}]}]}});
        let r = Runner::new(Config::from_settings(&s), vec![], d.path().into());
        for i in 0..5 {
            r.fire("Stop", &json!({"n": i}), None);
        }
        assert!(r.drain(Duration::from_secs(10)));
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            [
                r#"{"n":0}"#,
                r#"{"n":1}"#,
                r#"{"n":2}"#,
                r#"{"n":3}"#,
                r#"{"n":4}"#
            ]
        );
    }
}
