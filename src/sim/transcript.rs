//! The conversation file Claude Code keeps:
//! `CLAUDE_CONFIG_DIR/projects/<slug>/<session-id>.jsonl`, one JSON object
//! per line, each chained to the previous one by `parentUuid`.

use super::clock;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Claude Code's project folder name: the physical cwd with every
/// non-alphanumeric character replaced by `-`; over 200 characters it is
/// cut and a hash of the full name appended (the hash here is the
/// simulator's own: readers look the file up by session id).
pub fn slug(cwd: &Path) -> String {
    let s: String = cwd
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if s.len() <= 200 {
        return s;
    }
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{:x}", &s[..200], hash & 0xffff_ffff)
}

pub fn path(config_dir: &Path, cwd: &Path, session_id: &str) -> PathBuf {
    config_dir
        .join("projects")
        .join(slug(cwd))
        .join(format!("{session_id}.jsonl"))
}

/// One exchange read back from a transcript, for the screen on resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    User(String),
    Assistant(String),
}

/// What `--resume` needs from an existing transcript.
#[derive(Debug, Default)]
pub struct Loaded {
    /// At least one user or assistant message: resumable.
    pub has_message: bool,
    pub last_uuid: Option<String>,
    /// The latest messages (bounded).
    pub said: Vec<Said>,
}

const SAID_KEPT: usize = 20;

fn text_of(message: &Value) -> Option<String> {
    match message.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let t: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!t.is_empty()).then(|| t.join("\n"))
        }
        _ => None,
    }
}

/// Reads a transcript (None: no such file).
pub fn load(path: &Path) -> Option<Loaded> {
    let f = std::fs::File::open(path).ok()?;
    let mut out = Loaded::default();
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(u) = v.get("uuid").and_then(Value::as_str) {
            out.last_uuid = Some(u.to_string());
        }
        let said = match v.get("type").and_then(Value::as_str) {
            Some("user") => {
                out.has_message = true;
                v.get("message").and_then(text_of).map(Said::User)
            }
            Some("assistant") => {
                out.has_message = true;
                v.get("message").and_then(text_of).map(Said::Assistant)
            }
            _ => None,
        };
        if let Some(s) = said {
            out.said.push(s);
            if out.said.len() > SAID_KEPT * 2 {
                out.said.drain(..SAID_KEPT);
            }
        }
    }
    let n = out.said.len();
    out.said.drain(..n.saturating_sub(SAID_KEPT));
    Some(out)
}

/// The most recently written transcript of `cwd` (`--continue`).
pub fn latest(config_dir: &Path, cwd: &Path) -> Option<String> {
    let dir = config_dir.join("projects").join(slug(cwd));
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".jsonl")?.to_string();
            let t = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((t, id))
        })
        .max()
        .map(|(_, id)| id)
}

/// Records a submitted prompt in the account's `history.jsonl`, as Claude
/// Code does at once on submit (one line, one append).
pub fn append_history(config_dir: &Path, prompt: &str, cwd: &Path, session_id: &str) {
    let line = json!({
        "display": prompt,
        "pastedContents": {},
        "timestamp": clock::now_ms(),
        "project": cwd.to_string_lossy(),
        "sessionId": session_id,
    });
    let mut data = serde_json::to_vec(&line).expect("JSON serializes");
    data.push(b'\n');
    let _ = std::fs::create_dir_all(config_dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config_dir.join("history.jsonl"))
    {
        let _ = f.write_all(&data);
    }
}

/// Appends lines to one transcript.
pub struct Transcript {
    pub path: PathBuf,
    session_id: String,
    cwd: String,
    last_uuid: Option<String>,
}

/// Token counts of one answered turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Splits a turn's `total` tokens the way a warm session's turn looks:
    /// mostly cache reads, some fresh input, the rest output.
    pub fn split(total: u64) -> Usage {
        let input = total / 4;
        let cache_read = total / 2;
        Usage {
            input_tokens: input,
            output_tokens: total - input - cache_read,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cache_read,
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        })
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl Transcript {
    pub fn new(path: PathBuf, session_id: &str, cwd: &Path, last_uuid: Option<String>) -> Self {
        Transcript {
            path,
            session_id: session_id.to_string(),
            cwd: cwd.to_string_lossy().into_owned(),
            last_uuid,
        }
    }

    /// Appends one line (adding the common fields) with one write.
    fn append(&mut self, mut line: Value) -> std::io::Result<()> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let obj = line.as_object_mut().expect("an object");
        obj.insert("parentUuid".into(), json!(self.last_uuid));
        obj.insert("isSidechain".into(), json!(false));
        obj.insert("userType".into(), json!("external"));
        obj.insert("cwd".into(), json!(self.cwd));
        obj.insert("sessionId".into(), json!(self.session_id));
        obj.insert("version".into(), json!(super::VERSION));
        obj.insert("uuid".into(), json!(uuid));
        obj.insert("timestamp".into(), json!(clock::iso(clock::now_ms())));
        let mut data = serde_json::to_vec(&line).expect("JSON serializes");
        data.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(&data)?;
        self.last_uuid = Some(uuid);
        Ok(())
    }

    pub fn user(&mut self, prompt: &str, prompt_id: &str) -> std::io::Result<()> {
        self.append(json!({
            "type": "user",
            "promptId": prompt_id,
            "message": {"role": "user", "content": prompt},
        }))
    }

    /// Claude Code's marker for a turn stopped with Esc.
    pub fn interrupted(&mut self) -> std::io::Result<()> {
        self.append(json!({
            "type": "user",
            "message": {"role": "user", "content": [{"type": "text", "text": "[Request interrupted by user]"}]},
        }))
    }

    pub fn assistant(&mut self, model: &str, text: &str, usage: Usage) -> std::io::Result<()> {
        self.append(json!({
            "type": "assistant",
            "requestId": new_id("req_sim_"),
            "message": {
                "id": new_id("msg_sim_"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": usage.to_json(),
            },
        }))
    }

    /// The line a usage-limit rejection leaves (no request was answered).
    /// A refused turn, with its reset as 2.1.332 records it.
    pub fn rate_limited(&mut self, text: &str, resets_at: u64) -> std::io::Result<()> {
        let info =
            json!({"status": "rejected", "resetsAt": resets_at, "rateLimitType": "five_hour"});
        self.append(json!({
            "type": "assistant",
            "isApiErrorMessage": true,
            "apiErrorStatus": 429,
            "error": "rate_limit",
            "apiError": "usage_limit_reached",
            "apiErrorParams": {"rate_limit_info": info},
            "quotaLimits": info,
            "message": {
                "id": new_id("msg_sim_"),
                "type": "message",
                "role": "assistant",
                "model": "<synthetic>",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "stop_sequence",
                "stop_sequence": "",
                "usage": Usage { input_tokens: 0, output_tokens: 0, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }.to_json(),
            },
        }))
    }

    pub fn turn_duration(&mut self, ms: u64) -> std::io::Result<()> {
        self.append(json!({
            "type": "system",
            "subtype": "turn_duration",
            "durationMs": ms,
            "isMeta": false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_and_round_trip() {
        assert_eq!(
            slug(Path::new("/tmp/probe-launch/work")),
            "-tmp-probe-launch-work"
        );
        assert_eq!(slug(Path::new("/home/a.b/c_d")), "-home-a-b-c-d");
        let long = format!("/{}", "x".repeat(300));
        assert!(slug(Path::new(&long)).len() < 215);
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path(), Path::new("/w"), "id-1");
        assert!(load(&p).is_none());
        let mut t = Transcript::new(p.clone(), "id-1", Path::new("/w"), None);
        t.user("hello\nthere", "p1").unwrap();
        t.assistant("claude-sonnet-5", "ok: hello", Usage::split(2000))
            .unwrap();
        t.turn_duration(1500).unwrap();
        let l = load(&p).unwrap();
        assert!(l.has_message);
        assert_eq!(
            l.said,
            [
                Said::User("hello\nthere".into()),
                Said::Assistant("ok: hello".into())
            ]
        );
        let lines: Vec<Value> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["parentUuid"], Value::Null);
        assert_eq!(lines[1]["parentUuid"], lines[0]["uuid"]);
        assert_eq!(lines[1]["message"]["usage"]["input_tokens"], 500);
        assert_eq!(lines[1]["message"]["usage"]["output_tokens"], 500);
        assert_eq!(lines[2]["subtype"], "turn_duration");
        assert_eq!(
            l.last_uuid.as_ref(),
            lines[2]["uuid"].as_str().map(String::from).as_ref()
        );
        assert_eq!(latest(d.path(), Path::new("/w")).as_deref(), Some("id-1"));
    }
}
