//! The statusLine command: run with `sh -c`, its JSON input on stdin; the
//! first line of its stdout becomes the footer. One worker thread, blocked
//! while there is nothing to do; requests made while it runs are coalesced
//! into one run with the newest input (Claude Code coalesces too).

use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A statusLine command gets this long before it is killed.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Slot {
    next: Option<Vec<u8>>,
}

pub struct StatusLine {
    shared: Arc<(Mutex<Slot>, Condvar)>,
}

/// The first line of a command's output, trimmed at the end.
pub fn first_line(out: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().next()?.trim_end();
    (!line.is_empty()).then(|| line.to_string())
}

impl StatusLine {
    /// Starts the worker; `on_output` gets each run's first line.
    pub fn start(
        command: String,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        on_output: impl Fn(Option<String>) + Send + 'static,
    ) -> StatusLine {
        let shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let worker = shared.clone();
        let _ = std::thread::Builder::new()
            .name("sim-statusline".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                loop {
                    let input = {
                        let (slot, wake) = &*worker;
                        let mut s = slot.lock().expect("lock");
                        loop {
                            if let Some(i) = s.next.take() {
                                break i;
                            }
                            s = wake.wait(s).expect("lock");
                        }
                    };
                    let out = super::proc::run(&command, input, &env, &cwd, TIMEOUT);
                    on_output(out.as_deref().and_then(first_line));
                }
            });
        StatusLine { shared }
    }

    /// Asks for a run with `input` (replacing a request not yet started).
    pub fn request(&self, input: &Value) {
        let (slot, wake) = &*self.shared;
        slot.lock().expect("lock").next = Some(serde_json::to_vec(input).expect("JSON"));
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::mpsc;

    #[test]
    fn runs_with_the_input_and_returns_the_first_line() {
        let (tx, rx) = mpsc::channel();
        let s = StatusLine::start(
            "read x; echo \"got $x\"; echo second".into(),
            vec![],
            "/".into(),
            move |l| {
                let _ = tx.send(l);
            },
        );
        s.request(&json!({"a": 1}));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap().as_deref(),
            Some(r#"got {"a":1}"#)
        );
        assert_eq!(first_line(b"\n"), None);
    }
}
