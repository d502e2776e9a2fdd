//! `edit` (the objects in `$KUBE_EDITOR` / `$EDITOR`, re-opened with the
//! problems when an edit does not hold) and `patch` (JSON merge patch or
//! JSON patch). Both are updates by their own field manager.

use super::args::{DryRun, targets};
use super::label::{not_found, resolve};
use super::{Ctx, print};
use crate::api::ObjectKey;
use crate::store::StoreError;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PatchArgs {
    /// RESOURCE NAME... or KIND/NAME...
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// The patch (JSON or YAML)
    #[arg(short = 'p', long, required_unless_present = "patch_file")]
    pub patch: Option<String>,
    /// A file holding the patch
    #[arg(long, conflicts_with = "patch")]
    pub patch_file: Option<PathBuf>,
    /// `merge` (JSON merge patch, RFC 7386; the default) or `json` (JSON
    /// patch, RFC 6902). Strategic merge patches are a Kubernetes built-in
    /// kinds' feature, not one of custom kinds like these.
    #[arg(long = "type", default_value = "merge", value_parser = ["merge", "json", "strategic"])]
    pub type_: String,
    /// `status` patches the status instead of the spec and metadata
    #[arg(long, value_parser = ["status"])]
    pub subresource: Option<String>,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
    /// Print the patched object (`yaml`, `json`) or its name (`name`)
    #[arg(short = 'o', long, value_parser = ["yaml", "json", "name"])]
    pub output: Option<String>,
    /// The field manager recorded as the owner of the changed fields
    #[arg(long, default_value = "claude-failover-patch")]
    pub field_manager: String,
}

#[derive(Args, Debug)]
pub struct EditArgs {
    /// RESOURCE [NAME...] or KIND/NAME...
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Edit every object of the kinds in the namespace
    #[arg(long)]
    pub all: bool,
    /// Edit the objects whose labels match
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Edit as `yaml` (default) or `json`
    #[arg(short = 'o', long, default_value = "yaml", value_parser = ["yaml", "json"])]
    pub output: String,
    /// The field manager recorded as the owner of the changed fields
    #[arg(long, default_value = "claude-failover-edit")]
    pub field_manager: String,
}

fn parse_doc(text: &str) -> Result<Value> {
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| anyhow::anyhow!("the patch is neither JSON nor YAML: {e}"))
}

/// The object after `patch` (of `type_`).
fn apply_patch(obj: &mut Value, type_: &str, patch: &Value) -> Result<(), String> {
    match type_ {
        "merge" => {
            if !patch.is_object() {
                return Err("a merge patch is a map (e.g. {\"spec\":{\"priority\":\"high\"}})".into());
            }
            json_patch::merge(obj, patch);
            Ok(())
        }
        "json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("not a JSON patch (a list of operations): {e}"))?;
            json_patch::patch(obj, &ops).map_err(|e| e.to_string())
        }
        _ => Err(
            "strategic merge patches are not supported for these kinds (custom resources): use --type merge or --type json"
                .into(),
        ),
    }
}

pub fn patch(ctx: &Ctx, a: PatchArgs) -> Result<ExitCode> {
    let text = match (&a.patch, &a.patch_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => bail!("give the patch with -p or --patch-file"),
    };
    let patch = parse_doc(&text)?;
    if a.type_ == "strategic" {
        bail!(
            "{}",
            apply_patch(&mut json!({}), "strategic", &patch).unwrap_err()
        );
    }
    let keys = resolve(ctx, &targets(&a.resources)?, false, None)?;
    let store = ctx.store()?;
    let mut failed = false;
    for key in keys {
        let r = if a.subresource.is_some() {
            patch_status(&store, &key, &a, &patch)
        } else {
            store
                .update_object(&key, None, &a.field_manager, a.dry_run.active(), |obj| {
                    apply_patch(obj, &a.type_, &patch)
                })
                .map(|u| (u.changed, u.object))
        };
        match r {
            Ok((changed, obj)) => match a.output.as_deref() {
                Some("yaml") => print!("{}", print::to_yaml(&print::without_managed_fields(&obj))),
                Some("json") => println!(
                    "{}",
                    serde_json::to_string_pretty(&print::without_managed_fields(&obj))?
                ),
                Some(_) => println!("{}", print::name_of(key.kind, &obj)),
                None => println!(
                    "{}/{} {}{}",
                    key.kind.qualified(),
                    key.name,
                    if changed {
                        "patched"
                    } else {
                        "patched (no change)"
                    },
                    a.dry_run.suffix()
                ),
            },
            Err(StoreError::NotFound(_)) => {
                eprintln!("error: {}", not_found(&key));
                failed = true;
            }
            Err(StoreError::Invalid { message, .. }) => {
                eprintln!("error: {}/{}: {message}", key.kind.qualified(), key.name);
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--subresource status`: the patch applies to the object and only its
/// status is written (checked against the kind's status type).
fn patch_status(
    store: &crate::store::Store,
    key: &ObjectKey,
    a: &PatchArgs,
    patch: &Value,
) -> Result<(bool, Value), StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        key: key.clone(),
        message,
    };
    let current = store
        .get(key)?
        .ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let mut obj = current.clone();
    apply_patch(&mut obj, &a.type_, patch).map_err(invalid)?;
    let status = obj.get("status").cloned().unwrap_or(json!({}));
    check_status(key.kind, &status).map_err(invalid)?;
    if current.get("status").unwrap_or(&json!({})) == &status {
        return Ok((false, current));
    }
    if a.dry_run.active() {
        return Ok((true, obj));
    }
    let rv = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let written = store.write_status(key, &status, rv)?;
    Ok((true, written))
}

fn check_status(kind: crate::api::Kind, status: &Value) -> Result<(), String> {
    use crate::api::{AccountStatus, Kind, SessionStatus, TaskStatus};
    let r = match kind {
        Kind::Account => serde_json::from_value::<AccountStatus>(status.clone()).map(|_| ()),
        Kind::Session => serde_json::from_value::<SessionStatus>(status.clone()).map(|_| ()),
        Kind::Task => serde_json::from_value::<TaskStatus>(status.clone()).map(|_| ()),
        Kind::Swap | Kind::Lease | Kind::ManifestSync | Kind::SessionPool | Kind::Node => {
            return Err(format!(
                "{} are written by the daemon only: their status cannot be patched",
                kind.plural()
            ));
        }
    };
    r.map_err(|e| format!("status: {e}"))
}

// ------------------------------------------------------------------- edit

const EDIT_HEADER: &str =
    "# Please edit the object below. Lines beginning with a '#' will be ignored,
# and an empty file will abort the edit. If an error occurs while saving this file will be
# reopened with the relevant failures.
#
";

/// The editor command: `$KUBE_EDITOR`, `$EDITOR`, else `vi`.
fn editor() -> Result<Vec<String>> {
    let cmd = std::env::var("KUBE_EDITOR")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".into());
    let words =
        shlex::split(&cmd).with_context(|| format!("cannot parse the editor command `{cmd}`"))?;
    if words.is_empty() {
        bail!("the editor command is empty");
    }
    Ok(words)
}

fn run_editor(file: &Path) -> Result<()> {
    let words = editor()?;
    let status = std::process::Command::new(&words[0])
        .args(&words[1..])
        .arg(file)
        .status()
        .with_context(|| {
            format!(
                "cannot run the editor `{}` (set KUBE_EDITOR or EDITOR)",
                words[0]
            )
        })?;
    if !status.success() {
        bail!("the editor `{}` exited with {status}", words[0]);
    }
    Ok(())
}

/// Text without comment lines (what counts as the edit).
fn content(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

fn render(objs: &[Value], format: &str) -> String {
    let doc = if objs.len() == 1 {
        objs[0].clone()
    } else {
        json!({"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}})
    };
    if format == "json" {
        serde_json::to_string_pretty(&doc).expect("JSON values serialize") + "\n"
    } else {
        print::to_yaml(&doc)
    }
}

/// A private directory for the file being edited, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!(
            "claude-failover-edit-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Keeps a copy of a failed edit where the user can find it.
fn save_copy(text: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "claude-failover-edit-{}.yaml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, text).ok().map(|_| path)
}

pub fn edit(ctx: &Ctx, a: EditArgs) -> Result<ExitCode> {
    let keys = resolve(ctx, &targets(&a.resources)?, a.all, a.selector.as_deref())?;
    let store = ctx.store()?;
    let mut originals = Vec::new();
    for k in &keys {
        match store.get(k)? {
            Some(v) => originals.push(print::without_managed_fields(&v)),
            None => bail!("{}", not_found(k)),
        }
    }
    if originals.is_empty() {
        eprintln!("No resources found in {} namespace.", ctx.namespace);
        return Ok(ExitCode::SUCCESS);
    }
    let ext = if a.output == "json" { "json" } else { "yaml" };
    let dir = TempDir::new()?;
    let file = dir.0.join(format!("edit.{ext}"));
    let original_text = render(&originals, &a.output);
    let mut text = format!("{EDIT_HEADER}{original_text}");
    let mut last_failed: Option<String> = None;
    loop {
        crate::fsutil::write_atomic(&file, text.as_bytes(), None, false)
            .with_context(|| format!("cannot write {}", file.display()))?;
        run_editor(&file)?;
        let edited = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let body = content(&edited);
        if body.is_empty() || body == content(&original_text) {
            if last_failed.is_some() {
                let copy = save_copy(&edited);
                bail!(
                    "Edit cancelled, no valid changes were saved.{}",
                    copy.map(|p| format!(
                        " A copy of your changes has been stored to \"{}\"",
                        p.display()
                    ))
                    .unwrap_or_default()
                );
            }
            println!("Edit cancelled, no changes made.");
            return Ok(ExitCode::SUCCESS);
        }
        if last_failed.as_deref() == Some(body.as_str()) {
            let copy = save_copy(&edited);
            bail!(
                "Edit cancelled, no valid changes were saved.{}",
                copy.map(|p| format!(
                    " A copy of your changes has been stored to \"{}\"",
                    p.display()
                ))
                .unwrap_or_default()
            );
        }
        match save_edit(&store, &keys, &file, &edited, &a.field_manager) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(Problem::Retry(problems)) => {
                let mut header = String::from(EDIT_HEADER);
                header.push_str("# The edited file had problems:\n");
                for p in &problems {
                    for (i, l) in p.lines().enumerate() {
                        header.push_str(if i == 0 { "# * " } else { "#   " });
                        header.push_str(l);
                        header.push('\n');
                    }
                }
                header.push_str("#\n");
                text = format!("{header}{body}\n");
                last_failed = Some(body);
            }
            Err(Problem::Fatal(e)) => {
                let copy = save_copy(&edited);
                bail!(
                    "{e}{}",
                    copy.map(|p| format!(
                        "\nA copy of your changes has been stored to \"{}\"",
                        p.display()
                    ))
                    .unwrap_or_default()
                );
            }
        }
    }
}

enum Problem {
    /// Fixable in the editor: re-open with these lines.
    Retry(Vec<String>),
    /// The store refused (a conflict): stop.
    Fatal(String),
}

/// Decodes the edited file strictly and writes each object that changed.
fn save_edit(
    store: &crate::store::Store,
    keys: &[ObjectKey],
    file: &Path,
    text: &str,
    manager: &str,
) -> Result<Vec<String>, Problem> {
    let (objs, errs) = crate::manifest::decode_file(&file.display().to_string(), text.as_bytes());
    if !errs.is_empty() {
        return Err(Problem::Retry(errs.iter().map(|e| e.to_string()).collect()));
    }
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for d in &objs {
        let mut key = d.object.key();
        if key.namespace.is_empty() {
            key.namespace = keys
                .first()
                .map(|k| k.namespace.clone())
                .unwrap_or_default();
        }
        if !keys.contains(&key) {
            return Err(Problem::Retry(vec![format!(
                "{}: {} {}/{} is not one of the objects being edited (the kind, name and namespace cannot change)",
                d.source, key.kind, key.namespace, key.name
            )]));
        }
        pending.push((key, d));
    }
    for (key, d) in pending {
        let expected = d.object.meta().resource_version.clone();
        let edited = d.object.to_value();
        let r = store.update_object(&key, expected.as_deref(), manager, false, |obj| {
            for f in ["labels", "annotations", "finalizers"] {
                match edited["metadata"].get(f) {
                    Some(v) => obj["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            obj["spec"] = edited["spec"].clone();
            Ok(())
        });
        match r {
            Ok(u) => out.push(format!(
                "{}/{} {}",
                key.kind.qualified(),
                key.name,
                if u.changed {
                    "edited"
                } else {
                    "skipped (no change)"
                }
            )),
            Err(StoreError::Invalid { message, .. }) => {
                return Err(Problem::Retry(vec![format!("{}: {message}", d.source)]));
            }
            Err(e @ StoreError::Conflict { .. }) => {
                return Err(Problem::Fatal(format!(
                    "{e}\nPlease edit again: the object changed while you edited it."
                )));
            }
            Err(e) => return Err(Problem::Fatal(e.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches() {
        let mut o = json!({"spec": {"priority": "high", "model": "opus"}});
        apply_patch(
            &mut o,
            "merge",
            &json!({"spec": {"priority": "low", "model": null}}),
        )
        .unwrap();
        assert_eq!(o, json!({"spec": {"priority": "low"}}));
        apply_patch(
            &mut o,
            "json",
            &json!([{"op": "add", "path": "/spec/model", "value": "sonnet"}]),
        )
        .unwrap();
        assert_eq!(o["spec"]["model"], "sonnet");
        assert!(apply_patch(&mut o, "json", &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(apply_patch(&mut o, "merge", &json!([1])).is_err());
        assert!(apply_patch(&mut o, "strategic", &json!({})).is_err());
    }

    #[test]
    fn comments_are_not_content() {
        assert_eq!(
            content("# a\nkind: X\n  # b\nspec: 1\n"),
            "kind: X\nspec: 1"
        );
    }
}
