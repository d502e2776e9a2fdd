//! The worktree life cycle against real git.

use super::*;

fn run(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

/// A repository with one commit on `main`, and the folder worktrees go in.
fn repo() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    run(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "x\n").unwrap();
    run(&repo, &["add", "."]);
    run(&repo, &["commit", "-q", "-m", "first"]);
    let wt = t.path().join("wt");
    (t, repo, wt)
}

fn commit_in(dir: &Path, file: &str) {
    std::fs::write(dir.join(file), "change\n").unwrap();
    run(dir, &["add", "."]);
    run(dir, &["commit", "-q", "-m", file]);
}

#[test]
fn a_worktree_is_made_once_and_kept_across_launches() {
    let (_t, repo, wt) = repo();
    let dir = wt.join("web-0");
    assert_eq!(
        ensure(&repo, "main", &dir, "web-0").unwrap(),
        Ensured::Created
    );
    assert_eq!(git(&dir, &["branch", "--show-current"]).unwrap(), "web-0");
    std::fs::write(dir.join("work"), "in progress\n").unwrap();
    // A restart: the same worktree, its work in place.
    assert_eq!(
        ensure(&repo, "main", &dir, "web-0").unwrap(),
        Ensured::Existing
    );
    assert!(dir.join("work").exists());
    // Two sessions do not share files.
    let other = wt.join("web-1");
    ensure(&repo, "main", &other, "web-1").unwrap();
    assert!(!other.join("work").exists());
}

#[test]
fn the_daemons_queue_folder_does_not_hold_a_worktree_back() {
    let (_t, repo, wt) = repo();
    let dir = wt.join("s");
    ensure(&repo, "main", &dir, "s").unwrap();
    ensure(&repo, "main", &wt.join("t"), "t").unwrap();
    std::fs::create_dir_all(dir.join(".agent-queue")).unwrap();
    std::fs::write(dir.join(".agent-queue/status.json"), "{}").unwrap();
    let exclude = std::fs::read_to_string(repo.join(".git/info/exclude")).unwrap();
    assert_eq!(exclude.matches(QUEUE_PATTERN).count(), 1, "{exclude}");
    assert!(matches!(
        release(&repo, "main", &dir, "s").unwrap(),
        Released::Removed { .. }
    ));
}

#[test]
fn a_clean_merged_worktree_goes_and_its_branch_with_it() {
    let (_t, repo, wt) = repo();
    let dir = wt.join("s");
    ensure(&repo, "main", &dir, "s").unwrap();
    commit_in(&dir, "feature");
    run(&repo, &["merge", "-q", "--ff-only", "s"]);
    assert_eq!(
        release(&repo, "main", &dir, "s").unwrap(),
        Released::Removed {
            branch_deleted: true
        }
    );
    assert!(!dir.exists());
    assert!(!ok(&repo, &["show-ref", "--verify", "--quiet", "refs/heads/s"]).unwrap());
    assert_eq!(release(&repo, "main", &dir, "s").unwrap(), Released::Absent);
}

#[test]
fn uncommitted_or_unmerged_work_is_kept_and_said() {
    let (_t, repo, wt) = repo();
    let dir = wt.join("s");
    ensure(&repo, "main", &dir, "s").unwrap();
    std::fs::write(dir.join("draft"), "x\n").unwrap();
    let r = release(&repo, "main", &dir, "s").unwrap();
    assert!(
        matches!(&r, Released::Kept(m) if m.contains("1 uncommitted change")),
        "{r:?}"
    );
    assert!(dir.join("draft").exists());
    run(&dir, &["add", "."]);
    run(&dir, &["commit", "-q", "-m", "draft"]);
    let r = release(&repo, "main", &dir, "s").unwrap();
    assert!(
        matches!(&r, Released::Kept(m) if m.contains("neither merged into main nor pushed")),
        "{r:?}"
    );
    assert!(dir.exists());
    // Kept: a new session of that name carries on on its branch.
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        ensure(&repo, "main", &dir, "s").unwrap(),
        Ensured::Reattached
    );
    assert!(dir.join("draft").exists());
}

#[test]
fn a_pushed_branch_lets_its_worktree_go() {
    let (t, repo, wt) = repo();
    let remote = t.path().join("remote.git");
    run(
        t.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    run(
        &repo,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    let dir = wt.join("s");
    ensure(&repo, "main", &dir, "s").unwrap();
    commit_in(&dir, "feature");
    run(&dir, &["push", "-q", "-u", "origin", "s"]);
    assert_eq!(
        release(&repo, "main", &dir, "s").unwrap(),
        Released::Removed {
            branch_deleted: false
        }
    );
    assert!(ok(&repo, &["show-ref", "--verify", "--quiet", "refs/heads/s"]).unwrap());
}

#[test]
fn a_folder_in_the_way_or_no_repository_is_an_error() {
    let (t, repo, wt) = repo();
    let dir = wt.join("s");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mine"), "x").unwrap();
    assert!(matches!(
        ensure(&repo, "main", &dir, "s"),
        Err(Error::Occupied(..))
    ));
    let not = t.path().join("plain");
    std::fs::create_dir_all(&not).unwrap();
    assert!(matches!(
        ensure(&not, "main", &wt.join("x"), "x"),
        Err(Error::NotARepo(_))
    ));
}

#[test]
fn a_fresh_branch_is_made_from_the_base_only_in_a_clean_worktree() {
    let (_t, repo, wt) = repo();
    let dir = wt.join("web-0");
    ensure(&repo, "main", &dir, "web-0").unwrap();
    // Work committed on the session's branch: the fresh one starts from
    // main, without it.
    commit_in(&dir, "earlier");
    assert_eq!(
        fresh_branch(&dir, "main", "web-0.fix").unwrap(),
        Branched::Created
    );
    assert_eq!(
        git(&dir, &["branch", "--show-current"]).unwrap(),
        "web-0.fix"
    );
    assert!(!dir.join("earlier").exists());
    assert_eq!(
        fresh_branch(&dir, "main", "web-0.fix").unwrap(),
        Branched::AlreadyOn
    );
    // Uncommitted work: nothing is switched.
    std::fs::write(dir.join("draft"), "x\n").unwrap();
    let r = fresh_branch(&dir, "main", "web-0.next").unwrap();
    assert_eq!(
        r,
        Branched::NotClean("1 uncommitted change(s) (draft)".into())
    );
    assert_eq!(
        git(&dir, &["branch", "--show-current"]).unwrap(),
        "web-0.fix"
    );
    std::fs::remove_file(dir.join("draft")).unwrap();
    // Back to an existing branch; a bad name is an error.
    run(&dir, &["checkout", "-q", "web-0"]);
    assert_eq!(
        fresh_branch(&dir, "main", "web-0.fix").unwrap(),
        Branched::CheckedOut
    );
    assert!(fresh_branch(&dir, "main", "bad..name").is_err());
}

/// The daemon's look at a worktree writes nothing there: `git status`
/// would refresh a stale index under `index.lock` (and a user's `git add`
/// at that moment would fail with "index.lock: File exists").
#[test]
fn looking_at_a_worktree_takes_no_lock_and_rewrites_no_index() {
    let (_t, repo, _wt) = repo();
    let index = repo.join(".git/index");
    // The file's stat data no longer matches the index (same content,
    // another time): a refresh would rewrite the index.
    let f = std::fs::File::options()
        .write(true)
        .open(repo.join("README"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let before = std::fs::read(&index).unwrap();
    assert_eq!(uncommitted(&repo).unwrap(), None);
    assert_eq!(std::fs::read(&index).unwrap(), before, "index rewritten");
    // Without the setting, plain git does rewrite it: the test sees it.
    run(&repo, &["status", "--porcelain"]);
    assert_ne!(std::fs::read(&index).unwrap(), before);
}
