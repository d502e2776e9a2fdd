//! The README's first command: `claude-failover demo` runs by itself to the
//! end (simulated agents in real tmux, the real daemon), showing the
//! failover.

mod common;

#[test]
fn the_demo_fails_over_and_finishes_on_its_own() {
    let out = std::process::Command::new(common::BIN)
        .args(["demo", "--timeout", "150s"])
        .env_remove("TMUX")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SWAP   epoch 1: a -> b (NearLimit), 3 session(s): Succeeded"),
        "{text}"
    );
    assert!(text.contains("succeeded 18"), "{text}");
    assert!(text.contains("Every task ran"), "{text}");
    // It cleaned up after itself.
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("claude-failover demo in "))
        .expect("the demo names its directory");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "{dir} left behind"
    );
}
