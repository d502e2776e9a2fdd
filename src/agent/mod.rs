//! Everything the project knows about Claude Code: its screen, its config
//! dir, how to launch it, and how to read its state.

pub mod driver;
pub mod env;
pub mod exit;
pub mod exits;
pub mod hooks;
pub mod launch;
pub mod login;
pub mod panes;
pub mod screen;
pub mod seed;
pub mod signals;
pub mod state;
pub mod terminal;
pub mod transcript;
pub mod version;
