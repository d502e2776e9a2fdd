//! What a conversation's transcript (Claude Code's JSONL, one entry per
//! line) says of one turn: the reply to a prompt, found by the marker the
//! dispatcher typed at its end. Read when the turn's hooks were missed (a
//! daemon that was down while the task ended).

use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// The text of an entry's message (`content` as a string, or the `text`
/// of its text blocks joined).
fn text_of(entry: &Value) -> Option<String> {
    let content = entry.pointer("/message/content")?;
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// The last assistant text after the user prompt holding `marker`, up to
/// the next user prompt (a tool result is not a prompt). None: no such
/// prompt, or no text reply to it yet.
pub fn reply_to(transcript: &Path, marker: &str) -> Option<String> {
    let f = std::fs::File::open(transcript).ok()?;
    let mut reply = None;
    let mut inside = false;
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("user") => {
                let text = text_of(&v);
                if text.as_deref().is_some_and(|t| t.contains(marker)) {
                    inside = true;
                    reply = None;
                } else if text.is_some() && inside {
                    // The next prompt: the turn is over.
                    if reply.is_some() {
                        return reply;
                    }
                    inside = false;
                }
            }
            Some("assistant") if inside => {
                if let Some(t) = text_of(&v).filter(|t| !t.trim().is_empty()) {
                    reply = Some(t);
                }
            }
            _ => {}
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_reply_to_the_marked_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let lines = [
            json!({"type": "summary", "summary": "x"}),
            json!({"type": "user", "message": {"role": "user", "content": "earlier prompt"}}),
            json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "earlier reply"}]}}),
            json!({"type": "user", "message": {"role": "user", "content": "do it ⟦task 0badf00d⟧"}}),
            json!({"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash", "input": {}}]}}),
            json!({"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok"}]}}),
            json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "Done: all green."}]}}),
            json!({"type": "user", "message": {"role": "user", "content": "a later prompt"}}),
            json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "later reply"}]}}),
        ];
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        std::fs::write(&path, text.join("\n") + "\nnot json\n").unwrap();
        assert_eq!(
            reply_to(&path, "0badf00d").as_deref(),
            Some("Done: all green.")
        );
        assert_eq!(reply_to(&path, "feedface"), None);
        assert_eq!(reply_to(&dir.path().join("none.jsonl"), "0badf00d"), None);
        // The turn still running: no text reply yet.
        std::fs::write(&path, text[..6].join("\n")).unwrap();
        assert_eq!(reply_to(&path, "0badf00d"), None);
    }
}
