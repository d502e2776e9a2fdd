//! `rollout restart sessionpool NAME...`: stamps the template's
//! `claude-failover.io/restartedAt` annotation (like kubectl's
//! `kubectl.kubernetes.io/restartedAt`), so the pool controller relaunches
//! every Session, at turn boundaries, `maxUnavailable` at a time.
//!
//! `rollout status sessionpool NAME`: prints how the rollout of the current
//! template stands, as kubectl does for a Deployment, and waits (woken by
//! the store's watch) until it is done; `--watch=false` prints once.

use super::Ctx;
use super::args::{DryRun, targets};
use super::label::not_found;
use crate::api::{Kind, ObjectKey, RESTARTED_AT, SessionPool};
use crate::store::watch::{WatchConfig, watch};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// The field manager of `rollout restart`.
pub const MANAGER: &str = "claude-failover-rollout";
/// How often `rollout status` reads the pool again without an event.
const RESYNC: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Relaunch every session of a pool (at turn boundaries, maxUnavailable at a time)
    Restart(RestartArgs),
    /// Show the rollout of a pool's template, and wait until it is done
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// `sessionpool NAME...` (or sessionpool/NAME...)
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// `sessionpool NAME` (or sessionpool/NAME)
    #[arg(required = true, value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Wait until the rollout is done (`--watch=false`: print once)
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch: bool,
    /// How long to wait (0: as long as it takes)
    #[arg(long, default_value = "0s", value_parser = super::wait::parse_duration)]
    pub timeout: Duration,
}

pub fn rollout(ctx: &Ctx, a: RolloutArgs) -> Result<ExitCode> {
    match a.command {
        RolloutCommand::Restart(a) => restart(ctx, a),
        RolloutCommand::Status(a) => status(ctx, a),
    }
}

/// The pools `resources` names.
fn pools(resources: &[String]) -> Result<Vec<String>> {
    let targets = targets(resources)?;
    if let Some(t) = targets.iter().find(|t| t.kind != Kind::SessionPool) {
        bail!("only sessionpools have rollouts, not {}", t.kind.plural());
    }
    let names: Vec<String> = targets.into_iter().flat_map(|t| t.names).collect();
    if names.is_empty() {
        bail!("name the pool: rollout ... sessionpool NAME");
    }
    Ok(names)
}

fn restart(ctx: &Ctx, a: RestartArgs) -> Result<ExitCode> {
    let names = pools(&a.resources)?;
    let store = ctx.store()?;
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
    Ok(super::scale::each_pool(
        &ctx.namespace,
        names,
        &format!("restarted{}", a.dry_run.suffix()),
        |key| {
            store
                .update_object(key, None, MANAGER, a.dry_run.active(), |obj| {
                    let meta = &mut obj["spec"]["template"]["metadata"];
                    if meta.is_null() {
                        *meta = json!({});
                    }
                    let ann = meta
                        .as_object_mut()
                        .ok_or("spec.template.metadata is not a map")?
                        .entry("annotations")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .ok_or("spec.template.metadata.annotations is not a map")?;
                    ann.insert(RESTARTED_AT.into(), json!(stamp));
                    Ok(())
                })
                .map(drop)
        },
    ))
}

/// Where a pool's rollout stands, in kubectl's words for a Deployment;
/// true once it is done.
pub fn progress(p: &SessionPool) -> (String, bool) {
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let st = p.status.clone().unwrap_or_default();
    let kind = Kind::SessionPool.singular();
    if st.observed_generation.unwrap_or(0) < p.metadata.generation.unwrap_or(0) {
        return (
            format!("Waiting for {kind} spec update to be observed..."),
            false,
        );
    }
    let want = st.desired_replicas.unwrap_or(p.spec.replicas);
    let waiting = |what: String| {
        (
            format!("Waiting for {kind} \"{name}\" rollout to finish: {what}..."),
            false,
        )
    };
    if st.updated_replicas < want {
        return waiting(format!(
            "{} out of {want} new replicas have been updated",
            st.updated_replicas
        ));
    }
    if st.replicas > st.updated_replicas {
        return waiting(format!(
            "{} old replicas are pending termination",
            st.replicas - st.updated_replicas
        ));
    }
    if st.updated_ready < st.updated_replicas {
        return waiting(format!(
            "{} of {} updated replicas are available",
            st.updated_ready, st.updated_replicas
        ));
    }
    (format!("{kind} \"{name}\" successfully rolled out"), true)
}

fn status(ctx: &Ctx, a: StatusArgs) -> Result<ExitCode> {
    let names = pools(&a.resources)?;
    let [name] = names.as_slice() else {
        bail!("rollout status takes one pool");
    };
    let store = ctx.store()?;
    let key = ObjectKey::new(Kind::SessionPool, &ctx.namespace, name);
    let api = store.api::<SessionPool>(Some(&ctx.namespace));
    let read = || -> Result<SessionPool> {
        api.get(name)?
            .ok_or_else(|| anyhow::anyhow!("{}", not_found(&key)))
    };
    if !a.watch {
        println!("{}", progress(&read()?).0);
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cfg = WatchConfig {
            namespace: Some(ctx.namespace.clone()),
            resync: RESYNC,
            lean: false,
        };
        let mut wakeups = watch::<SessionPool>(store.clone(), cfg).boxed();
        let deadline = (!a.timeout.is_zero()).then(|| tokio::time::Instant::now() + a.timeout);
        let mut last = String::new();
        loop {
            let (message, done) = progress(&read()?);
            if message != last {
                println!("{message}");
                last = message;
            }
            if done {
                return Ok(ExitCode::SUCCESS);
            }
            let next = match deadline {
                Some(d) => tokio::time::timeout_at(d, wakeups.next()).await,
                None => Ok(wakeups.next().await),
            };
            if !matches!(next, Ok(Some(_))) {
                eprintln!("error: timed out waiting for the condition");
                return Ok(ExitCode::FAILURE);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_like_kubectl() {
        let pool = |generation: i64, status: serde_json::Value| -> SessionPool {
            serde_json::from_value(json!({
                "apiVersion": "claude-failover.io/v1alpha1", "kind": "SessionPool",
                "metadata": {"name": "web", "generation": generation},
                "spec": {"replicas": 3, "template": {"spec": {"workdir": "/w"}}},
                "status": status
            }))
            .unwrap()
        };
        let st = |updated: u32, replicas: u32, ready: u32| {
            json!({"observedGeneration": 2, "replicas": replicas,
                   "updatedReplicas": updated, "updatedReady": ready})
        };
        let cases = [
            (
                pool(3, st(3, 3, 3)),
                "Waiting for sessionpool spec update to be observed...",
                false,
            ),
            (
                pool(2, st(1, 3, 1)),
                "Waiting for sessionpool \"web\" rollout to finish: 1 out of 3 new replicas have been updated...",
                false,
            ),
            (
                pool(2, st(3, 4, 3)),
                "Waiting for sessionpool \"web\" rollout to finish: 1 old replicas are pending termination...",
                false,
            ),
            (
                pool(2, st(3, 3, 1)),
                "Waiting for sessionpool \"web\" rollout to finish: 1 of 3 updated replicas are available...",
                false,
            ),
            (
                pool(2, st(3, 3, 3)),
                "sessionpool \"web\" successfully rolled out",
                true,
            ),
        ];
        for (p, message, done) in cases {
            assert_eq!(progress(&p), (message.to_string(), done));
        }
    }
}
