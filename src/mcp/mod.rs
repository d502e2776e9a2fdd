//! The MCP server: the pool as tools and resources for any MCP client, and
//! for the pool's own agents, which can hand work to the rest of the pool.
//!
//! Built on rmcp (the official Rust SDK of the Model Context Protocol), on
//! two transports: stdio (`claude-failover mcp`, [`crate::cli`]) and
//! Streamable HTTP on the daemon's listener ([`http`]). Both serve the same
//! [`server::McpServer`], which reaches the pool through the daemon's API
//! ([`pool`]): every write is checked and recorded exactly as the API does
//! for any client, plus an event naming who asked over MCP.
//!
//! | Module | What it owns |
//! |---|---|
//! | [`tools`] | the tool catalog: schemas, descriptions, handlers |
//! | [`resources`] | `claude-failover://pool/NS` and `claude-failover://accounts/NS/NAME`, change notifications |
//! | [`scope`] | who calls (a client, an agent) and what each may do |
//! | [`delegation`] | a task's parent and depth, the depth limit, the per-session rate, the rule that a delegated task never runs on its delegating session |
//! | [`views`] | what results show of the objects (secrets hidden), the failover checks |
//! | [`pool`] | the daemon's API (network or in-process), or the store when no daemon runs |
//! | [`http`] | the endpoint on the daemon's listener and its bearer tokens |
//! | [`agent`] | the server in an agent's launch (`--mcp-config`) |
//! | [`config`] | the `mcp` section of `config.yaml` |

pub mod agent;
pub mod config;
pub mod delegation;
pub mod http;
pub mod pool;
pub mod resources;
pub mod scope;
pub mod server;
mod sse;
pub mod tools;
pub mod views;

pub use config::McpConfig;

/// The server's name (in `serverInfo`, and the agents' `--mcp-config`;
/// Claude Code shows its tools as `mcp__claude-failover__TOOL`).
pub const SERVER_NAME: &str = "claude-failover";
