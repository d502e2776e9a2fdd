//! A Task that cannot be placed says why, with the daemon running: no
//! session by the name it asks for, none matching its selector. The
//! condition goes once a session it may run on appears; a task that merely
//! waits for a free session gets none.

mod common;
use common::daemon::{Daemon, T};
use common::*;
use serde_json::Value;

fn scheduled(env: &Env, task: &str) -> Option<(String, String, String)> {
    let v: Value = serde_json::from_str(&env.ok(&["get", "task", task, "-o", "json"])).ok()?;
    let c = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Scheduled")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

#[test]
fn a_task_that_cannot_be_placed_says_why_until_it_can() {
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    // An agent that never becomes Ready: tasks stay pending.
    let agent = env.script("agent.sh", "#!/bin/sh\nexec sleep 600\n");
    let session = |name: &str| {
        format!(
            "{HEAD}kind: Session\nmetadata: {{name: {name}, labels: {{team: api}}}}\nspec:\n  workdir: {}\n  account: a\n  agent: {{command: {}}}\n",
            work.display(),
            agent.display()
        )
    };
    let task = |name: &str, target: &str| {
        format!(
            "{HEAD}kind: Task\nmetadata: {{name: {name}}}\nspec:\n  prompt: do it\n  {target}\n"
        )
    };
    let manifests = [
        format!(
            "{HEAD}kind: Account\nmetadata: {{name: a}}\nspec: {{configDir: {}}}\n",
            env.path("acct-a").display()
        ),
        session("s0"),
        task("t-nosuch", "session: nosuch"),
        task("t-ops", "sessionSelector: {matchLabels: {team: ops}}"),
        task("t-api", "sessionSelector: {matchLabels: {team: api}}"),
    ]
    .join("---\n");
    let f = env.write("pool.yaml", &manifests);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let _d = Daemon::start(&env, &[]);

    let said = wait_for("both unplaceable tasks to say why", T, || {
        Some((scheduled(&env, "t-nosuch")?, scheduled(&env, "t-ops")?))
    });
    assert_eq!(
        said.0,
        (
            "False".into(),
            "NoSuchSession".into(),
            "no session named nosuch in namespace default".into()
        )
    );
    assert_eq!(said.1.1, "NoMatchingSession");
    assert!(said.1.2.contains("selector team=ops"), "{}", said.1.2);
    let described = env.ok(&["describe", "task", "t-nosuch"]);
    assert!(described.contains("NoSuchSession"), "{described}");
    // Waiting for its session to be free is no reason to write anything.
    assert_eq!(scheduled(&env, "t-api"), None);

    // The session it names appears: the condition goes.
    let f = env.write("nosuch.yaml", &session("nosuch"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for("the condition to go", T, || {
        scheduled(&env, "t-nosuch").is_none().then_some(())
    });
    assert_eq!(scheduled(&env, "t-ops").unwrap().1, "NoMatchingSession");
}
