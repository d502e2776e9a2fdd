//! `cancel task NAME...`: stop tasks. A running task's session is
//! interrupted (Esc) and the task ends Cancelled; a pending one never runs.

use super::{Ctx, parse_kind};
use crate::api::{Kind, ObjectKey};
use crate::controller::task::CANCEL;
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

pub fn cancel(ctx: &Ctx, a: CancelArgs) -> Result<ExitCode> {
    if parse_kind(&a.kind)? != Kind::Task {
        bail!("only tasks can be cancelled");
    }
    let store = ctx.store()?;
    let mut code = ExitCode::SUCCESS;
    for name in &a.names {
        let key = ObjectKey::new(Kind::Task, &ctx.namespace, name);
        let when = serde_json::to_value(crate::api::now())?;
        match store.update_metadata(&key, None, |m| {
            let ann = m
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(a) = ann.as_object_mut() {
                a.entry(CANCEL).or_insert(when);
            }
        }) {
            Ok(_) => println!("task.claude-failover.io/{name} cancel requested"),
            Err(StoreError::NotFound(_)) => {
                eprintln!(
                    "error: task.claude-failover.io \"{name}\" not found in namespace {}",
                    ctx.namespace
                );
                code = ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("error: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}
