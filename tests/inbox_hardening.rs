//! The inbox through the daemon, against what a hostile or careless
//! writer puts there: links are not followed (a symlink to a secret never
//! becomes a prompt), a file still being written is not taken, and every
//! `*.md` entry it will not take is answered in `rejected/` with a reason.

mod common;
use common::daemon::{Daemon, T};
use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const SECRET: &str = "TOP-SECRET-shadow-content-5b2e";

fn tasks(env: &Env) -> Vec<Value> {
    let out = env.ok(&["get", "tasks", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    match v.get("items") {
        Some(items) => items.as_array().unwrap().clone(),
        None if v.get("kind").is_some() => vec![v],
        None => vec![],
    }
}

fn prompts(env: &Env) -> Vec<String> {
    tasks(env)
        .iter()
        .map(|t| t["spec"]["prompt"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A daemon with one suspended Session (no agent is started) whose
/// workdir's inbox is watched.
fn setup() -> (Env, PathBuf, Daemon) {
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(work.join(".agent-queue/inbox")).unwrap();
    let s = format!(
        "{HEAD}kind: Session\nmetadata: {{name: s0}}\nspec:\n  workdir: {}\n  suspend: true\n",
        work.display()
    );
    let f = env.write("session.yaml", &s);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let d = Daemon::start(&env, &[]);
    (env, work, d)
}

#[test]
fn entries_that_are_not_plain_files_are_rejected_and_never_read() {
    let (env, work, d) = setup();
    let inbox = work.join(".agent-queue/inbox");
    let secret = env.write("outside/shadow", &format!("{SECRET}\n"));
    // A link to a file outside the workdir, a dangling link, a directory,
    // a FIFO, hidden names, a hard link.
    std::os::unix::fs::symlink(&secret, inbox.join("leak.md")).unwrap();
    std::os::unix::fs::symlink(env.path("nowhere"), inbox.join("dangling.md")).unwrap();
    std::fs::create_dir(inbox.join("d.md")).unwrap();
    mkfifo(&inbox.join("pipe.md"));
    std::fs::write(inbox.join("..md"), "dots\n").unwrap();
    std::fs::write(inbox.join(".hidden.md"), "hidden\n").unwrap();
    std::fs::hard_link(&secret, inbox.join("hard.md")).unwrap();
    // And one good file, renamed in (the safe way).
    std::fs::write(work.join("good.tmp"), "the good task\n").unwrap();
    std::fs::rename(work.join("good.tmp"), inbox.join("good.md")).unwrap();

    let rejected = work.join(".agent-queue/rejected");
    let expect = [
        ("leak.md", "symbolic link"),
        ("dangling.md", "symbolic link"),
        ("d.md", "a directory"),
        ("pipe.md", "a FIFO"),
        ("..md", "hidden"),
        (".hidden.md", "hidden"),
        ("hard.md", "hard links"),
    ];
    for (name, why) in expect {
        let error = wait_for(&format!("rejected/{name}.error"), T, || {
            std::fs::read_to_string(rejected.join(format!("{name}.error"))).ok()
        });
        assert!(error.contains(why), "{name}: {error}");
        assert!(
            std::fs::symlink_metadata(rejected.join(name)).is_ok(),
            "{name} was not moved to rejected/"
        );
        assert!(!inbox.join(name).exists() && std::fs::symlink_metadata(inbox.join(name)).is_err());
    }
    wait_for("the good task", T, || {
        prompts(&env)
            .contains(&"the good task".to_string())
            .then_some(())
    });
    // The secret reached no task, no file of the store, no log line.
    assert_eq!(tasks(&env).len(), 1, "{:?}", prompts(&env));
    for (path, bytes) in snapshot(&env.store()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "{} holds the secret",
            path.display()
        );
    }
    assert!(!d.log().contains(SECRET));
    assert!(
        std::fs::read_to_string(&secret).unwrap().contains(SECRET),
        "the target was left alone"
    );
    for (name, _) in expect {
        assert!(d.log().contains(name), "no log line names {name}");
    }
}

#[test]
fn a_writer_pausing_mid_file_gets_its_whole_prompt() {
    let (env, work, d) = setup();
    let inbox = work.join(".agent-queue/inbox");
    // A real writer: writes half, waits for a line on its stdin, writes
    // the rest, closes.
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3>\"$1\"; printf 'first half' >&3; read _; printf ' and the second half\\n' >&3")
        .arg("sh")
        .arg(inbox.join("slow.md"))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first half", T, || {
        (std::fs::read_to_string(inbox.join("slow.md")).ok()? == "first half").then_some(())
    });
    // Make it look long settled: only the open descriptor says otherwise.
    let f = std::fs::File::open(inbox.join("slow.md")).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    wait_for("the daemon to see slow.md still open", T, || {
        let log = d.log();
        log.lines()
            .any(|l| l.contains("slow.md") && l.contains("still open for writing"))
            .then_some(())
    });
    assert!(
        tasks(&env).is_empty(),
        "taken half-written: {:?}",
        prompts(&env)
    );
    assert!(inbox.join("slow.md").exists());

    writer.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(writer.wait().unwrap().success());
    wait_for("the whole prompt", T, || {
        let p = prompts(&env);
        (!p.is_empty()).then_some(p)
    });
    assert_eq!(
        prompts(&env),
        vec!["first half and the second half".to_string()]
    );
    assert!(!work.join(".agent-queue/rejected").join("slow.md").exists());
}
