//! SessionPool end to end with the simulated agent: the real daemon, real
//! tmux, the pool controller creating, scaling and deleting Sessions.

mod common;
use common::daemon::{Daemon, call, json, token};
use common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
/// A turn long enough to scale down while it runs.
const TURN_MS: u64 = 6000;

fn setup(env: &Env) {
    std::fs::create_dir_all(env.path("work")).unwrap();
    env.write(
        "config/claude-failover/config.yaml",
        "resyncSeconds: 5\ndispatch:\n  cooldownSeconds: 0\nquota:\n  usageBaseUrl: http://127.0.0.1:9\n",
    );
    let mut m = String::new();
    for name in ["a", "b"] {
        env.write(
            &format!("accounts/{name}/.credentials.json"),
            &format!(
                r#"{{"claudeAiOauth": {{"accessToken": "sk-ant-oat01-pool-{name}", "scopes": ["user:inference"], "subscriptionType": "max"}}}}"#
            ),
        );
        m.push_str(&format!(
            "---\n{HEAD}kind: Account\nmetadata: {{name: {name}, labels: {{team: x}}}}\nspec:\n  configDir: {}\n",
            env.path(&format!("accounts/{name}")).display()
        ));
    }
    let f = env.write("accounts.yaml", &m);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn pool_yaml(env: &Env, replicas: u32) -> String {
    format!(
        "{HEAD}kind: SessionPool\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  placement:\n    strategy: Spread\n    accountSelector: {{matchLabels: {{team: x}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      workdir: {}\n      agent:\n        command: {BIN}\n        args: [sim-agent]\n        env: {{SIM_AGENT_TURN_MS: \"{TURN_MS}\", SIM_AGENT_STARTUP_MS: \"100\", SIM_AGENT_IDLE_NOTIFY_MS: \"0\"}}\n",
        env.path("work").display()
    )
}

fn get(env: &Env, kind: &str, name: &str) -> Option<Value> {
    let out = env.run(&["get", kind, name, "-o", "json"]);
    (out.code == 0).then(|| serde_json::from_str(&out.stdout).unwrap())
}

fn pool_status(env: &Env) -> Value {
    get(env, "sessionpool", "web").expect("the pool")["status"].clone()
}

/// The names of the pool's Sessions (by its label).
fn members(env: &Env) -> Vec<String> {
    let out = env.ok(&[
        "get",
        "sessions",
        "-l",
        "claude-failover.io/pool=web",
        "-o",
        "name",
    ]);
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn wait_ready(env: &Env, n: u64) -> Value {
    wait_for(&format!("{n} ready sessions in the pool"), T, || {
        let st = pool_status(env);
        (st["ready"] == n && st["replicas"] == n).then_some(st)
    })
}

#[test]
fn a_pool_scales_spreads_waits_for_turns_and_cascades() {
    let env = Env::new();
    setup(&env);
    let f = env.write("pool.yaml", &pool_yaml(&env, 3));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let _d = Daemon::start(&env, &[]);

    // Created: web-0..2, owned by the pool, spread over both accounts.
    let st = wait_ready(&env, 3);
    assert_eq!(members(&env), ["web-0", "web-1", "web-2"]);
    let s0 = get(&env, "session", "web-0").unwrap();
    assert_eq!(s0["metadata"]["ownerReferences"][0]["kind"], "SessionPool");
    assert_eq!(s0["metadata"]["ownerReferences"][0]["name"], "web");
    assert_eq!(s0["metadata"]["labels"]["app"], "web");
    let per: Vec<u64> = ["a", "b"]
        .iter()
        .map(|a| st["accounts"][a].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per.iter().sum::<u64>(), 3, "{st}");
    assert!(per.iter().all(|n| *n >= 1), "spread over a and b: {st}");
    let table = env.ok(&["get", "sessionpools"]);
    assert!(
        table.contains("REPLICAS") && table.contains("3/3"),
        "{table}"
    );

    // Scale up by the command.
    env.ok(&["scale", "sessionpool", "web", "--replicas", "4"]);
    wait_ready(&env, 4);
    assert_eq!(members(&env), ["web-0", "web-1", "web-2", "web-3"]);

    // A turn on web-1; scaling to zero takes the idle ones at once, and
    // web-1 only once its turn has ended.
    let task = format!(
        "{HEAD}kind: Task\nmetadata: {{name: long}}\nspec:\n  prompt: a long turn\n  session: web-1\n"
    );
    env.run_stdin(&["apply", "-f", "-"], &task);
    wait_for("the task to run on web-1", T, || {
        let t = get(&env, "task", "long")?;
        (t["status"]["phase"] == "Running").then_some(())
    });
    env.ok(&["scale", "sessionpool", "web", "--replicas", "0"]);
    wait_for("the idle sessions to go", T, || {
        (members(&env) == ["web-1"]).then_some(())
    });
    let t = get(&env, "task", "long").unwrap();
    assert_ne!(
        t["status"]["phase"], "Succeeded",
        "the turn outlasts the idle ones' deletion"
    );
    let web1 = get(&env, "session", "web-1").unwrap();
    assert!(
        web1["metadata"]["deletionTimestamp"].is_null(),
        "web-1 is not cut: {web1}"
    );
    wait_for("the pool to say it waits for the turns", T, || {
        (pool_status(&env)["conditions"][0]["reason"] == "WaitingForTurns").then_some(())
    });
    wait_for("web-1 to go after its turn", T, || {
        members(&env).is_empty().then_some(())
    });
    let t = get(&env, "task", "long").unwrap();
    assert_eq!(
        t["status"]["phase"], "Succeeded",
        "the turn was not cut: {t}"
    );

    // Back to two, then delete the pool: its Sessions go with it.
    env.ok(&["scale", "sessionpool", "web", "--replicas", "2"]);
    wait_ready(&env, 2);
    assert_eq!(members(&env), ["web-0", "web-1"]);
    env.ok(&["delete", "sessionpool", "web"]);
    wait_for("the pool and its sessions to go", T, || {
        (members(&env).is_empty() && get(&env, "sessionpool", "web").is_none()).then_some(())
    });
}

#[test]
fn each_session_of_a_pool_works_in_its_own_worktree() {
    let env = Env::new();
    setup(&env);
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "x\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let yaml = pool_yaml(&env, 2).replace(
        "      agent:\n",
        &format!(
            "      workspace: {{git: {{repo: {}, base: main}}}}\n      agent:\n",
            repo.display()
        ),
    );
    let f = env.write("pool.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let _d = Daemon::start(&env, &[]);
    wait_ready(&env, 2);

    // Each on its own branch, in its own folder, the agent started there.
    let wt = env.path("work");
    for name in ["web-0", "web-1"] {
        assert_eq!(git(&wt.join(name), &["branch", "--show-current"]), name);
    }
    let list = git(&repo, &["worktree", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    // Work left in web-1, then a restart: the same worktree, the work kept.
    std::fs::write(wt.join("web-1/draft"), "in progress\n").unwrap();
    env.ok(&["restart", "session", "web-1"]);
    wait_for("web-1 to launch again", T, || {
        let s = get(&env, "session", "web-1")?;
        (s["status"]["launches"].as_u64() >= Some(2) && s["status"]["phase"] == "Idle")
            .then_some(())
    });
    assert!(wt.join("web-1/draft").exists());

    // Scaled to zero: web-0's clean worktree (its branch is main's commit)
    // goes; web-1's uncommitted work is kept and the pool says so.
    env.ok(&["scale", "sessionpool", "web", "--replicas", "0"]);
    wait_for("the sessions to go", T, || {
        members(&env).is_empty().then_some(())
    });
    assert!(!wt.join("web-0").exists());
    assert!(wt.join("web-1/draft").exists());
    let text = env.ok(&["describe", "sessionpool", "web"]);
    assert!(
        text.contains("WorkspaceKept") && text.contains("1 uncommitted change"),
        "{text}"
    );
    assert!(text.contains("WorkspaceRemoved"), "{text}");
}

#[test]
fn a_pool_grows_under_a_queue_and_shrinks_when_idle() {
    let env = Env::new();
    setup(&env);
    let yaml = pool_yaml(&env, 1).replace(
        "  template:\n",
        "  autoscale: {min: 1, max: 3, cooldownSeconds: 2}\n  template:\n",
    );
    let f = env.write("pool.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let _d = Daemon::start(&env, &[]);
    wait_ready(&env, 1);
    // Three long turns for one session: the pool grows to take them.
    let mut tasks = String::new();
    for i in 0..3 {
        tasks.push_str(&format!(
            "---\n{HEAD}kind: Task\nmetadata: {{name: q{i}}}\nspec:\n  prompt: queued {i}\n"
        ));
    }
    env.run_stdin(&["apply", "-f", "-"], &tasks);
    wait_for("the pool to grow to three and run the queue", T, || {
        let running = (0..3)
            .filter(|i| {
                get(&env, "task", &format!("q{i}"))
                    .is_some_and(|t| t["status"]["phase"] == "Running")
            })
            .count();
        (members(&env).len() == 3 && running == 3).then_some(())
    });
    assert_eq!(pool_status(&env)["desiredReplicas"], 3);
    // Done and idle: back to the minimum.
    wait_for("the pool to shrink to one", T, || {
        let st = pool_status(&env);
        (members(&env).len() == 1 && st["desiredReplicas"] == 1).then_some(())
    });
    for i in 0..3 {
        let t = get(&env, "task", &format!("q{i}")).unwrap();
        assert_eq!(t["status"]["phase"], "Succeeded", "{t}");
    }
    let text = env.ok(&["describe", "sessionpool", "web"]);
    assert!(text.contains("Autoscaled"), "{text}");
}

fn time(v: &Value) -> k8s_openapi::jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("a time: {v}"))
        .parse()
        .unwrap()
}

/// A Session's launch time and when the agent confirmed it.
fn launch(s: &Value) -> (k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp) {
    let l = &s["status"]["launch"];
    (time(&l["at"]), time(&l["confirmedAt"]))
}

#[test]
fn a_changed_template_rolls_through_at_turn_boundaries_one_at_a_time() {
    let env = Env::new();
    setup(&env);
    let f = env.write("pool.yaml", &pool_yaml(&env, 3));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let _d = Daemon::start(&env, &[]);
    let st = wait_ready(&env, 3);
    let first = st["updateRevision"].as_str().unwrap().to_string();
    assert_eq!(st["updatedReplicas"], 3, "{st}");
    for name in ["web-0", "web-1", "web-2"] {
        let s = get(&env, "session", name).unwrap();
        assert_eq!(
            s["metadata"]["labels"]["claude-failover.io/template-hash"], first,
            "{s}"
        );
    }

    // A long turn on web-1, then a rollout restart.
    let task = format!(
        "{HEAD}kind: Task\nmetadata: {{name: long}}\nspec:\n  prompt: a long turn\n  session: web-1\n"
    );
    env.run_stdin(&["apply", "-f", "-"], &task);
    wait_for("the task to run on web-1", T, || {
        let t = get(&env, "task", "long")?;
        (t["status"]["phase"] == "Running").then_some(())
    });
    let conversation = get(&env, "session", "web-1").unwrap()["status"]["agentSessionId"].clone();
    let out = env.ok(&["rollout", "restart", "sessionpool", "web"]);
    assert_eq!(out.trim(), "sessionpool.claude-failover.io/web restarted");
    let status = env.run(&[
        "rollout",
        "status",
        "sessionpool",
        "web",
        "--timeout",
        "120s",
    ]);
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    assert!(
        status.stdout.contains("updated replicas are available...")
            && status
                .stdout
                .trim_end()
                .ends_with("sessionpool \"web\" successfully rolled out"),
        "{}",
        status.stdout
    );

    // The busy session was not cut: its task ran once, to its end, and
    // web-1 was relaunched after it, resuming the same conversation.
    let t = get(&env, "task", "long").unwrap();
    assert_eq!(t["status"]["phase"], "Succeeded", "{t}");
    assert_eq!(t["status"]["attempts"], 1, "{t}");
    let st = pool_status(&env);
    let second = st["updateRevision"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let mut launches = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        let s = get(&env, "session", name).unwrap();
        assert_eq!(
            s["metadata"]["labels"]["claude-failover.io/template-hash"], second,
            "{s}"
        );
        assert_eq!(s["status"]["launches"], 2, "relaunched once: {s}");
        assert!(
            !s["metadata"]["annotations"]["claude-failover.io/restartedAt"].is_null(),
            "{s}"
        );
        launches.push((launch(&s), name));
    }
    let web1 = get(&env, "session", "web-1").unwrap();
    assert_eq!(web1["status"]["agentSessionId"], conversation, "{web1}");
    assert_eq!(web1["status"]["launch"]["resumed"], true, "{web1}");
    let finished = time(&t["status"]["finishedAt"]);
    assert!(
        launch(&web1).0 >= finished,
        "web-1 relaunched after its turn ended ({finished}): {web1}"
    );
    // One at a time: each relaunch after the previous one's agent was back.
    launches.sort();
    for w in launches.windows(2) {
        let ((_, confirmed), a) = &w[0];
        let ((at, _), b) = &w[1];
        assert!(
            at > confirmed,
            "{b} relaunched at {at}, before {a} was back ({confirmed})"
        );
    }
    // Idle web-2 and web-0 went first (highest ordinal first), web-1 last.
    let order: Vec<&str> = launches.iter().map(|(_, n)| *n).collect();
    assert_eq!(order, ["web-2", "web-0", "web-1"]);
    let cond = &st["conditions"];
    let progressing = cond
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["reason"], "RolloutComplete", "{st}");
    let once = env.ok(&["rollout", "status", "sessionpool/web", "--watch=false"]);
    assert_eq!(once.trim(), "sessionpool \"web\" successfully rolled out");

    // A new workdir: the Sessions are made again there, new conversations.
    std::fs::create_dir_all(env.path("work2")).unwrap();
    let yaml = pool_yaml(&env, 3).replace(
        &format!("workdir: {}\n", env.path("work").display()),
        &format!("workdir: {}\n", env.path("work2").display()),
    );
    let f = env.write("pool.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let status = env.run(&[
        "rollout",
        "status",
        "sessionpool",
        "web",
        "--timeout",
        "120s",
    ]);
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    for name in ["web-0", "web-1", "web-2"] {
        let s =
            get(&env, "session", name).unwrap_or_else(|| panic!("{name} after {}", status.stdout));
        assert_eq!(
            s["spec"]["workdir"],
            env.path("work2").display().to_string()
        );
        assert_eq!(s["status"]["launches"], 1, "a fresh session: {s}");
    }
    assert_ne!(
        get(&env, "session", "web-1").unwrap()["status"]["agentSessionId"],
        conversation
    );
    let text = env.ok(&["describe", "sessionpool", "web"]);
    assert!(text.contains("Replacing"), "{text}");
}

#[test]
fn the_scale_subresource_through_the_api_and_scale_without_a_daemon() {
    let env = Env::new();
    setup(&env);
    let f = env.write("pool.yaml", &pool_yaml(&env, 0));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    // No daemon: `scale` writes the store.
    let out = env.ok(&["scale", "sessionpool", "web", "--replicas", "1"]);
    assert_eq!(out.trim(), "sessionpool.claude-failover.io/web scaled");
    let replicas = || {
        env.ok(&[
            "get",
            "sessionpool",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };
    assert_eq!(replicas(), "1");
    let wrong = env.run(&[
        "scale",
        "sessionpool",
        "web",
        "--replicas",
        "0",
        "--current-replicas",
        "3",
    ]);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("expected 3 replicas, found 1"),
        "{}",
        wrong.stderr
    );

    let d = Daemon::start(&env, &[]);
    let tok = token(&env);
    let url = format!("{}/api/v1/namespaces/default/sessionpools/web/scale", d.url);
    wait_ready(&env, 1);
    let (code, body) = call("GET", &url, Some(&tok), None);
    assert_eq!(code, 200, "{body}");
    let scale = json(&body);
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["metadata"]["name"], "web");
    assert_eq!(scale["spec"]["replicas"], 1);
    assert_eq!(scale["status"]["replicas"], 1);
    assert_eq!(scale["status"]["selector"], "claude-failover.io/pool=web");

    // PUT with a stale resourceVersion: 409, nothing changed.
    let put = |replicas: u32, rv: &str| {
        format!(
            r#"{{"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {{"name": "web", "resourceVersion": "{rv}"}}, "spec": {{"replicas": {replicas}}}}}"#
        )
    };
    let (code, body) = call("PUT", &url, Some(&tok), Some(&put(2, "1")));
    assert_eq!(code, 409, "{body}");
    assert_eq!(replicas(), "1");
    // With the current one: 200, the new Scale, and the pool grows.
    let rv = scale["metadata"]["resourceVersion"].as_str().unwrap();
    let (code, body) = call("PUT", &url, Some(&tok), Some(&put(2, rv)));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["spec"]["replicas"], 2);
    wait_ready(&env, 2);
    assert_eq!(members(&env), ["web-0", "web-1"]);
    // PATCH, as `kubectl scale` sends it.
    let (code, body) = call(
        "PATCH",
        &url,
        Some(&tok),
        Some(r#"{"spec": {"replicas": 1}}"#),
    );
    assert_eq!(code, 200, "{body}");
    wait_for("web-1 to go", T, || {
        (members(&env) == ["web-0"]).then_some(())
    });
    // Bad input: a clear 422; another kind has no scale.
    let (code, body) = call(
        "PATCH",
        &url,
        Some(&tok),
        Some(r#"{"spec": {"replicas": -1}}"#),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.replicas"), "{body}");
    let (code, body) = call(
        "PUT",
        &url,
        Some(&tok),
        Some(&put(5000, rv).replace(&format!(r#""resourceVersion": "{rv}""#), r#""x": 1"#)),
    );
    assert_eq!(code, 422, "{body}");
    let other = format!("{}/api/v1/namespaces/default/tasks/t/scale", d.url);
    let (code, body) = call("PUT", &other, Some(&tok), Some(&put(1, rv)));
    assert_eq!(code, 405, "{body}");
    let (code, _) = call("PUT", &url, None, Some(&put(1, rv)));
    assert_eq!(code, 401);
    let text = env.ok(&["describe", "sessionpool", "web"]);
    assert!(text.contains("scaled to 2 through the API"), "{text}");
}

#[test]
fn a_task_takes_a_fresh_branch_from_the_base_in_a_clean_worktree() {
    let env = Env::new();
    setup(&env);
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "x\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let yaml = pool_yaml(&env, 1)
        .replace(
            "      agent:\n",
            &format!(
                "      workspace: {{git: {{repo: {}, base: main}}}}\n      agent:\n",
                repo.display()
            ),
        )
        .replace("SIM_AGENT_TURN_MS: \"6000\"", "SIM_AGENT_TURN_MS: \"200\"");
    let f = env.write("pool.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let _d = Daemon::start(&env, &[]);
    wait_ready(&env, 1);
    let wt = env.path("work/web-0");
    // Work committed on the session's own branch.
    std::fs::write(wt.join("earlier"), "x\n").unwrap();
    git(&wt, &["add", "."]);
    git(&wt, &["commit", "-q", "-m", "earlier"]);

    let task = |name: &str, workspace: &str| {
        format!(
            "{HEAD}kind: Task\nmetadata: {{name: {name}}}\nspec:\n  prompt: work on {name}\n  workspace: {workspace}\n"
        )
    };
    env.run_stdin(&["apply", "-f", "-"], &task("t1", "{freshBranch: true}"));
    let t1 = wait_for("t1 to succeed", T, || {
        get(&env, "task", "t1").filter(|t| t["status"]["phase"] == "Succeeded")
    });
    assert_eq!(t1["status"]["branch"], "web-0.t1", "{t1}");
    assert_eq!(git(&wt, &["branch", "--show-current"]), "web-0.t1");
    // Made from main: the session branch's commit is not on it.
    assert!(!wt.join("earlier").exists());
    assert_eq!(
        git(&wt, &["rev-parse", "HEAD"]),
        git(&repo, &["rev-parse", "main"])
    );
    let text = env.ok(&["describe", "task", "t1"]);
    assert!(text.contains("BranchCreated"), "{text}");

    // Uncommitted work: the next task waits, and says why.
    std::fs::write(wt.join("draft"), "x\n").unwrap();
    env.run_stdin(
        &["apply", "-f", "-"],
        &task("t2", "{freshBranch: true, branch: feature/t2}"),
    );
    let t2 = wait_for("t2 to wait for a clean worktree", T, || {
        get(&env, "task", "t2").filter(|t| {
            t["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "WorkspaceNotClean"))
        })
    });
    assert_eq!(t2["status"]["phase"], "Pending", "{t2}");
    let message = t2.to_string();
    assert!(
        message.contains("1 uncommitted change(s) (draft)"),
        "{message}"
    );
    assert_eq!(git(&wt, &["branch", "--show-current"]), "web-0.t1");
    // Committed: it goes, on the branch it named.
    git(&wt, &["add", "."]);
    git(&wt, &["commit", "-q", "-m", "draft"]);
    let t2 = wait_for("t2 to succeed", T, || {
        get(&env, "task", "t2").filter(|t| t["status"]["phase"] == "Succeeded")
    });
    assert_eq!(t2["status"]["branch"], "feature/t2", "{t2}");
    assert_eq!(git(&wt, &["branch", "--show-current"]), "feature/t2");
    assert_eq!(t2["status"]["attempts"], 1, "{t2}");
}
