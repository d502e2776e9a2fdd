//! The daemon: leader lease, the HTTP endpoint for agents, the signals
//! registry, and the wiring of the controllers. See docs/daemon.md.

pub mod http;
pub mod lease;
pub mod signals;
