//! Tidegate: a WebAssembly-pluggable, programmable mail gateway.
//!
//! A message's journey through the host, module by module:
//! [`inbound`] (listener → session → stage handlers) → [`spool`] (durable, group-committed)
//! → queue → delivery (later issues). [`config`] is the one configuration tree and
//! [`server`] wires the parts together.

pub mod admin;
pub mod auth;
pub mod config;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod plugins;
pub mod queue;
pub mod server;
pub mod spool;
pub mod tls;
pub mod watch;
