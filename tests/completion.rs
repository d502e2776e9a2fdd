//! Shell completion in the real shells: bash (its completion function
//! called with COMP_WORDS, and an interactive bash pressing Tab), zsh
//! (interactive, compinit, Tab) and fish (its own `complete -C`). The
//! candidates come from the program: subcommands, flags, values, kinds and
//! the names of the objects in the store.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// How long a Tab may take to change the screen before the next one (a
/// Tab that only rings the bell changes nothing).
const TAB_ANSWER: Duration = Duration::from_secs(3);

/// The binary's directory first on PATH, so the scripts find
/// `claude-failover` by name as a user's shell would.
fn path_var() -> String {
    let bin_dir = Path::new(BIN).parent().unwrap();
    format!("{}:/usr/bin:/bin", bin_dir.display())
}

fn pool() -> Env {
    let env = Env::new();
    env.ok(&["apply", "-f", examples().to_str().unwrap()]);
    env.write("manifests/extra.yaml", &session_yaml("extra", ""));
    env
}

/// Runs bash non-interactively: sources the script, fills COMP_WORDS as
/// bash's own line splitting does (words break at `=`), calls the
/// function, prints COMPREPLY one per line.
fn bash_complete(bash: &Path, env: &Env, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = {
        // The line as typed: `=` glued back to its neighbours.
        let mut l = String::new();
        for (i, w) in words.iter().enumerate() {
            let glue = *w == "=" || (i > 0 && words[i - 1] == "=");
            if i > 0 && !glue {
                l.push(' ');
            }
            l.push_str(w);
        }
        l
    };
    let script = format!(
        "source <(claude-failover completion bash)\n\
         COMP_WORDS=({words})\nCOMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         COMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _claude_failover\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
    );
    let out = Command::new(bash)
        .args(["--norc", "--noprofile", "-c", &script])
        .current_dir(env.dir.path())
        .env("PATH", path_var())
        .env("CLAUDE_FAILOVER_STORE", env.store())
        .env("HOME", env.dir.path())
        .env_remove("CLAUDE_FAILOVER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn bash_completes_subcommands_flags_kinds_and_names() {
    let bash = program("bash");
    let env = pool();
    let c = |w: &[&str]| bash_complete(&bash, &env, w);
    assert_eq!(c(&["claude-failover", "ge"]), ["get"]);
    assert!(c(&["claude-failover", ""]).contains(&"describe".to_string()));
    assert_eq!(
        c(&["claude-failover", "get", "ses"]),
        ["sessionpools", "sessions"]
    );
    assert_eq!(
        c(&["claude-failover", "get", "sessions", ""]),
        ["ccl-0", "ccl-1", "ccl-2"]
    );
    assert_eq!(
        c(&["claude-failover", "describe", "tasks", "fix"]),
        ["fix-login"]
    );
    assert_eq!(
        c(&["claude-failover", "get", "session/ccl-"]),
        ["session/ccl-0", "session/ccl-1", "session/ccl-2"]
    );
    assert_eq!(c(&["claude-failover", "logs", "ccl-2"]), ["ccl-2"]);
    assert_eq!(
        c(&["claude-failover", "cancel", "task", "w"]),
        ["write-changelog"]
    );
    assert_eq!(
        c(&["claude-failover", "failover", ""]),
        ["personal", "work"]
    );
    assert!(c(&["claude-failover", "get", "tasks", "--so"]).contains(&"--sort-by".to_string()));
    // `--output=js`: bash splits at `=`, so only what follows it is offered.
    assert_eq!(
        c(&["claude-failover", "get", "tasks", "--output", "=", "js"]),
        ["json", "jsonpath-as-json=", "jsonpath-file=", "jsonpath="]
    );
    assert_eq!(
        c(&["claude-failover", "get", "tasks", "-o", "ya"]),
        ["yaml"]
    );
    // A flag that takes a path: the shell's file names.
    assert_eq!(
        c(&["claude-failover", "apply", "-f", "manif"]),
        ["manifests"]
    );
    // Another namespace's names.
    env.ok(&[
        "-n",
        "team-b",
        "apply",
        "-f",
        env.path("manifests/extra.yaml").to_str().unwrap(),
    ]);
    assert_eq!(
        c(&["claude-failover", "-n", "team-b", "get", "sessions", ""]),
        ["extra"]
    );
    assert_eq!(c(&["claude-failover", "get", "-n", "te"]), ["team-b"]);
}

/// An interactive shell in its own tmux server: types `line`, presses Tab
/// (twice when `list`), and waits until the screen shows `want`.
fn interactive(shell: &[&str], setup: &str, env: &Env, line: &str, tabs: usize, want: &[&str]) {
    let sock = env.path(&format!("tmux-{}.sock", uuid::Uuid::new_v4().simple()));
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap()
    };
    let cmd = format!(
        "env -i PATH={} HOME={} TERM=xterm CLAUDE_FAILOVER_STORE={} {}",
        path_var(),
        env.dir.path().display(),
        env.store().display(),
        shell.join(" ")
    );
    let out = tmux(&[
        "new-session",
        "-d",
        "-x",
        "150",
        "-y",
        "40",
        "-s",
        "sh",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-N", "-t", "=sh:"]).stdout)
            .into_owned()
    };
    tmux(&["send-keys", "-t", "=sh:", setup, "Enter"]);
    wait_for("the shell to be set up", T, || {
        screen().contains("READY>").then_some(())
    });
    tmux(&["send-keys", "-t", "=sh:", "-l", line]);
    wait_for("the line typed", T, || {
        screen().contains(line).then_some(())
    });
    let seen = |s: &str| want.iter().all(|w| s.contains(w));
    let mut last = screen();
    // Tab until the candidates show (bash lists them on a Tab that adds
    // nothing more; zsh on the second), each once the previous answered.
    for _ in 0..tabs {
        if seen(&last) {
            break;
        }
        tmux(&["send-keys", "-t", "=sh:", "Tab"]);
        let before = last.clone();
        last = wait_for_opt(TAB_ANSWER, || {
            Some(screen()).filter(|s| *s != before || seen(s))
        })
        .unwrap_or_else(screen);
    }
    let found = seen(&last)
        || wait_for_opt(T, || {
            last = screen();
            seen(&last).then_some(())
        })
        .is_some();
    tmux(&["kill-server"]);
    assert!(
        found,
        "{shell:?}: {line:?} + Tab: want {want:?}, screen:\n{last}"
    );
}

/// Like `wait_for`, but None at the deadline instead of a panic.
fn wait_for_opt<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn interactive_bash_completes_on_tab() {
    let env = pool();
    let b = program("bash").display().to_string();
    let shell = [b.as_str(), "--norc", "--noprofile", "-i"];
    let setup = "source <(claude-failover completion bash); PS1='READY> '";
    interactive(
        &shell,
        setup,
        &env,
        "claude-failover get tas",
        1,
        &["READY> claude-failover get tasks "],
    );
    interactive(
        &shell,
        setup,
        &env,
        "claude-failover describe sessions c",
        4,
        &["ccl-0", "ccl-1", "ccl-2"],
    );
}

#[test]
#[cfg_attr(not(zsh), ignore = "needs zsh: apt-get install zsh")]
fn interactive_zsh_completes_on_tab() {
    let env = pool();
    let z = program("zsh").display().to_string();
    let shell = [z.as_str(), "-f", "-i"];
    let setup = "autoload -U compinit && compinit -u && source <(claude-failover completion zsh) && PS1='READY> '";
    interactive(
        &shell,
        setup,
        &env,
        "claude-failover get tas",
        1,
        &["READY> claude-failover get tasks "],
    );
    interactive(
        &shell,
        setup,
        &env,
        "claude-failover logs c",
        4,
        &["ccl-0", "ccl-1", "ccl-2"],
    );
    interactive(
        &shell,
        setup,
        &env,
        "claude-failover get tasks --sort",
        1,
        &["--sort-by"],
    );
    interactive(
        &shell,
        setup,
        &env,
        "claude-failover wait task fix",
        1,
        &["READY> claude-failover wait task fix-login "],
    );
}

#[test]
#[cfg_attr(not(fish), ignore = "needs fish: apt-get install fish")]
fn fish_completes_with_its_own_engine() {
    let fish = program("fish");
    let env = pool();
    let c = |line: &str| -> Vec<String> {
        let out = Command::new(&fish)
            .args([
                "--no-config",
                "-c",
                &format!("claude-failover completion fish | source; complete -C'{line}'"),
            ])
            .current_dir(env.dir.path())
            .env("PATH", path_var())
            .env("CLAUDE_FAILOVER_STORE", env.store())
            .env("HOME", env.dir.path())
            .env_remove("CLAUDE_FAILOVER_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(c("claude-failover ge"), ["get"]);
    assert_eq!(
        c("claude-failover get sessions c"),
        ["ccl-0", "ccl-1", "ccl-2"]
    );
    assert_eq!(c("claude-failover get sess"), ["sessionpools", "sessions"]);
    assert_eq!(c("claude-failover restart session ccl-1"), ["ccl-1"]);
    assert!(c("claude-failover get tasks -o js").contains(&"json".to_string()));
    assert!(c("claude-failover apply --").contains(&"--force-conflicts".to_string()));
    assert_eq!(c("claude-failover apply -f manif"), ["manifests/"]);
    // Descriptions: the object's phase, or its kind.
    let out = Command::new(&fish)
        .args(["--no-config", "-c", "claude-failover completion fish | source; complete -C'claude-failover get sessions ccl-0'"])
        .env("PATH", path_var())
        .env("CLAUDE_FAILOVER_STORE", env.store())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ccl-0\tSession\n");
}
