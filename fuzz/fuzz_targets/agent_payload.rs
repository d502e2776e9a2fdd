//! What an agent posts (hook payloads, statusLine inputs) on any bytes,
//! as the daemon's endpoint takes them: never panics.

#![no_main]
use claude_failover::agent::signals::{Signals, state_of};
use claude_failover::api::{Kind, ObjectKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn signals() -> &'static (Signals, ObjectKey) {
    static S: OnceLock<(Signals, ObjectKey)> = OnceLock::new();
    S.get_or_init(|| {
        // The wake-ups go nowhere (a closed channel), as they pile up.
        let (s, _) = Signals::new();
        let key = ObjectKey::new(Kind::Session, "default", "s0");
        s.register(&key, "secret");
        (s, key)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let (s, key) = signals();
    let _ = state_of(&payload);
    s.hook(key, &payload);
    s.statusline(key, &payload);
    let _ = claude_failover::quota::from_statusline(&payload, std::time::SystemTime::now());
    let _ = s.get(key);
    s.reset(key, Some("a"));
});
