//! Commands of the `tidegate` binary that do more than start the server: each is a small
//! module, callable from `main` (and from tests), that prints what an operator needs.

pub mod admin;
pub mod dkim;
pub mod kv;
pub mod plugin;
pub mod replay;
