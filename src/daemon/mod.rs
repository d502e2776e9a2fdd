//! The daemon: the composition root ([`run`]: its node, the caches, the
//! controllers, shutdown; [`lead`]: the leader's work while it leads), the HTTP control plane and the endpoint for
//! agents, the feed of changes and the projections of the caches. See
//! docs/daemon.md and docs/control-plane.md.

pub mod access;
pub mod api;
pub mod bus;
pub mod guard;
pub mod http;
pub mod lead;
pub mod projections;
pub mod readiness;
pub mod run;
