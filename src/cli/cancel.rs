//! `cancel task NAME...` and `restart session NAME...`: the operational
//! verbs. Each goes through the daemon's control plane when a daemon serves
//! the store, else (saying so) straight to the store, where the daemon
//! finds the request when it runs.
//!
//! - cancel: a running task's session is interrupted (Esc) and the task
//!   ends Cancelled; a pending one never runs.
//! - restart: the session's agent is stopped gracefully and relaunched,
//!   resuming its conversation.

use super::client::act_on_each;
use super::{Ctx, parse_kind};
use crate::api::{Kind, ObjectKey};
use crate::requests::{CancelOutcome, request_cancel};
use crate::store::StoreError;
use anyhow::{Result, bail};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// `task` (the only kind that can be cancelled)
    pub kind: String,
    /// Tasks to cancel
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// `session` (the only kind that can be restarted)
    pub kind: String,
    /// Sessions whose agent to restart
    #[arg(required = true)]
    pub names: Vec<String>,
}

fn not_found(kind: Kind, name: &str, ns: &str) -> String {
    format!(
        "{} \"{name}\" not found in namespace {ns}",
        kind.qualified()
    )
}

pub fn cancel(ctx: &Ctx, a: CancelArgs) -> Result<ExitCode> {
    if parse_kind(&a.kind)? != Kind::Task {
        bail!("only tasks can be cancelled");
    }
    let store = ctx.store()?;
    let ns = ctx.namespace.clone();
    act_on_each(
        ctx,
        &Kind::Task.qualified(),
        &a.names,
        "cancel requested",
        |name| format!("/api/v1/namespaces/{ns}/tasks/{name}/cancel"),
        |name| {
            let key = ObjectKey::new(Kind::Task, &ns, name);
            match request_cancel(&store, &key, "cli") {
                Ok(CancelOutcome::Requested | CancelOutcome::AlreadyRequested) => Ok(format!(
                    "{}/{name} cancel requested",
                    Kind::Task.qualified()
                )),
                Ok(CancelOutcome::Finished(phase)) => Err(format!(
                    "task {name} has already ended ({phase}): nothing to cancel"
                )),
                Err(StoreError::NotFound(_)) => Err(not_found(Kind::Task, name, &ns)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
}

pub fn restart(ctx: &Ctx, a: RestartArgs) -> Result<ExitCode> {
    if parse_kind(&a.kind)? != Kind::Session {
        bail!("only sessions can be restarted");
    }
    let store = ctx.store()?;
    let ns = ctx.namespace.clone();
    act_on_each(
        ctx,
        &Kind::Session.qualified(),
        &a.names,
        "restart requested",
        |name| format!("/api/v1/namespaces/{ns}/sessions/{name}/restart"),
        |name| {
            let key = ObjectKey::new(Kind::Session, &ns, name);
            match crate::requests::request_restart(&store, &key, "cli") {
                Ok(()) => Ok(format!(
                    "{}/{name} restart requested",
                    Kind::Session.qualified()
                )),
                Err(StoreError::NotFound(_)) => Err(not_found(Kind::Session, name, &ns)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
}
