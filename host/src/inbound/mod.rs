//! The inbound half: accepting connections and running SMTP sessions that end in the spool.
//!
//! The data flow reads top to bottom: [`listener`] accepts and admits a connection
//! ([`admission`]), [`session`] runs the protocol over a [`connection`], and each stage has
//! its own file ([`ehlo`], [`mail`], [`rcpt`], [`data`]) that checks the built-in rules
//! ([`relay`] control, limits, syntax from [`address`] and [`command`]) and replies with a
//! [`reply::Reply`]. Message data is decoded by [`body`] and handed to the spool.

pub mod address;
pub mod admission;
mod authenticate;
pub mod body;
pub mod command;
pub mod connection;
mod data;
mod ehlo;
pub mod hops;
pub mod listener;
mod login;
mod mail;
mod policy;
pub mod proxy;
mod rcpt;
pub mod received;
pub mod relay;
pub mod reply;
pub mod session;
pub mod stream;

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

/// The server's parts that sessions use.
#[derive(Debug)]
pub struct InboundParts {
    /// Where accepted messages go.
    pub spool: Spool,
    /// The plugin runtime.
    pub plugins: Arc<PluginHost>,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// The delivery queue.
    pub queue: Queue,
    /// Certificates, when TLS is configured.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The AUTH users file, when configured (swapped when the file changes).
    pub users: Option<Arc<arc_swap::ArcSwap<crate::auth::UsersFile>>>,
    /// Sender authentication: verification and DKIM signing.
    pub sender_auth: Arc<crate::sender_auth::SenderAuth>,
    /// The gateway's resolver (clients' reverse DNS names).
    pub dns: Arc<crate::dns::Dns>,
    /// Delivery events.
    pub events: crate::events::Events,
}

/// What a reload may change for the sessions to come: each session takes the current one
/// when it starts and keeps it to its end, so a session never sees rules change under it.
#[derive(Debug)]
pub struct Live {
    /// The configuration.
    pub config: Arc<Config>,
    /// Relay rules built from it.
    pub relay: RelayPolicy,
    /// The EHLO reply built from it.
    pub ehlo_reply: Reply,
    /// DKIM signing, ARC sealing and verification built from it.
    pub sender_auth: Arc<crate::sender_auth::SenderAuth>,
}

impl Live {
    /// The live part of `config`, with `sender_auth` already built from it.
    pub fn new(config: Arc<Config>, sender_auth: Arc<crate::sender_auth::SenderAuth>) -> Live {
        Live {
            relay: RelayPolicy::new(&config.relay),
            ehlo_reply: ehlo::ehlo_reply(&config),
            config,
            sender_auth,
        }
    }
}

/// What every session needs from the server, shared read-only.
#[derive(Debug)]
pub struct InboundContext {
    /// The configuration the server started with: what only a restart changes (the
    /// listeners, limits on connections). Sessions read the rest from [`Live`].
    pub config: Arc<Config>,
    /// Where accepted messages go.
    pub spool: Spool,
    /// Session limits.
    pub admission: Arc<Admission>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// The plugin runtime.
    pub plugins: Arc<PluginHost>,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// The delivery queue, told about each committed message.
    pub queue: Queue,
    /// Certificates for STARTTLS and `smtps`, when configured.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The users file for AUTH, when configured (swapped when the file changes).
    pub users: Option<Arc<arc_swap::ArcSwap<crate::auth::UsersFile>>>,
    /// Failed AUTH attempts per client address.
    pub auth_failures: crate::auth::FailureLimiter,
    /// The disk reserve of the spool's file system, checked at MAIL FROM.
    pub free_space: crate::spool::space::FreeSpace,
    /// The gateway's resolver.
    pub dns: Arc<crate::dns::Dns>,
    /// Delivery events (received, refused).
    pub events: crate::events::Events,
    /// What a reload changes; see [`Live`].
    pub live: arc_swap::ArcSwap<Live>,
}

impl InboundContext {
    /// Applies a reloaded configuration to the sessions that start from now on.
    pub fn reconfigure(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// Builds the context from the configuration and the server's parts.
    pub fn new(config: Arc<Config>, parts: InboundParts, shutdown: CancellationToken) -> Self {
        let InboundParts {
            spool,
            plugins,
            metrics,
            queue,
            tls,
            users,
            sender_auth,
            dns,
            events,
        } = parts;
        let auth_failures = match &config.auth {
            Some(auth) => {
                crate::auth::FailureLimiter::new(auth.max_failures, auth.failure_window.0)
            }
            None => crate::auth::FailureLimiter::new(5, std::time::Duration::from_secs(300)),
        };
        let free_space = crate::spool::space::FreeSpace::new(
            config.spool.path.clone(),
            config.spool.min_free_space.0,
        );
        let live = arc_swap::ArcSwap::from_pointee(Live::new(
            Arc::clone(&config),
            Arc::clone(&sender_auth),
        ));
        InboundContext {
            live,
            free_space,
            admission: Admission::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            config,
            spool,
            shutdown,
            plugins,
            metrics,
            queue,
            tls,
            users,
            auth_failures,
            dns,
            events,
        }
    }
}
