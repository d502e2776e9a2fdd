//! An agent's key from a file (`agent.env: {NAME: {valueFrom: {file}}}`)
//! through the daemon: a missing file fails the launch naming the variable
//! and the file; once it is there the agent starts with the value in its
//! environment, and the store never holds it.

mod common;
use common::daemon::{Daemon, T};
use common::*;
use std::os::unix::fs::PermissionsExt;

const KEY: &str = "sk-ant-api03-from-a-file-7d1e0c9b";

#[test]
fn the_key_reaches_the_agent_from_its_file_and_never_the_store() {
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    // An agent that writes down its key and waits.
    let seen = env.path("seen-key");
    let agent = env.script(
        "agent.sh",
        &format!(
            "#!/bin/sh\nprintf '%s' \"$ANTHROPIC_API_KEY\" > {}\nexec sleep 600\n",
            seen.display()
        ),
    );
    let key_file = env.path("keys/anthropic");
    let manifests = format!(
        "{HEAD}kind: Account\nmetadata: {{name: a}}\nspec: {{configDir: {}}}\n---\n{HEAD}kind: Session\nmetadata: {{name: s0}}\nspec:\n  workdir: {}\n  account: a\n  agent:\n    command: {}\n    env:\n      ANTHROPIC_API_KEY: {{valueFrom: {{file: {}}}}}\n",
        env.path("acct-a").display(),
        work.display(),
        agent.display(),
        key_file.display()
    );
    let f = env.write("pool.yaml", &manifests);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let d = Daemon::start(&env, &[]);
    let status = |env: &Env| -> String { env.ok(&["get", "session", "s0", "-o", "json"]) };

    // No file yet: the launch fails, saying which variable and file.
    wait_for("the launch to fail on the missing file", T, || {
        let s = status(&env);
        (s.contains("agent.env.ANTHROPIC_API_KEY: cannot read") && s.contains("keys/anthropic"))
            .then_some(())
    });
    // The file, readable by its owner only: the agent gets the key.
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let got = wait_for("the agent to start with its key", T, || {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert_eq!(got, KEY);
    for (path, bytes) in snapshot(&env.store()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "{} holds the key",
            path.display()
        );
    }
    assert!(!d.log().contains(KEY), "the log holds the key");
    drop(d);
    let socket = common::daemon::state_dir(&env).join("tmux.sock");
    let _ = std::process::Command::new("tmux")
        .args(["-S", socket.to_str().unwrap(), "kill-server"])
        .env_remove("TMUX")
        .output();
}
