//! A SessionPool of real Claude Codes, each in its own git worktree: the
//! real daemon, real tmux, real git, a fake Anthropic API on 127.0.0.1 that
//! makes the model run tools and answers each account's credential alone.

mod common;
use common::fake_api::{Answer, Failure, FakeApi, Recorded};
use common::pool::{LONG, Pool, claude};
use common::{git, wait_for};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const TOKEN_A: &str = "sk-ant-oat01-pool-test-account-a";
const TOKEN_B: &str = "sk-ant-oat01-pool-test-account-b";
const POOL: &str = "crew";
/// The words of the prompts the fake model answers with a tool call: it
/// writes `WORD.txt` where the agent runs and commits it there.
const COMMIT: &str = "COMMIT-TASK";

/// Whether a request carries a tool's result (the rest of a turn).
fn continues_a_turn(r: &Recorded) -> bool {
    r.body
        .pointer("/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

/// The word after [`COMMIT`] in a fresh prompt.
fn commit_word(r: &Recorded) -> Option<String> {
    let text = r.last_user_text()?;
    let rest = &text[text.find(COMMIT)? + COMMIT.len()..];
    rest.split_whitespace()
        .next()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()).into())
}

/// The working directory Claude Code tells the model it runs in (its
/// environment section: `Primary working directory: PATH`).
fn working_dir(r: &Recorded) -> Option<PathBuf> {
    const SAYS: &str = "Primary working directory: ";
    fn find(v: &Value) -> Option<PathBuf> {
        match v {
            Value::String(s) => {
                let rest = &s[s.find(SAYS)? + SAYS.len()..];
                Some(PathBuf::from(rest.lines().next()?.trim()))
            }
            Value::Array(a) => a.iter().find_map(find),
            Value::Object(m) => m.values().find_map(find),
            _ => None,
        }
    }
    find(&r.body)
}

/// The main request that started the turn of `word`'s task under `token`.
fn turn_of(pool: &Pool, word: &str, token: &str) -> Recorded {
    let needle = format!("{COMMIT} {word}");
    let all = pool.api.wait_for(
        |r| {
            r.iter().any(|q| {
                q.is_main()
                    && q.status == 200
                    && q.credential() == Some(token)
                    && !continues_a_turn(q)
                    && q.last_user_text().is_some_and(|t| t.contains(&needle))
            })
        },
        LONG,
    );
    all.into_iter()
        .find(|q| {
            q.is_main()
                && q.status == 200
                && q.credential() == Some(token)
                && !continues_a_turn(q)
                && q.last_user_text().is_some_and(|t| t.contains(&needle))
        })
        .unwrap()
}

/// A usage-limit refusal for the 5-hour window (HTTP 429, `rejected`).
fn limit_hit() -> Failure {
    let reset = (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600)
        .to_string();
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    Failure {
        status: 429,
        body: FakeApi::error_body("rate_limit_error", "You've hit your session limit"),
        headers: vec![
            h("anthropic-ratelimit-unified-status", "rejected"),
            h("anthropic-ratelimit-unified-5h-utilization", "1.0"),
            h("anthropic-ratelimit-unified-5h-reset", &reset),
            h(
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour",
            ),
            h("x-should-retry", "false"),
        ],
    }
}

/// The pool: two real Claude Codes, packed on account `a`, each in its own
/// worktree of `repo` under `wt/`.
fn pool_yaml(pool: &Pool, repo: &Path) -> String {
    let env: String = pool
        .agent_env()
        .iter()
        .map(|(k, v)| format!("          {k}: \"{v}\"\n"))
        .collect();
    format!(
        "apiVersion: claude-failover.io/v1alpha1\nkind: SessionPool\nmetadata:\n  name: {POOL}\nspec:\n  replicas: 2\n  placement:\n    strategy: Pack\n  template:\n    metadata:\n      labels: {{team: repo}}\n    spec:\n      workdir: {wt}\n      account: a\n      workspace:\n        git: {{repo: {repo}, base: main}}\n      agent:\n        command: {claude}\n        permissionMode: bypassPermissions\n        env:\n{env}",
        wt = pool.path("wt").display(),
        repo = repo.display(),
        claude = pool.claude.display(),
    )
}

fn task_yaml(pool: &Pool, name: &str, word: &str, target: &str) -> String {
    pool.task_yaml(
        name,
        &format!("{COMMIT} {word}: write {word}.txt here and commit it"),
        target,
    )
}

/// Commits of `branch` that `main` lacks, oldest first, as subjects.
fn own_commits(repo: &Path, branch: &str) -> Vec<String> {
    let out = git(
        repo,
        &[
            "log",
            "--reverse",
            "--format=%s",
            &format!("main..{branch}"),
        ],
    );
    out.lines().map(str::to_string).collect()
}

/// Files `branch` changed against `main`, sorted.
fn own_files(repo: &Path, branch: &str) -> Vec<String> {
    let out = git(repo, &["diff", "--name-only", &format!("main...{branch}")]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn cwd_of(pid: u64) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap()
}

#[test]
#[cfg_attr(
    not(claude_code),
    ignore = "needs Claude Code: npm ci --prefix tools/claude-code"
)]
fn a_pool_commits_in_its_own_worktrees_and_fails_over_with_them() {
    let claude = claude();
    let mut pool = Pool::new(claude);
    // The repository the agents share, with one commit on main.
    let repo = pool.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "the project\n").unwrap();
    git(&repo, &["add", "README.md"]);
    git(&repo, &["commit", "-q", "-m", "start"]);
    let base = git(&repo, &["rev-parse", "main"]);

    // The model: a fresh prompt `COMMIT-TASK WORD` runs one Bash command
    // in the agent's current directory; the tool's result ends the turn.
    pool.api.set_answer_fn(|r| {
        if continues_a_turn(r) {
            return None;
        }
        let word = commit_word(r)?;
        Some(Answer::ToolUse {
            text: Some(format!("Writing {word}.txt.")),
            name: "Bash".into(),
            input: json!({
                "command": format!(
                    "printf '%s\\n' {word} > {word}.txt && git add {word}.txt && git -c user.name=agent -c user.email=agent@example.com commit -q -m 'add {word}'"
                ),
                "description": format!("commit {word}.txt"),
            }),
        })
    });
    pool.api.set_usage_for(TOKEN_A, 0.3, 3600);
    pool.api.set_usage_for(TOKEN_B, 0.1, 3600);
    pool.apply(&pool.account_with_token("a", 0, TOKEN_A));
    pool.apply(&pool.account_with_token("b", 10, TOKEN_B));
    pool.apply(&pool_yaml(&pool, &repo));
    pool.start_daemon();

    let members = [format!("{POOL}-0"), format!("{POOL}-1")];
    for s in &members {
        pool.wait_session(s, "idle on a", |v| {
            v["status"]["account"] == "a" && v["status"]["phase"] == "Idle"
        });
    }
    let worktree = |s: &str| std::fs::canonicalize(pool.path("wt").join(s)).unwrap();

    // 1. One task each, through the pool's label: held at the API until
    //    both run, so neither session takes both.
    pool.api.hold();
    let selector =
        format!("  sessionSelector: {{matchLabels: {{claude-failover.io/pool: {POOL}}}}}\n");
    pool.apply(&task_yaml(&pool, "t-alpha", "alpha", &selector));
    pool.apply(&task_yaml(&pool, "t-beta", "beta", &selector));
    for t in ["t-alpha", "t-beta"] {
        pool.wait_task_phase(t, "Running");
    }
    pool.api.release();
    let mut first = std::collections::BTreeMap::new();
    for (t, word) in [("t-alpha", "alpha"), ("t-beta", "beta")] {
        let v = pool.wait_task_phase(t, "Succeeded");
        let on = v["status"]["session"].as_str().unwrap().to_string();
        first.insert(on, word);
    }
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        members,
        "one task per session"
    );

    // Each branch holds exactly its own commit and file; main is untouched;
    // the worktrees are clean (the daemon's queue folder is no change).
    for (s, word) in &first {
        assert_eq!(own_commits(&repo, s), [format!("add {word}")], "branch {s}");
        assert_eq!(own_files(&repo, s), [format!("{word}.txt")], "branch {s}");
        let wt = worktree(s);
        assert_eq!(
            std::fs::read_to_string(wt.join(format!("{word}.txt"))).unwrap(),
            format!("{word}\n")
        );
        assert_eq!(git(&wt, &["rev-parse", "--abbrev-ref", "HEAD"]), *s);
        assert_eq!(git(&wt, &["status", "--porcelain"]), "", "worktree {s}");
        // The turn ran there: Claude Code said so to the model.
        let q = turn_of(&pool, word, TOKEN_A);
        assert_eq!(working_dir(&q), Some(wt.clone()), "the turn of {s}");
    }
    assert_eq!(git(&repo, &["rev-parse", "main"]), base, "main moved");
    assert_eq!(git(&repo, &["ls-tree", "--name-only", "main"]), "README.md");
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "the repo's own tree"
    );

    // 2. Account a hits its limit on the next turn of crew-0: the pool moves
    //    to b, and each conversation goes on in its own worktree.
    let (x, y) = (&members[0], &members[1]);
    pool.api.fail_matching(
        |r| {
            r.credential() == Some(TOKEN_A)
                && r.last_user_text()
                    .is_some_and(|t| t.contains(&format!("{COMMIT} gamma")))
        },
        limit_hit(),
    );
    pool.apply(&task_yaml(
        &pool,
        "t-gamma",
        "gamma",
        &format!("  session: {x}\n"),
    ));
    pool.wait_account("a", "Exhausted", |v| v["status"]["phase"] == "Exhausted");
    for s in &members {
        pool.wait_session(s, "resumed on b", |v| {
            v["status"]["account"] == "b"
                && v["status"]["phase"] == "Idle"
                && v["status"]["lastSwap"]["state"] == "Done"
        });
    }
    pool.wait_task_phase("t-gamma", "Succeeded");
    // crew-1's next task comes as a file in its worktree's inbox: it runs
    // there (the inbox's task names that worktree) and moves to done/.
    let queue = worktree(y).join(".agent-queue");
    let inbox = queue.join("inbox");
    wait_for("the inbox in crew-1's worktree", LONG, || {
        inbox.is_dir().then_some(())
    });
    let body = format!("{COMMIT} delta: write delta.txt here and commit it\n");
    std::fs::write(queue.join("delta.md.tmp"), body).unwrap();
    std::fs::rename(queue.join("delta.md.tmp"), inbox.join("delta.md")).unwrap();
    wait_for("delta.md in done/", LONG, || {
        queue.join("done/delta.md.result").exists().then_some(())
    });

    for (s, later) in [(x, "gamma"), (y, "delta")] {
        let earlier = first[s.as_str()];
        let before = turn_of(&pool, earlier, TOKEN_A);
        let after = turn_of(&pool, later, TOKEN_B);
        assert_eq!(
            after.session_id(),
            before.session_id(),
            "{s}: the same conversation"
        );
        assert!(
            after
                .message_texts()
                .iter()
                .any(|t| t.contains(&format!("{COMMIT} {earlier}"))),
            "{s}: the earlier turn is missing after the failover"
        );
        let wt = worktree(s);
        assert_eq!(
            working_dir(&after),
            Some(wt.clone()),
            "{s} after the failover"
        );
        let v = pool.session(s).unwrap();
        let pid = v["status"]["pid"].as_u64().expect("the agent's pid");
        assert_eq!(cwd_of(pid), wt, "{s}: the agent runs in its worktree");
        assert_eq!(
            own_commits(&repo, s),
            [format!("add {earlier}"), format!("add {later}")],
            "branch {s}"
        );
        let mut files = vec![format!("{earlier}.txt"), format!("{later}.txt")];
        files.sort();
        assert_eq!(own_files(&repo, s), files, "branch {s}");
    }
    assert_eq!(git(&repo, &["rev-parse", "main"]), base, "main moved");
    // The daemon's queue folder is no change of the agent's.
    assert_eq!(git(&worktree(y), &["status", "--porcelain"]), "");
    let st = pool.ok(&["get", "sessionpool", POOL, "-o", "json"]);
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["status"]["accounts"], json!({"b": 2}), "{st}");
    let swaps = pool.swaps();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(
        (swaps[0].from.as_str(), swaps[0].reason.as_str()),
        ("a", "Exhausted")
    );

    // The sessions' checkpoints name their worktrees.
    for s in &members {
        let wt = worktree(s);
        wait_for(&format!("the checkpoint of {s}"), LONG, || {
            let cp: Value = serde_json::from_slice(
                &std::fs::read(pool.path(&format!("state/checkpoints/default/{s}.json"))).ok()?,
            )
            .ok()?;
            let dir = std::fs::canonicalize(cp["workdir"].as_str()?).ok()?;
            (cp["account"] == "b" && dir == wt).then_some(())
        });
    }
}
