//! Everything the project knows about Claude Code: its screen, its config
//! dir, how to launch it, and how to read its state.

pub mod exit;
pub mod hooks;
pub mod launch;
pub mod login;
pub mod screen;
pub mod seed;
pub mod state;
pub mod version;
