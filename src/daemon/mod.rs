//! The daemon: leader lease, the HTTP control plane and the endpoint for
//! agents, the feed of changes, the signals registry, and the wiring of the
//! controllers. See docs/daemon.md and docs/control-plane.md.

pub mod access;
pub mod api;
pub mod bus;
pub mod guard;
pub mod http;
pub mod lease;
pub mod signals;
