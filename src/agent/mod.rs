//! Everything the project knows about Claude Code: its screen, its config
//! dir, how to launch it, and how to read its state.

pub mod env;
pub mod launch;
pub mod screen;
pub mod seed;
pub mod state;
