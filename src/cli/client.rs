//! The operational verbs' client of the daemon's control plane.
//!
//! The daemon publishes where it serves in `STATE/api.json` (see
//! [`crate::daemon::access`]); the token comes from the token file. When no
//! daemon serving this store is reachable, the verbs say so and write
//! their request to the store instead, where the daemon finds it when it
//! runs (both paths end in the same annotation, so the outcome is the same).

use super::Ctx;
use crate::daemon::access;
use anyhow::{Context as _, Result};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// A connection to the running daemon's control plane.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// The daemon's answer.
pub struct Reply {
    pub code: u16,
    pub body: Value,
}

impl Reply {
    /// The `message` of a Status answer (or the body as text).
    pub fn message(&self) -> String {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| self.body.to_string())
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Finds the daemon serving this store: `Ok(Err(why))` when there is none
/// to talk to.
pub fn connect(ctx: &Ctx) -> Result<Result<Client, String>> {
    let state_dir = ctx.state_dir();
    let record = access::endpoint_path(&state_dir);
    let Some(ep) = access::read_endpoint(&state_dir) else {
        return Ok(Err(format!(
            "no daemon serves this store ({} does not exist)",
            record.display()
        )));
    };
    if !pid_alive(ep.pid) {
        return Ok(Err(format!(
            "the daemon that served {} (pid {}) is not running",
            ep.url, ep.pid
        )));
    }
    let ours = std::fs::canonicalize(&ctx.store_dir).unwrap_or_else(|_| ctx.store_dir.clone());
    if ep.store != ours {
        return Ok(Err(format!(
            "the daemon at {} serves another store ({})",
            ep.url,
            ep.store.display()
        )));
    }
    let token_path = access::token_path(&ctx.config, &state_dir);
    let token = access::read_token(&token_path)?.with_context(|| {
        format!(
            "the daemon runs but its token file {} is missing",
            token_path.display()
        )
    })?;
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    Ok(Ok(Client {
        base: ep.url,
        token,
        agent,
    }))
}

impl Client {
    /// POSTs `body` (JSON) to `path`. `Err(why)` when the daemon cannot be
    /// reached; any HTTP answer is a [`Reply`].
    pub fn post(&self, path: &str, body: &Value) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .agent
            .post(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body.to_string());
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => return Err(format!("cannot reach the daemon at {}: {e}", self.base)),
        };
        let code = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply { code, body })
    }
}

/// Runs one action per name: through the daemon's API (`path_of(name)`)
/// when it is reachable, else through `offline(name)` on the store, after
/// saying so once. `offline` returns what to print, or an error line.
pub fn act_on_each(
    ctx: &Ctx,
    qualified: &str,
    names: &[String],
    done: &str,
    path_of: impl Fn(&str) -> String,
    offline: impl Fn(&str) -> Result<String, String>,
) -> Result<ExitCode> {
    let mut client = match connect(ctx)? {
        Ok(c) => Some(c),
        Err(why) => {
            warn_offline(&why);
            None
        }
    };
    let mut code = ExitCode::SUCCESS;
    for name in names {
        if let Some(c) = &client {
            match c.post(&path_of(name), &serde_json::json!({})) {
                Ok(r) if (200..300).contains(&r.code) => {
                    println!("{qualified}/{name} {done}");
                    continue;
                }
                Ok(r) => {
                    eprintln!("error: {}", r.message());
                    code = ExitCode::from(1);
                    continue;
                }
                Err(why) => {
                    warn_offline(&why);
                    client = None;
                }
            }
        }
        match offline(name) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}

fn warn_offline(why: &str) {
    eprintln!(
        "warning: {why}; the request is written to the store and takes effect when the daemon runs"
    );
}
