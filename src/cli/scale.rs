//! `scale sessionpool NAME --replicas N`: sets a pool's `spec.replicas`
//! (an update by its own field manager, so a later `apply` that does not
//! declare replicas keeps it). Scaling down waits for busy sessions to end
//! their turn; `--force` lets it stop them (the pool's
//! `claude-failover.io/force-scale-down` annotation, cleared by a scale
//! without it).

use super::Ctx;
use super::args::{DryRun, targets};
use super::label::not_found;
use crate::api::{Kind, ObjectKey};
use crate::store::StoreError;
use anyhow::{Result, bail};
use clap::Args;
use std::process::ExitCode;

/// The field manager of `scale`.
pub const MANAGER: &str = "claude-failover-scale";

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// `sessionpool NAME...` (or sessionpool/NAME...)
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// The new number of sessions
    #[arg(long)]
    pub replicas: u32,
    /// Only if the pool has this many replicas now
    #[arg(long)]
    pub current_replicas: Option<u32>,
    /// Stop busy sessions without waiting for their turn to end
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
}

pub fn scale(ctx: &Ctx, a: ScaleArgs) -> Result<ExitCode> {
    let targets = targets(&a.resources)?;
    if let Some(t) = targets.iter().find(|t| t.kind != Kind::SessionPool) {
        bail!("only sessionpools can be scaled, not {}", t.kind.plural());
    }
    let names: Vec<&String> = targets.iter().flat_map(|t| &t.names).collect();
    if names.is_empty() {
        bail!("name the pool to scale: scale sessionpool NAME --replicas N");
    }
    if a.replicas > crate::manifest::validate::MAX_POOL_REPLICAS {
        bail!(
            "--replicas: at most {}",
            crate::manifest::validate::MAX_POOL_REPLICAS
        );
    }
    let store = ctx.store()?;
    let req = crate::requests::Scale {
        replicas: a.replicas,
        force: a.force,
        expected_rv: None,
        current: a.current_replicas,
        dry_run: a.dry_run.active(),
    };
    Ok(each_pool(
        &ctx.namespace,
        names,
        &format!("scaled{}", a.dry_run.suffix()),
        |key| crate::requests::scale_pool(&store, key, &req, MANAGER).map(drop),
    ))
}

/// Acts on each named SessionPool in turn, printing `KIND/NAME DONE` or
/// the error (a missing pool said as kubectl does), and fails if any did.
pub(super) fn each_pool<N: AsRef<str>>(
    namespace: &str,
    names: impl IntoIterator<Item = N>,
    done: &str,
    mut act: impl FnMut(&ObjectKey) -> Result<(), StoreError>,
) -> ExitCode {
    let mut failed = false;
    for name in names {
        let key = ObjectKey::new(Kind::SessionPool, namespace, name.as_ref());
        match act(&key) {
            Ok(()) => println!("{}/{} {done}", Kind::SessionPool.qualified(), key.name),
            Err(StoreError::NotFound(_)) => {
                eprintln!("error: {}", not_found(&key));
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
