//! The inbound half: accepting connections and running SMTP sessions that end in the spool.
//!
//! The data flow reads top to bottom: [`listener`] accepts and admits a connection
//! ([`admission`]), [`session`] runs the protocol over a [`connection`], and each stage has
//! its own file ([`ehlo`], [`mail`], [`rcpt`], [`data`]) that checks the built-in rules
//! ([`relay`] control, limits, syntax from [`address`] and [`command`]) and replies with a
//! [`reply::Reply`]. Message data is decoded by [`body`] and handed to the spool.

pub mod address;
pub mod admission;
pub mod body;
pub mod command;
pub mod connection;
mod data;
mod ehlo;
pub mod listener;
mod mail;
mod policy;
mod rcpt;
pub mod received;
pub mod relay;
pub mod reply;
pub mod session;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::plugins::PluginHost;
use crate::queue::Queue;
use crate::spool::Spool;
use admission::Admission;
use relay::RelayPolicy;
use reply::Reply;

/// What every session needs from the server, shared read-only.
#[derive(Debug)]
pub struct InboundContext {
    /// The configuration the server runs with.
    pub config: Arc<Config>,
    /// Where accepted messages go.
    pub spool: Spool,
    /// Relay control.
    pub relay: RelayPolicy,
    /// Session limits.
    pub admission: Arc<Admission>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// The EHLO reply, built once.
    pub ehlo_reply: Reply,
    /// The plugin runtime.
    pub plugins: Arc<PluginHost>,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// The delivery queue, told about each committed message.
    pub queue: Queue,
}

impl InboundContext {
    /// Builds the context for a configuration and an open spool.
    pub fn new(
        config: Arc<Config>,
        spool: Spool,
        plugins: Arc<PluginHost>,
        metrics: Arc<Metrics>,
        queue: Queue,
        shutdown: CancellationToken,
    ) -> Self {
        let ehlo_reply = ehlo::ehlo_reply(&config);
        InboundContext {
            relay: RelayPolicy::new(&config.relay),
            admission: Admission::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            config,
            spool,
            shutdown,
            ehlo_reply,
            plugins,
            metrics,
            queue,
        }
    }
}
