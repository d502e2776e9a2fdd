//! The command line: kubectl's conventions over the store.
//!
//! Each verb lives in its own file; this module holds the argument
//! definitions, resolves the global settings (store, namespace, config) and
//! dispatches. Errors go to stderr as `error: ...` with a non-zero exit.

mod apply;
mod args;
mod cancel;
mod client;
mod complete;
mod completion;
mod create;
mod demo;
mod describe;
mod doctor;
mod edit;
mod events;
mod explain;
mod failover;
mod get;
mod init;
mod kustomize;
mod label;
mod login;
mod logs;
mod mcp;
mod print;
mod rollout;
mod run;
mod scale;
mod statusline;
mod wait;

use crate::api::{DEFAULT_NAMESPACE, Kind};
use crate::config::{self, Config, LogFormat};
use crate::store::Store;
use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use args::parse_kind;

const ABOUT: &str =
    "Keeps a pool of Claude Code sessions working across several Anthropic accounts.

Accounts, Sessions and Tasks are declared as Kubernetes-style YAML and kept in a
local store; `run` is the daemon that reconciles them.";

const AFTER: &str = "Examples:
  claude-failover init                          # config, store and example manifests
  claude-failover apply -f manifests/examples   # declare a pool
  claude-failover get sessions -o wide          # see it
  claude-failover run --manifests ~/pool        # keep a directory synced (GitOps)";

#[derive(Parser, Debug)]
#[command(name = "claude-failover", version, about = ABOUT, long_about = ABOUT, after_help = AFTER)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Store directory, or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] [env: CLAUDE_FAILOVER_STORE; config: store; default: $XDG_STATE_HOME/claude-failover/store]
    #[arg(long, global = true, value_name = "DIR|URL")]
    pub store: Option<PathBuf>,
    /// Namespace [config: namespace; default: default]
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Config file [env: CLAUDE_FAILOVER_CONFIG; default: $XDG_CONFIG_HOME/claude-failover/config.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or update objects from manifests (FILE, DIR or - for stdin)
    Apply(apply::ApplyArgs),
    /// List objects: get KIND[,KIND] [NAME...] or KIND/NAME
    Get(get::GetArgs),
    /// Show objects in detail: spec, status, conditions and events
    Describe(describe::DescribeArgs),
    /// Create objects that do not exist yet (-f FILE, or `create task NAME --prompt ...`)
    Create(create::CreateArgs),
    /// Edit objects in $KUBE_EDITOR or $EDITOR
    Edit(edit::EditArgs),
    /// Change objects with a JSON merge patch or a JSON patch
    Patch(edit::PatchArgs),
    /// Set (KEY=VALUE) or remove (KEY-) labels
    Label(label::MetaArgs),
    /// Set (KEY=VALUE) or remove (KEY-) annotations
    Annotate(label::MetaArgs),
    /// Delete objects by name or by the manifests that declare them
    Delete(apply::DeleteArgs),
    /// Show what apply would change (exit 0: none, 1: differences, >1: error)
    Diff(apply::DiffArgs),
    /// Wait for a condition, a field's value, the creation or the deletion of objects
    Wait(wait::WaitArgs),
    /// List recent events (of every object, or one with --for)
    Events(events::EventsArgs),
    /// The kinds this tool serves
    ApiResources(explain::ApiResourcesArgs),
    /// Describe a kind's fields (explain task, explain task.spec.priority)
    Explain(explain::ExplainArgs),
    /// Print a session's screen, or its conversation with --transcript
    Logs(logs::LogsArgs),
    /// Attach your terminal to a session's tmux (the pool's own server)
    Attach(logs::AttachArgs),
    /// Stop sessions' agents, drain accounts or pause a manifest sync until resumed (spec.suspend)
    Suspend(label::SuspendArgs),
    /// Undo suspend: agents start again, accounts take sessions, the sync runs
    Resume(label::SuspendArgs),
    /// Cancel tasks: a running one is interrupted, a pending one never runs
    Cancel(cancel::CancelArgs),
    /// Set a session pool's number of sessions (busy ones end their turn first unless --force)
    Scale(scale::ScaleArgs),
    /// Roll a session pool's template through its sessions: restart, status
    #[command(disable_help_subcommand = true)]
    Rollout(rollout::RolloutArgs),
    /// Watch a pool fail over: simulated agents on temporary directories, a minute
    Demo(demo::DemoArgs),
    /// Move the sessions off an account now (to --to, or the best one)
    Failover(failover::FailoverArgs),
    /// List the recorded account swaps (epoch, from, to, reason, result)
    Swaps,
    /// Take an account back as a failover target now, though a failed swap set it aside
    Reinstate(failover::ReinstateArgs),
    /// Restart sessions' agents: stopped gracefully, relaunched resuming their conversation
    Restart(cancel::RestartArgs),
    /// Print the control plane's bearer token (created when missing)
    Token,
    /// Serve the pool as MCP tools and resources over stdio (for Claude Code and other MCP clients)
    Mcp(mcp::McpArgs),
    /// Run the daemon: sync the manifests directory into the store
    Run(run::RunArgs),
    /// Scaffold a config file, the store and example manifests
    Init(init::InitArgs),
    /// Log an Account in: Claude Code's own login under its config dir, in the pool's tmux
    Login(login::LoginArgs),
    /// Check this machine: Claude Code and its version, tmux, each account's login, the
    /// transcript folder, the daemon's address (exit 1 with one line per problem and its fix)
    Doctor(doctor::DoctorArgs),
    /// Print the CustomResourceDefinitions (apiextensions.k8s.io/v1) as YAML
    Crds,
    /// Print the version
    Version,
    /// Print a shell completion script (bash, zsh or fish): subcommands,
    /// flags, kinds and object names
    Completion(completion::CompletionArgs),
    /// The completion scripts' helper: candidates for the word being typed
    #[command(name = "__complete", hide = true)]
    Complete(complete::CompleteArgs),
    /// Claude Code's statusLine command (installed by the daemon): forwards
    /// its input to the daemon, prints the daemon's line
    #[command(hide = true)]
    Statusline {
        #[arg(long)]
        url: String,
    },
    /// A simulated Claude Code for demos and large pools: same screen
    /// states, hooks, statusLine feed, transcripts and usage limits
    SimAgent(crate::sim::SimArgs),
    /// A command hook for Claude Code (installed by the daemon): posts its
    /// input to the daemon
    #[command(hide = true)]
    Hook {
        #[arg(long)]
        url: String,
    },
}

/// Settings resolved from flags, environment and the config file.
pub struct Ctx {
    pub config: Config,
    pub config_path: PathBuf,
    pub store_dir: PathBuf,
    pub namespace: String,
    /// Set by `-n`: then a manifest naming another namespace is an error.
    pub namespace_flag: bool,
}

impl Ctx {
    pub fn resolve(g: &Global) -> Result<Ctx> {
        let (config_path, required) = match (&g.config, std::env::var_os("CLAUDE_FAILOVER_CONFIG"))
        {
            (Some(p), _) => (p.clone(), true),
            (None, Some(p)) => (PathBuf::from(p), true),
            (None, None) => (config::default_config_path(), false),
        };
        let config = Config::load(&config_path, required)?;
        let store_dir = g
            .store
            .clone()
            .or_else(|| std::env::var_os("CLAUDE_FAILOVER_STORE").map(PathBuf::from))
            .or_else(|| config.store.as_deref().map(crate::fsutil::expand_home))
            .unwrap_or_else(|| config::state_dir().join("store"));
        let namespace = g
            .namespace
            .clone()
            .or_else(|| config.namespace.clone())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        crate::manifest::validate::dns1123_label(&namespace)
            .map_err(|e| anyhow::anyhow!("namespace: {e}"))?;
        Ok(Ctx {
            config,
            config_path,
            store_dir,
            namespace,
            namespace_flag: g.namespace.is_some(),
        })
    }

    /// The namespace a command works in for `kind`: the kind's own (Nodes),
    /// else the one the flags or the config name.
    pub fn namespace_of(&self, kind: crate::api::Kind) -> &str {
        kind.home_namespace().unwrap_or(&self.namespace)
    }

    /// Controller-owned state (config `stateDir`, default the XDG state dir).
    pub fn state_dir(&self) -> PathBuf {
        self.config
            .state_dir
            .as_deref()
            .map(crate::fsutil::expand_home)
            .unwrap_or_else(config::state_dir)
    }

    pub fn store(&self) -> Result<Store> {
        let at = self.store_dir.to_string_lossy();
        Store::open_location(&at, &self.config.etcd)
            .with_context(|| format!("cannot open the store at {at}"))
    }

    /// The pool's tmux server socket (config `tmuxSocket`, default
    /// `STATE/tmux.sock`), as the daemon resolves it.
    pub fn tmux_socket(&self) -> PathBuf {
        self.config
            .tmux_socket
            .as_deref()
            .map(crate::fsutil::expand_home)
            .unwrap_or_else(|| self.state_dir().join("tmux.sock"))
    }

    /// The shared transcript folder (config `transcriptsDir`, default
    /// `STATE/projects`), as the daemon resolves it.
    pub fn transcripts_dir(&self) -> PathBuf {
        self.config
            .transcripts_dir
            .as_deref()
            .map(crate::fsutil::expand_home)
            .unwrap_or_else(|| self.state_dir().join("projects"))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!(
                "claude-failover {} (revision {}, rustc {})",
                crate::metrics::VERSION,
                crate::metrics::REVISION,
                crate::metrics::RUSTC
            );
            println!("apiVersion {}", crate::api::API_VERSION);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Crds => {
            print!("{}", crds_yaml());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completion(a) => return completion::script(a),
        Command::Complete(a) => return complete::complete(a),
        Command::ApiResources(a) => return explain::api_resources(a),
        Command::Explain(a) => return explain::explain(a),
        Command::Statusline { url } => return Ok(statusline::statusline(&url)),
        Command::Hook { url } => return Ok(statusline::hook(&url)),
        Command::SimAgent(a) => return Ok(crate::sim::run(a)),
        Command::Demo(a) => return demo::demo(a),
        _ => {}
    }
    let ctx = Ctx::resolve(&cli.global)?;
    match cli.command {
        Command::Apply(a) => apply::apply(&ctx, a),
        Command::Get(a) => get::get(&ctx, a),
        Command::Describe(a) => describe::describe(&ctx, a),
        Command::Create(a) => create::create(&ctx, a),
        Command::Edit(a) => edit::edit(&ctx, a),
        Command::Patch(a) => edit::patch(&ctx, a),
        Command::Label(a) => label::label(&ctx, a, label::Which::Labels),
        Command::Annotate(a) => label::label(&ctx, a, label::Which::Annotations),
        Command::Delete(a) => apply::delete(&ctx, a),
        Command::Diff(a) => apply::diff(&ctx, a),
        Command::Wait(a) => wait::wait(&ctx, a),
        Command::Events(a) => events::events(&ctx, a),
        Command::Logs(a) => logs::logs(&ctx, a),
        Command::Attach(a) => logs::attach(&ctx, a),
        Command::Suspend(a) => label::suspend(&ctx, a, true),
        Command::Resume(a) => label::suspend(&ctx, a, false),
        Command::Cancel(a) => cancel::cancel(&ctx, a),
        Command::Scale(a) => scale::scale(&ctx, a),
        Command::Rollout(a) => rollout::rollout(&ctx, a),
        Command::Failover(a) => failover::failover(&ctx, a),
        Command::Swaps => failover::swaps(&ctx),
        Command::Reinstate(a) => failover::reinstate(&ctx, a),
        Command::Restart(a) => cancel::restart(&ctx, a),
        Command::Token => {
            let path = crate::daemon::access::token_path(&ctx.config, &ctx.state_dir());
            println!("{}", crate::daemon::access::load_or_create_token(&path)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => run::run(&ctx, a),
        Command::Mcp(a) => mcp::mcp(&ctx, a),
        Command::Init(a) => init::init(&ctx, a),
        Command::Login(a) => login::login(&ctx, a),
        Command::Doctor(a) => doctor::doctor(&ctx, a),
        Command::Version
        | Command::Crds
        | Command::Completion(_)
        | Command::Complete(_)
        | Command::ApiResources(_)
        | Command::Explain(_)
        | Command::Statusline { .. }
        | Command::Hook { .. }
        | Command::SimAgent(_)
        | Command::Demo(_) => {
            unreachable!("handled above")
        }
    }
}

/// All three CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for k in Kind::ALL {
        let v = serde_json::to_value(k.crd()).expect("CRDs serialize");
        out.push_str("---\n");
        out.push_str(&print::to_yaml(&v));
    }
    out
}

/// The daemon's log filter: `RUST_LOG` when set, else `level`, with the
/// HTTP client capped at `info` whatever they say (at `trace` it logs request
/// paths, and a Telegram bot token is part of one; see
/// [`crate::notify::quiet_http_client`]).
pub fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    crate::notify::quiet_http_client(filter)
}

/// Sets up `tracing` for the daemon. Text logs carry colour only when
/// stderr is a terminal (and `NO_COLOR` is unset), so a pipe, a file or
/// journald gets plain lines; JSON logs put the message and the event's
/// fields at the top level of each line (`{"timestamp","level","message",
/// "target",...}`), as log shippers expect.
pub fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(level))
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
