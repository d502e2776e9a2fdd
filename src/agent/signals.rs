//! What the agents tell us, pushed by Claude Code's hooks and statusLine
//! feed, kept in memory per Session. Every update wakes that Session's
//! reconcile; the controller reads the latest state, level-triggered.

use crate::api::{ObjectKey, Session};
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// The URL path prefix of one Session's hook and statusLine endpoints
/// (served by the daemon, carrying the launch's secret).
pub fn agent_path(key: &ObjectKey, secret: &str) -> String {
    format!("/v1/agents/{}/{}/{secret}", key.namespace, key.name)
}

/// What the name of a Session's standby key ends with (see
/// [`standby_key`]); no Session name can hold a `+`.
const STANDBY_SUFFIX: &str = "+standby";

/// The key the signals (and the private files) of a Session's standby
/// agent are kept under. Its posts use the Session's own URL with the
/// standby's secret ([`Signals::route`]).
pub fn standby_key(key: &ObjectKey) -> ObjectKey {
    ObjectKey::new(
        key.kind,
        &key.namespace,
        &format!("{}{STANDBY_SUFFIX}", key.name),
    )
}

/// The Session a key belongs to: itself, or the owner of a standby key.
pub fn owner_key(key: &ObjectKey) -> ObjectKey {
    match key.name.strip_suffix(STANDBY_SUFFIX) {
        Some(owner) => ObjectKey::new(key.kind, &key.namespace, owner),
        None => key.clone(),
    }
}

/// The agent's state as its hooks describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    Idle,
    Busy,
    /// Waiting for the user: `permission_prompt`, a dialog, ...
    Waiting(String),
    Exited(String),
}

/// Everything learnt from one agent since it was (re)launched.
#[derive(Debug, Clone, Default)]
pub struct AgentSignals {
    /// The account the agent was launched under, when this daemon launched
    /// it (None: an agent heard again after a restart of the daemon). Its
    /// usage signals count for that account only, whatever a stale copy of
    /// the Session says.
    pub account: Option<String>,
    /// The state the latest hook implies, and when it arrived.
    pub state: Option<(HookState, SystemTime)>,
    /// `session_id` of the latest payload.
    pub agent_session_id: Option<String>,
    /// `source` of the latest `SessionStart` (`startup`, `resume`, `clear`).
    pub session_start: Option<(String, SystemTime)>,
    /// Prompts confirmed by `UserPromptSubmit`, latest last (bounded).
    pub prompts: Vec<(String, SystemTime)>,
    /// `last_assistant_message` of the latest `Stop`, and when it came.
    pub last_stop: Option<(String, SystemTime)>,
    /// `error` and message of the latest `StopFailure` that ended the turn.
    pub last_failure: Option<(String, String, SystemTime)>,
    /// The same, of a subagent or a helper request: the turn goes on, but
    /// a usage limit is still the account's (see [`crate::agent::hooks`]).
    pub side_failure: Option<(String, String, SystemTime)>,
    /// `transcript_path` of the latest payload.
    pub transcript_path: Option<String>,
    /// `tool_name` and `tool_input` of the latest tool call.
    pub last_tool: Option<(String, Value)>,
    /// The latest statusLine input.
    pub statusline: Option<(Value, SystemTime)>,
    /// Time of the latest payload of any kind.
    pub last_activity: Option<SystemTime>,
    /// Payloads received.
    pub count: u64,
}

const PROMPTS_KEPT: usize = 20;

/// Maps a hook payload to the state it implies.
pub fn state_of(payload: &Value) -> Option<HookState> {
    let event = payload.get("hook_event_name")?.as_str()?;
    let s = |k: &str| {
        payload
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    use crate::agent::hooks::{Notice, ends_turn, notice};
    Some(match event {
        "SessionStart" | "Stop" => HookState::Idle,
        "StopFailure" if ends_turn(payload) => HookState::Idle,
        "UserPromptSubmit" | "PreToolUse" | "PostToolUse" => HookState::Busy,
        "Notification" => match notice(&s("notification_type")) {
            Notice::Idle => HookState::Idle,
            Notice::Waiting(w) => HookState::Waiting(w.into()),
            Notice::Nothing => return None,
        },
        "SessionEnd" => HookState::Exited(s("reason")),
        _ => return None,
    })
}

/// The registry, shared by the HTTP endpoint and the controllers.
pub struct Signals {
    /// Authenticates the tmux server's notifications (per daemon run).
    tmux_secret: String,
    agents: Mutex<HashMap<ObjectKey, AgentSignals>>,
    secrets: Mutex<HashMap<ObjectKey, String>>,
    /// The secret of each Session's standby agent, by the Session's key.
    standby_secrets: Mutex<HashMap<ObjectKey, String>>,
    wake: mpsc::UnboundedSender<ObjectRef<Session>>,
    /// How many times each Session was woken (its agent's or standby's
    /// payloads, its terminal's events): a quiet session compares it.
    wakes: Mutex<HashMap<ObjectKey, u64>>,
    /// Signalled on every payload: wakes the task dispatcher.
    changed: tokio::sync::Notify,
}

impl Signals {
    /// The registry and the stream of Sessions to reconcile because an
    /// agent said something.
    pub fn new() -> (Signals, mpsc::UnboundedReceiver<ObjectRef<Session>>) {
        let (wake, rx) = mpsc::unbounded_channel();
        (
            Signals {
                tmux_secret: uuid::Uuid::new_v4().simple().to_string(),
                agents: Mutex::new(HashMap::new()),
                secrets: Mutex::new(HashMap::new()),
                standby_secrets: Mutex::new(HashMap::new()),
                wake,
                wakes: Mutex::new(HashMap::new()),
                changed: tokio::sync::Notify::new(),
            },
            rx,
        )
    }

    pub fn tmux_secret(&self) -> &str {
        &self.tmux_secret
    }

    /// Accepts posts for `key` carrying `secret`.
    pub fn register(&self, key: &ObjectKey, secret: &str) {
        self.secrets
            .lock()
            .expect("lock")
            .insert(key.clone(), secret.to_string());
    }

    /// Whether posts for `key` are accepted (a secret is registered).
    pub fn registered(&self, key: &ObjectKey) -> bool {
        self.secrets.lock().expect("lock").contains_key(key)
    }

    pub fn unregister(&self, key: &ObjectKey) {
        self.secrets.lock().expect("lock").remove(key);
        self.wakes.lock().expect("lock").remove(key);
        self.agents.lock().expect("lock").remove(key);
        self.unregister_standby(key);
    }

    /// Accepts posts of `key`'s standby agent (the Session's URL with
    /// `secret`), kept apart under [`standby_key`], from a fresh start.
    pub fn register_standby(&self, key: &ObjectKey, secret: &str, account: &str) {
        self.standby_secrets
            .lock()
            .expect("lock")
            .insert(key.clone(), secret.to_string());
        self.reset(&standby_key(key), Some(account));
    }

    /// Whether posts of `key`'s standby are accepted.
    pub fn standby_registered(&self, key: &ObjectKey) -> bool {
        self.standby_secrets.lock().expect("lock").contains_key(key)
    }

    /// Forgets `key`'s standby.
    pub fn unregister_standby(&self, key: &ObjectKey) {
        self.standby_secrets.lock().expect("lock").remove(key);
        self.agents.lock().expect("lock").remove(&standby_key(key));
    }

    /// The standby becomes the Session's agent: its secret is the one
    /// posts for `key` must carry from now on (the replaced agent's is
    /// refused), and what it says counts as the Session's, from a fresh
    /// start under `account`. False when no standby was registered.
    pub fn promote_standby(&self, key: &ObjectKey, account: Option<&str>) -> bool {
        let Some(secret) = self.standby_secrets.lock().expect("lock").remove(key) else {
            return false;
        };
        self.agents.lock().expect("lock").remove(&standby_key(key));
        self.register(key, &secret);
        self.reset(key, account);
        true
    }

    /// The key a post for `key` carrying `secret` is recorded under: the
    /// Session's (its agent's secret), its standby's, or None (refused).
    pub fn route(&self, key: &ObjectKey, secret: &str) -> Option<ObjectKey> {
        if self.authorized(key, secret) {
            return Some(key.clone());
        }
        let standby = self.standby_secrets.lock().expect("lock");
        standby
            .get(key)
            .is_some_and(|want| crate::secret::token_matches(want, secret))
            .then(|| standby_key(key))
    }

    /// Constant-time check of a posted secret.
    pub fn authorized(&self, key: &ObjectKey, secret: &str) -> bool {
        let secrets = self.secrets.lock().expect("lock");
        secrets
            .get(key)
            .is_some_and(|want| crate::secret::token_matches(want, secret))
    }

    /// Forgets what an earlier run of the agent said (called at launch,
    /// with the account the new agent runs under).
    pub fn reset(&self, key: &ObjectKey, account: Option<&str>) {
        self.agents.lock().expect("lock").insert(
            key.clone(),
            AgentSignals {
                account: account.map(str::to_string),
                ..Default::default()
            },
        );
    }

    pub fn get(&self, key: &ObjectKey) -> AgentSignals {
        self.agents
            .lock()
            .expect("lock")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// What `f` reads of an agent's signals, without copying them all
    /// (they hold its latest statusLine and tool inputs: a pass over 500
    /// sessions that wants one field each copied them every time).
    pub fn read<R>(&self, key: &ObjectKey, f: impl FnOnce(&AgentSignals) -> R) -> R {
        let agents = self.agents.lock().expect("lock");
        match agents.get(key) {
            Some(s) => f(s),
            None => f(&AgentSignals::default()),
        }
    }

    fn wake(&self, key: &ObjectKey) {
        let key = &owner_key(key);
        *self
            .wakes
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default() += 1;
        let _ = self
            .wake
            .send(ObjectRef::new(&key.name).within(&key.namespace));
        self.changed.notify_one();
    }

    /// How many times Session `key` was woken by its agents or terminal
    /// (counted after what woke it is recorded).
    pub fn wakes(&self, key: &ObjectKey) -> u64 {
        self.wakes
            .lock()
            .expect("lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Resolves at the next payload from any agent.
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Records one hook payload.
    pub fn hook(&self, key: &ObjectKey, payload: &Value) {
        let now = SystemTime::now();
        if crate::agent::hooks::ends_for_resume(payload) {
            // The agent leaves its conversation for another it takes over
            // (`/resume`): it does not exit, and the id it names is not
            // the one it goes on with (this post and the `SessionStart`
            // of the resumed one may arrive in either order).
            let mut agents = self.agents.lock().expect("lock");
            let a = agents.entry(key.clone()).or_default();
            a.count += 1;
            a.last_activity = Some(now);
            drop(agents);
            self.wake(key);
            return;
        }
        {
            let mut agents = self.agents.lock().expect("lock");
            let a = agents.entry(key.clone()).or_default();
            a.count += 1;
            a.last_activity = Some(now);
            if let Some(id) = payload.get("session_id").and_then(Value::as_str) {
                a.agent_session_id = Some(id.to_string());
            }
            if let Some(p) = payload.get("transcript_path").and_then(Value::as_str) {
                a.transcript_path = Some(p.to_string());
            }
            if let Some(st) = state_of(payload) {
                a.state = Some((st, now));
            }
            let s = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_string);
            match payload.get("hook_event_name").and_then(Value::as_str) {
                Some("SessionStart") => {
                    a.session_start = Some((s("source").unwrap_or_default(), now))
                }
                Some("UserPromptSubmit") => {
                    a.prompts.push((s("prompt").unwrap_or_default(), now));
                    if a.prompts.len() > PROMPTS_KEPT {
                        a.prompts.remove(0);
                    }
                }
                Some("Stop") => {
                    a.last_stop = Some((s("last_assistant_message").unwrap_or_default(), now))
                }
                Some("StopFailure") => {
                    if let Some((error, message, ends_turn)) = crate::agent::hooks::failure(payload)
                    {
                        let f = Some((error, message, now));
                        if ends_turn {
                            a.last_failure = f;
                        } else {
                            a.side_failure = f;
                        }
                    }
                }
                Some("PreToolUse") | Some("PostToolUse") => {
                    a.last_tool = Some((
                        s("tool_name").unwrap_or_default(),
                        payload.get("tool_input").cloned().unwrap_or(Value::Null),
                    ))
                }
                _ => {}
            }
        }
        self.wake(key);
    }

    /// Records one statusLine input.
    pub fn statusline(&self, key: &ObjectKey, input: &Value) {
        let now = SystemTime::now();
        {
            let mut agents = self.agents.lock().expect("lock");
            let a = agents.entry(key.clone()).or_default();
            a.count += 1;
            a.statusline = Some((input.clone(), now));
            if let Some(id) = input.get("session_id").and_then(Value::as_str) {
                a.agent_session_id = Some(id.to_string());
            }
        }
        self.wake(key);
    }

    /// The terminal says the session's pane died or its session closed,
    /// or the watch of its agent's process (`exits.rs`) saw it end: a signal from
    /// the agent's side like the hooks, for the session controller.
    pub fn terminal_event(&self, key: &ObjectKey) {
        self.wake(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hooks_map_to_states_and_secrets_are_checked() {
        let (s, mut rx) = Signals::new();
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "a");
        s.register(&k, "secret-1");
        assert!(s.authorized(&k, "secret-1"));
        assert!(!s.authorized(&k, "secret-2"));
        assert!(!s.authorized(
            &ObjectKey::new(crate::api::Kind::Session, "default", "b"),
            "secret-1"
        ));
        s.hook(
            &k,
            &json!({"hook_event_name": "UserPromptSubmit", "session_id": "u", "prompt": "hi"}),
        );
        assert_eq!(s.get(&k).state.unwrap().0, HookState::Busy);
        assert_eq!(s.get(&k).prompts[0].0, "hi");
        s.hook(
            &k,
            &json!({"hook_event_name": "Notification", "notification_type": "permission_prompt"}),
        );
        assert_eq!(
            s.get(&k).state.unwrap().0,
            HookState::Waiting("permission_prompt".into())
        );
        s.hook(
            &k,
            &json!({"hook_event_name": "Stop", "last_assistant_message": "done"}),
        );
        assert_eq!(s.get(&k).state.unwrap().0, HookState::Idle);
        assert_eq!(s.get(&k).last_stop.unwrap().0, "done");
        // A subagent's failure does not end the turn it runs in.
        s.hook(
            &k,
            &json!({"hook_event_name": "UserPromptSubmit", "prompt": "go"}),
        );
        s.hook(
            &k,
            &json!({"hook_event_name": "StopFailure", "error": "rate_limit",
                    "agent_id": "a1", "agent_type": "general-purpose"}),
        );
        assert_eq!(s.get(&k).state.unwrap().0, HookState::Busy);
        assert!(s.get(&k).last_failure.is_none());
        assert_eq!(s.get(&k).side_failure.unwrap().0, "rate_limit");
        s.hook(
            &k,
            &json!({"hook_event_name": "Notification", "notification_type": "auth_success"}),
        );
        assert_eq!(s.get(&k).state.unwrap().0, HookState::Busy, "informational");
        assert_eq!(rx.try_recv().unwrap().name, "a");
    }

    #[test]
    fn a_standby_is_heard_apart_until_it_takes_over() {
        let (s, mut rx) = Signals::new();
        let k = ObjectKey::new(crate::api::Kind::Session, "default", "a");
        s.register(&k, "agent");
        s.register_standby(&k, "standby", "b");
        assert_eq!(s.route(&k, "agent"), Some(k.clone()));
        assert_eq!(s.route(&k, "standby"), Some(standby_key(&k)));
        assert_eq!(s.route(&k, "other"), None);
        s.hook(
            &standby_key(&k),
            &json!({"hook_event_name": "SessionStart", "source": "startup", "session_id": "own"}),
        );
        assert_eq!(rx.try_recv().unwrap().name, "a", "the owner is woken");
        assert_eq!(s.get(&standby_key(&k)).session_start.unwrap().0, "startup");
        assert!(s.get(&k).session_start.is_none(), "not the agent's");
        // It takes over: its secret is the Session's, the old one refused.
        assert!(s.promote_standby(&k, Some("b")));
        assert_eq!(s.route(&k, "standby"), Some(k.clone()));
        assert_eq!(s.route(&k, "agent"), None);
        assert!(!s.standby_registered(&k));
        assert_eq!(s.get(&k).account.as_deref(), Some("b"));
        // Its end of the start-up conversation, after the resumed one's
        // start, changes nothing.
        s.hook(
            &k,
            &json!({"hook_event_name": "SessionStart", "source": "resume", "session_id": "conv"}),
        );
        s.hook(
            &k,
            &json!({"hook_event_name": "SessionEnd", "reason": "resume", "session_id": "own"}),
        );
        let a = s.get(&k);
        assert_eq!(a.agent_session_id.as_deref(), Some("conv"));
        assert_eq!(a.state.unwrap().0, HookState::Idle);
        assert!(!s.promote_standby(&k, None), "nothing left to promote");
    }
}
