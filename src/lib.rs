//! claude-failover: keeps a pool of Claude Code sessions working across
//! several Anthropic accounts. See the README's module map.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod fsutil;
pub mod inbox;
pub mod janitor;
pub mod manifest;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod quota;
pub mod requests;
pub mod secret;
pub mod selector;
pub mod sim;
pub mod store;
pub mod sync;
pub mod tmux;
pub mod workspace;
