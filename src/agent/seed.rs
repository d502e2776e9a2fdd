//! Preparing an account's config dir (`CLAUDE_CONFIG_DIR`) before a launch,
//! so Claude Code starts straight at its prompt instead of a dialog.
//!
//! Everything here merges into what is there and never clobbers:
//! - `.claude.json`: onboarding marked done and the workdir trusted (other
//!   keys, other projects, the user's own state are kept). It is rewritten
//!   only when something was missing.
//! - `projects/` becomes a symlink to one shared transcript folder, so any
//!   account can `--resume` any conversation. A real `projects/` folder is
//!   merged into the shared one first; no transcript is ever deleted (a
//!   name clash keeps both files).

use crate::fsutil::write_atomic;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON, left untouched: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Env(#[from] crate::agent::env::EnvError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SeedError + '_ {
    move |source| SeedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Seed<'a> {
    /// Claude Code's version, for `lastOnboardingVersion`.
    pub version: &'a str,
    /// The directory the agent runs in (trusted).
    pub workdir: &'a Path,
    /// Other directories trusted in the same write (a pool's sibling
    /// worktrees).
    pub also_trusted: &'a [PathBuf],
    /// An API key the agent will use, if any: pre-approved so no dialog asks.
    pub api_key: Option<&'a str>,
    /// The shared transcript folder.
    pub shared_projects: &'a Path,
}

/// Seeds `config_dir` for one launch.
/// The API key a session's agent runs with: its own `agent.env`, else the
/// daemon's environment.
pub fn session_api_key(session: &crate::api::Session) -> Option<String> {
    crate::agent::env::lookup(&session.spec.agent.env, "ANTHROPIC_API_KEY")
        .or_else(|| std::env::var("ANTHROPIC_API_KEY").ok())
}

/// Whether account `account` (config dir `config_dir`) can take `session`
/// now: its config dir seeded for the session's workdir, credentials
/// present (its `.credentials.json`, or an API key or OAuth token in the
/// agent's or the daemon's environment), and its `projects/` leading to
/// the shared transcripts so the conversation can be resumed there. Err:
/// what is missing.
pub fn preflight(
    config_dir: &Path,
    session: &crate::api::Session,
    neighbours: &[PathBuf],
    shared_projects: &Path,
    account: &str,
) -> Result<(), String> {
    let workdir = std::fs::canonicalize(crate::fsutil::expand_home(&session.spec.workdir))
        .map_err(|e| format!("workdir {}: {e}", session.spec.workdir))?;
    seed_for_session(config_dir, &workdir, session, neighbours, shared_projects)
        .map_err(|e| format!("cannot prepare {}: {e}", config_dir.display()))?;
    let has_credentials = crate::quota::poll::access_token(config_dir).is_some()
        || session_api_key(session).is_some()
        || session
            .spec
            .agent
            .env
            .contains_key("CLAUDE_CODE_OAUTH_TOKEN")
        || std::env::var_os("CLAUDE_CODE_OAUTH_TOKEN").is_some();
    if !has_credentials {
        return Err(format!(
            "no credentials for account {account}: neither {}/.credentials.json nor an API key or OAuth token in the environment",
            config_dir.display()
        ));
    }
    let projects = config_dir.join("projects");
    let linked =
        std::fs::canonicalize(&projects).ok() == std::fs::canonicalize(shared_projects).ok();
    if !linked {
        return Err(format!(
            "{} does not lead to the shared transcripts",
            projects.display()
        ));
    }
    Ok(())
}

/// Seeds `config_dir` for `session` running in `workdir` (see
/// [`seed_account`]); the one preparation a launch and a failover's
/// preflight share. `neighbours`: where the other Sessions of its
/// namespace run (their agents' folders), trusted in the same write.
pub fn seed_for_session(
    config_dir: &Path,
    workdir: &Path,
    session: &crate::api::Session,
    neighbours: &[PathBuf],
    shared_projects: &Path,
) -> Result<(), SeedError> {
    // Every value file of the agent's environment reads, or the launch
    // (and a failover's preflight) fails saying which.
    crate::agent::env::resolve(&session.spec.agent.env)?;
    let api_key = session_api_key(session);
    // With a workspace, each Session runs in its own worktree under
    // `spec.workdir`, and Claude Code trusts a worktree only by its own
    // entry. A Claude Code of the account rewrites `.claude.json` from the
    // copy it read at its start, so an entry seeded while another agent of
    // the pool starts there (a failover moves them together) could be lost
    // and the agent stop at the trust dialog. So every worktree of the
    // folder is trusted at each seeding: whichever agent starts first
    // carries its siblings' entries. The same holds for Sessions of other
    // workdirs that may run under the account (a failover moves all of an
    // account's sessions at once): the other Sessions' folders of the
    // namespace are trusted too (those that exist on this machine).
    let mut siblings: Vec<PathBuf> = neighbours
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p != workdir)
        .collect();
    if session.spec.workspace.is_some()
        && let Ok(entries) = std::fs::read_dir(crate::fsutil::expand_home(&session.spec.workdir))
    {
        siblings.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join(".git").is_file())
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .filter(|p| p != workdir),
        );
    }
    siblings.sort();
    siblings.dedup();
    seed_account(
        config_dir,
        &Seed {
            version: crate::agent::screen::OBSERVED_ON,
            workdir,
            also_trusted: &siblings,
            api_key: api_key.as_deref(),
            shared_projects,
        },
    )
}

/// The lock file that makes seeding one config dir one writer at a time.
const SEED_LOCK: &str = ".claude-failover-seed.lock";

pub fn seed_account(config_dir: &Path, s: &Seed<'_>) -> Result<(), SeedError> {
    std::fs::create_dir_all(config_dir).map_err(io(config_dir))?;
    // Sessions of one account in different workdirs are seeded at once (a
    // failover moves them together): each reads, merges and writes back
    // `.claude.json`, so without the lock one's trust entry could be lost
    // (its agent would then stop at the trust dialog). Held for the merge
    // only (milliseconds); released when the file closes.
    let lock_path = config_dir.join(SEED_LOCK);
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    merge_claude_json(config_dir, s)?;
    share_projects(config_dir, s.shared_projects)?;
    Ok(())
}

fn merge_claude_json(config_dir: &Path, s: &Seed<'_>) -> Result<(), SeedError> {
    let path = config_dir.join(".claude.json");
    let mut root = match std::fs::read(&path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => json!({}),
        Ok(b) => serde_json::from_slice::<Value>(&b).map_err(|e| SeedError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(e) => return Err(io(&path)(e)),
    };
    let Some(obj) = root.as_object_mut() else {
        return Err(SeedError::Corrupt {
            path,
            message: "the top level is not an object".into(),
        });
    };
    let before = obj.clone();
    obj.insert("hasCompletedOnboarding".into(), json!(true));
    if obj
        .get("lastOnboardingVersion")
        .and_then(Value::as_str)
        .is_none()
    {
        obj.insert("lastOnboardingVersion".into(), json!(s.version));
    }
    let projects = obj.entry("projects").or_insert_with(|| json!({}));
    if let Some(projects) = projects.as_object_mut() {
        let dirs = std::iter::once(s.workdir).chain(s.also_trusted.iter().map(PathBuf::as_path));
        for dir in dirs {
            let p = projects
                .entry(dir.to_string_lossy().to_string())
                .or_insert_with(|| json!({}));
            if let Some(p) = p.as_object_mut() {
                p.insert("hasTrustDialogAccepted".into(), json!(true));
            }
        }
    }
    if let Some(key) = s.api_key {
        let tail: String = key
            .chars()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let responses = obj
            .entry("customApiKeyResponses")
            .or_insert_with(|| json!({}));
        if let Some(r) = responses.as_object_mut() {
            let approved = r.entry("approved").or_insert_with(|| json!([]));
            if let Some(a) = approved.as_array_mut()
                && !a.iter().any(|v| v.as_str() == Some(&tail))
            {
                a.push(json!(tail));
            }
            r.entry("rejected").or_insert_with(|| json!([]));
        }
    }
    if *obj == before {
        return Ok(());
    }
    let data = serde_json::to_vec_pretty(&Value::Object(std::mem::take(obj) as Map<String, Value>))
        .expect("JSON serializes");
    write_atomic(&path, &data, Some(0o600), true).map_err(io(&path))
}

/// Makes `config_dir/projects` a symlink to `shared`.
pub fn share_projects(config_dir: &Path, shared: &Path) -> Result<(), SeedError> {
    std::fs::create_dir_all(shared).map_err(io(shared))?;
    let link = config_dir.join("projects");
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.is_symlink() => {
            let target = std::fs::read_link(&link).map_err(io(&link))?;
            if same_dir(&target, shared) {
                return Ok(());
            }
            // A symlink elsewhere holds no data of its own: repoint it
            // (another session of the account may have just done so).
            match std::fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&link)(e));
                }
                _ => {}
            }
        }
        Ok(m) if m.is_dir() => {
            merge_dir(&link, shared)?;
            std::fs::remove_dir(&link).map_err(io(&link))?;
        }
        Ok(_) => {
            // A plain file named `projects`: keep it aside, never delete.
            let aside = config_dir.join("projects.file-kept-by-claude-failover");
            std::fs::rename(&link, &aside).map_err(io(&link))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&link)(e)),
    }
    match std::os::unix::fs::symlink(shared, &link) {
        // Sessions of one account prepare it at once (a failover moves them
        // together): the link another made is as good as this one.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && std::fs::read_link(&link).is_ok_and(|t| same_dir(&t, shared)) =>
        {
            Ok(())
        }
        r => r.map_err(io(&link)),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Moves everything under `from` into `to`, keeping both files on a clash.
fn merge_dir(from: &Path, to: &Path) -> Result<(), SeedError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let is_dir = entry.file_type().map_err(io(&src))?.is_dir();
        if is_dir && dst.is_dir() {
            merge_dir(&src, &dst)?;
            std::fs::remove_dir(&src).map_err(io(&src))?;
        } else if !dst.exists() {
            std::fs::rename(&src, &dst).map_err(io(&src))?;
        } else if !is_dir && std::fs::read(&src).ok() == std::fs::read(&dst).ok() {
            std::fs::remove_file(&src).map_err(io(&src))?; // an identical copy
        } else {
            let mut n = 1;
            let kept = loop {
                let name = format!("{}.moved-{n}", entry.file_name().to_string_lossy());
                let candidate = to.join(name);
                if !candidate.exists() {
                    break candidate;
                }
                n += 1;
            };
            std::fs::rename(&src, &kept).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// The transcript of `agent_session_id` in the shared folder, if any.
pub fn transcript(shared: &Path, agent_session_id: &str) -> Option<PathBuf> {
    let file = format!("{agent_session_id}.jsonl");
    std::fs::read_dir(shared)
        .ok()?
        .flatten()
        .map(|e| e.path().join(&file))
        .find(|p| p.is_file())
}

/// True when a transcript for `agent_session_id` exists in the shared
/// folder.
pub fn transcript_exists(shared: &Path, agent_session_id: &str) -> bool {
    transcript(shared, agent_session_id).is_some()
}

/// True when the transcript holds a conversation `--resume` can continue.
/// Claude Code writes messages lazily: an agent killed early leaves a
/// transcript with only its title, and `--resume` then refuses it
/// ("No conversation found").
pub fn transcript_resumable(shared: &Path, agent_session_id: &str) -> bool {
    use std::io::BufRead;
    let Some(path) = transcript(shared, agent_session_id) else {
        return false;
    };
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .any(|l| {
            serde_json::from_str::<Value>(&l)
                .ok()
                .and_then(|v| {
                    v.get("type")
                        .and_then(Value::as_str)
                        .map(|t| t == "user" || t == "assistant")
                })
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_json_is_merged_not_clobbered() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("acct");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(
            cfg.join(".claude.json"),
            r#"{"userID":"u1","projects":{"/other":{"allowedTools":["x"]}},"lastOnboardingVersion":"2.0.0"}"#,
        )
        .unwrap();
        let shared = d.path().join("shared");
        let s = Seed {
            version: "2.1.197",
            workdir: Path::new("/code/api"),
            also_trusted: &[],
            api_key: Some("sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789"),
            shared_projects: &shared,
        };
        seed_account(&cfg, &s).unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(cfg.join(".claude.json")).unwrap()).unwrap();
        assert_eq!(v["userID"], "u1");
        assert_eq!(
            v["lastOnboardingVersion"], "2.0.0",
            "the user's own value is kept"
        );
        assert_eq!(v["hasCompletedOnboarding"], true);
        assert_eq!(v["projects"]["/other"]["allowedTools"][0], "x");
        assert_eq!(v["projects"]["/code/api"]["hasTrustDialogAccepted"], true);
        assert_eq!(
            v["customApiKeyResponses"]["approved"][0],
            "qrstuvwxyz0123456789"
        );
        // idempotent: a second seed writes nothing
        let before = std::fs::metadata(cfg.join(".claude.json"))
            .unwrap()
            .modified()
            .unwrap();
        seed_account(&cfg, &s).unwrap();
        assert_eq!(
            std::fs::metadata(cfg.join(".claude.json"))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
        // corrupt JSON is reported and left alone
        std::fs::write(cfg.join(".claude.json"), "{not json").unwrap();
        assert!(matches!(
            seed_account(&cfg, &s),
            Err(SeedError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(cfg.join(".claude.json")).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn sessions_of_one_account_in_other_workdirs_are_all_trusted_when_seeded_at_once() {
        for _ in 0..10 {
            let d = tempfile::tempdir().unwrap();
            let cfg = d.path().join("acct");
            let shared = d.path().join("shared");
            let dirs: Vec<String> = (0..8).map(|i| format!("/wt/crew-{i}")).collect();
            let start = std::sync::Barrier::new(dirs.len());
            std::thread::scope(|sc| {
                for w in &dirs {
                    let (cfg, shared, start) = (&cfg, &shared, &start);
                    sc.spawn(move || {
                        start.wait();
                        let s = Seed {
                            version: "2.1.332",
                            workdir: Path::new(w),
                            also_trusted: &[],
                            api_key: None,
                            shared_projects: shared,
                        };
                        seed_account(cfg, &s).unwrap();
                    });
                }
            });
            let v: Value =
                serde_json::from_slice(&std::fs::read(cfg.join(".claude.json")).unwrap()).unwrap();
            for w in &dirs {
                assert_eq!(v["projects"][w]["hasTrustDialogAccepted"], true, "{w}: {v}");
            }
        }
    }

    /// A failover moves an account's sessions together: the first agent to
    /// start under the target account carries every neighbour's trust entry
    /// (its later rewrite of `.claude.json` from the copy it read cannot drop
    /// one seeded meanwhile). Folders that do not exist here are left out.
    #[test]
    fn an_accounts_seeding_trusts_the_other_sessions_folders_too() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, shared) = (d.path().join("acct"), d.path().join("shared"));
        let dirs: Vec<PathBuf> = ["api", "web", "docs"]
            .iter()
            .map(|n| d.path().join(n))
            .collect();
        for w in &dirs {
            std::fs::create_dir_all(w).unwrap();
        }
        let s: crate::api::Session = serde_json::from_value(json!({
            "apiVersion": "claude-failover.io/v1alpha1",
            "kind": "Session",
            "metadata": {"name": "api", "namespace": "default"},
            "spec": {"workdir": dirs[0], "agent": {"command": "claude"}},
        }))
        .unwrap();
        let mut neighbours = dirs[1..].to_vec();
        neighbours.push(d.path().join("not-on-this-machine"));
        neighbours.push(dirs[0].clone());
        let own = std::fs::canonicalize(&dirs[0]).unwrap();
        seed_for_session(&cfg, &own, &s, &neighbours, &shared).unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(cfg.join(".claude.json")).unwrap()).unwrap();
        let projects = v["projects"].as_object().unwrap();
        for w in &dirs {
            let w = std::fs::canonicalize(w).unwrap();
            assert_eq!(
                projects[&*w.to_string_lossy()]["hasTrustDialogAccepted"],
                true,
                "{v}"
            );
        }
        assert_eq!(projects.len(), 3, "{v}");
    }

    #[test]
    fn sessions_of_one_account_share_its_projects_at_once() {
        // A failover prepares the target account for all its sessions at
        // once: none of them may fail because another made the link first.
        for _ in 0..20 {
            let d = tempfile::tempdir().unwrap();
            let shared = d.path().join("shared");
            let cfg = d.path().join("acct");
            std::fs::create_dir_all(&cfg).unwrap();
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let tries: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            share_projects(&cfg, &shared)
                        })
                    })
                    .collect();
                for t in tries {
                    t.join().unwrap().unwrap();
                }
            });
            let target = std::fs::read_link(cfg.join("projects")).unwrap();
            assert!(same_dir(&target, &shared));
        }
    }

    #[test]
    fn projects_become_a_shared_symlink_and_no_transcript_is_lost() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir_all(shared.join("-code-api")).unwrap();
        std::fs::write(shared.join("-code-api/a.jsonl"), "shared a").unwrap();
        let cfg = d.path().join("acct");
        std::fs::create_dir_all(cfg.join("projects/-code-api")).unwrap();
        std::fs::write(cfg.join("projects/-code-api/a.jsonl"), "local a (differs)").unwrap();
        std::fs::write(cfg.join("projects/-code-api/b.jsonl"), "local b").unwrap();
        std::fs::create_dir_all(cfg.join("projects/-code-web")).unwrap();
        std::fs::write(cfg.join("projects/-code-web/c.jsonl"), "local c").unwrap();
        share_projects(&cfg, &shared).unwrap();
        assert!(
            std::fs::symlink_metadata(cfg.join("projects"))
                .unwrap()
                .is_symlink()
        );
        let read = |p: &str| std::fs::read_to_string(shared.join(p)).unwrap();
        assert_eq!(read("-code-api/a.jsonl"), "shared a");
        assert_eq!(read("-code-api/a.jsonl.moved-1"), "local a (differs)");
        assert_eq!(read("-code-api/b.jsonl"), "local b");
        assert_eq!(read("-code-web/c.jsonl"), "local c");
        assert_eq!(
            std::fs::read_to_string(cfg.join("projects/-code-web/c.jsonl")).unwrap(),
            "local c"
        );
        assert!(transcript_exists(&shared, "c"));
        assert!(!transcript_resumable(&shared, "c"), "no messages in it");
        std::fs::write(
            shared.join("-code-web/d.jsonl"),
            "{\"type\":\"ai-title\"}\n{\"type\":\"user\",\"message\":{}}\n",
        )
        .unwrap();
        assert!(transcript_resumable(&shared, "d"));
        assert!(!transcript_exists(&shared, "zzz"));
        share_projects(&cfg, &shared).unwrap(); // idempotent
    }
}
