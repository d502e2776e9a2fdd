//! The bad-input corpus: every malformed manifest gives one clear line
//! `FILE:LINE:COL: field.path: what is wrong`, a non-zero exit, and leaves
//! the store byte-identical.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/bad")
        .join(rel)
}

/// (file in the corpus, expected line after `FILE:`)
const CASES: &[(&str, &str)] = &[
    (
        "invalid-yaml.yaml",
        "7:34: spec.agent.args[1]: invalid YAML: unclosed bracket",
    ),
    (
        "wrong-type.yaml",
        "7:3: spec.priority: invalid type: string \"first\", expected an integer",
    ),
    (
        "unknown-field.yaml",
        "8:5: spec.agent.modle: unknown field `modle`",
    ),
    (
        "unknown-metadata-field.yaml",
        "5:3: metadata.nmespace: unknown field `nmespace`",
    ),
    (
        "missing-name.yaml",
        "4:3: metadata.name: required field is missing",
    ),
    (
        "unknown-apiversion.yaml",
        "1:1: apiVersion: unknown apiVersion `claude-failover.io/v2`",
    ),
    ("unknown-kind.yaml", "2:1: kind: unknown kind `Agent`"),
    ("empty.yaml", "1:1: (file): no objects in file"),
    (
        "threshold-out-of-range.yaml",
        "8:5: spec.thresholds.fiveHour: 150 is out of range",
    ),
    (
        "bad-name.yaml",
        "4:3: metadata.name: `CCL_9` is not a valid name",
    ),
    (
        "bad-reference.yaml",
        "7:3: spec.account: must name an Account",
    ),
    ("non-utf8.yaml", "6:15: (file): not valid UTF-8"),
    (
        "duplicate-key.yaml",
        "7:3: spec.workdir: duplicate key `workdir` (first at line 6)",
    ),
    ("not-a-mapping.yaml", "1:1: (root): expected a mapping"),
    (
        "misplaced-env.yaml",
        "10:7: spec.agent.env.CLAUDE_CONFIG_DIR: remove it: the account's config dir is set by the Session's account",
    ),
    (
        "permission-conflict.yaml",
        "9:5: spec.agent.args: `--dangerously-skip-permissions` and spec.agent.permissionMode (auto) both set the permission mode",
    ),
    (
        "unknown-permission-mode.yaml",
        "8:5: spec.agent.permissionMode: unknown variant `yolo`, expected one of `default`, `acceptEdits`, `auto`, `plan`, `dontAsk`, `bypassPermissions`",
    ),
    // Refused, never bent or dropped.
    (
        "thresholds-list.yaml",
        "7:3: spec.thresholds: invalid type: a list, expected a mapping",
    ),
    (
        "not-finite.yaml",
        "7:10: spec.model: `.nan` is not a finite number",
    ),
    (
        "float-too-large.yaml",
        "7:13: spec.priority: `1e400` is too large for a number",
    ),
    (
        "integer-too-large.yaml",
        "7:13: spec.priority: `99999999999999999999` is too large",
    ),
    (
        "int32-too-large.yaml",
        "7:3: spec.priority: 3000000000 is too large: expected an integer of at most 2147483647",
    ),
    (
        "selector-unknown-key.yaml",
        "9:5: spec.sessionSelector.matchLabel: unknown field `matchLabel`",
    ),
    (
        "labels-same-key.yaml",
        "5:18: metadata.labels.1: duplicate key `1` (first at line 5, written another way",
    ),
    (
        "timeout-zero.yaml",
        "7:3: spec.timeoutSeconds: 0 is out of range",
    ),
    (
        "nul-in-path.yaml",
        "6:14: spec.configDir: contains the control character U+0000",
    ),
    (
        "literal-secret.yaml",
        "9:7: spec.agent.env.ANTHROPIC_API_KEY: a literal value that looks like a secret",
    ),
    (
        "escape-in-prompt.yaml",
        "6:11: spec.prompt: contains the control character U+001B",
    ),
];

/// The lines of stderr that report a problem (not the closing summary).
fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("error: nothing"))
        .collect()
}

fn assert_rejected(env: &Env, args: &[&str], file: &Path, expected: &str) {
    let before = snapshot(&env.store());
    let out = env.run(args);
    assert_ne!(out.code, 0, "{args:?} should fail; stdout:\n{}", out.stdout);
    let lines = problem_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "one line per problem, got:\n{}", out.stderr);
    let want = format!("{}:{expected}", file.display());
    assert!(
        lines[0].starts_with(&want),
        "got:  {}\nwant: {want}...",
        lines[0]
    );
    assert!(
        out.stdout.is_empty(),
        "nothing applied, yet stdout says:\n{}",
        out.stdout
    );
    assert!(
        before == snapshot(&env.store()),
        "the store changed after {args:?}"
    );
}

fn seeded() -> Env {
    let env = Env::new();
    env.ok(&["apply", "-f", examples().to_str().unwrap()]);
    env
}

#[test]
fn corpus_files_each_give_one_clear_line_and_change_nothing() {
    let env = seeded();
    for (file, expected) in CASES {
        let path = corpus(file);
        assert_rejected(
            &env,
            &["apply", "-f", path.to_str().unwrap()],
            &path,
            expected,
        );
        // diff reports the same problem with exit code 2.
        let out = env.run(&["diff", "-f", path.to_str().unwrap()]);
        assert_eq!(out.code, 2, "diff of {file}: {}", out.stderr);
    }
}

#[test]
fn an_object_defined_twice_names_both_places() {
    let env = seeded();
    let dir = corpus("duplicates");
    let a = dir.join("a.yaml");
    let b = dir.join("b.yaml");
    let expected = format!(
        "2:1: metadata.name: Session default/twice is defined twice: here and at {}:1:1",
        a.display()
    );
    assert_rejected(&env, &["apply", "-f", dir.to_str().unwrap()], &b, &expected);
}

#[test]
fn one_bad_file_in_a_directory_blocks_the_whole_apply() {
    let env = seeded();
    let dir = env.path("mixed");
    env.write("mixed/good.yaml", &session_yaml("fine", ""));
    std::fs::copy(corpus("unknown-field.yaml"), dir.join("bad.yaml")).unwrap();
    let bad = dir.join("bad.yaml");
    assert_rejected(
        &env,
        &["apply", "-f", dir.to_str().unwrap()],
        &bad,
        "8:5: spec.agent.modle: unknown field",
    );
    assert_eq!(
        env.run(&["get", "session", "fine"]).code,
        1,
        "the good file must not be applied either"
    );
}

#[test]
fn a_huge_file_is_refused_with_its_size() {
    let env = seeded();
    let mut text = session_yaml("big", "");
    text.push_str("# ");
    text.push_str(&"x".repeat(5 * 1024 * 1024));
    text.push('\n');
    let path = env.write("huge.yaml", &text);
    assert_rejected(
        &env,
        &["apply", "-f", path.to_str().unwrap()],
        &path,
        "1:1: (file): file is ",
    );
}

#[test]
fn a_symlink_loop_under_recursive_apply_is_reported() {
    let env = seeded();
    env.write("tree/ok.yaml", &session_yaml("in-tree", ""));
    let sub = env.path("tree/sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::os::unix::fs::symlink(env.path("tree"), sub.join("loop")).unwrap();
    let looped = sub.join("loop");
    let tree = env.path("tree");
    assert_rejected(
        &env,
        &["apply", "-R", "-f", tree.to_str().unwrap()],
        &looped,
        &format!(
            "1:1: (file): symlink loop: this directory is {} again",
            std::fs::canonicalize(&tree).unwrap().display()
        ),
    );
}

#[test]
fn stdin_errors_are_named_stdin() {
    let env = seeded();
    let before = snapshot(&env.store());
    let out = env.run_stdin(
        &["apply", "-f", "-"],
        &format!(
            "{HEAD}kind: Task\nmetadata: {{name: t}}\nspec: {{prompt: hi, priority: urgent}}\n"
        ),
    );
    assert_eq!(out.code, 1);
    let lines = problem_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("<stdin>:4:20: spec.priority: unknown variant `urgent`"),
        "{}",
        lines[0]
    );
    assert!(before == snapshot(&env.store()));
}
