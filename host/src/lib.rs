//! Tidegate: a WebAssembly-pluggable, programmable mail gateway.
//!
//! A message's journey through the host, module by module:
//! [`inbound`] (listener → session → stage handlers, with [`plugins`] at every stage and
//! [`sender_auth`] verifying and signing) → [`spool`] (durable, group-committed) →
//! [`queue`] → [`outbound`] (delivery). [`config`] is the one configuration tree, [`dns`]
//! the one resolver, [`events`] tells other systems what happened to each message, and
//! [`server`] wires the parts together.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dns;
pub mod events;
pub mod filters;
pub mod inbound;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod plugins;
pub mod queue;
pub mod reconfigure;
pub mod sender_auth;
pub mod server;
pub mod spool;
pub mod tls;
pub mod watch;
