//! Routing: where each recipient of a message goes. A plugin's on-route hook has the first
//! word, then the static `[[route]]`s, then MX. Recipients that share a [`Destination`]
//! are delivered together, in one transaction where the transport allows.

use std::path::PathBuf;

use crate::config::TlsPolicy;
use crate::inbound::address::{Domain, Mailbox};
use crate::outbound::lookup;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::SessionPlugins;

use super::Shared;

/// Where a group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Destination {
    /// A configured smarthost route.
    Smarthost {
        route: String,
        host: String,
        port: u16,
        tls: TlsPolicy,
    },
    /// MX delivery to a domain.
    Mx { domain: String },
    /// A maildir root.
    Maildir { root: PathBuf },
    /// Dropped by policy.
    Discard,
    /// Cannot be delivered as configured (e.g. a plugin named a route that does not
    /// exist); retried, so fixing the configuration lets the mail through.
    Misrouted(String),
}

impl Destination {
    /// The key of the per-destination concurrency limit.
    /// The destination's class, for metrics.
    pub(super) fn class(&self) -> &'static str {
        match self {
            Destination::Smarthost { .. } => "smarthost",
            Destination::Mx { .. } => "mx",
            Destination::Maildir { .. } => "maildir",
            Destination::Discard => "discard",
            Destination::Misrouted(_) => "misrouted",
        }
    }

    /// Whether delivering here opens a connection to another host (what a fleet-wide
    /// limit is about; a local maildir or a discard is this node's alone).
    pub(super) fn is_remote(&self) -> bool {
        matches!(self, Destination::Smarthost { .. } | Destination::Mx { .. })
    }

    pub(super) fn limit_key(&self) -> String {
        match self {
            Destination::Smarthost { route, .. } => format!("route:{route}"),
            Destination::Mx { domain } => format!("mx:{domain}"),
            Destination::Maildir { root } => format!("maildir:{}", root.display()),
            Destination::Discard => "discard".into(),
            Destination::Misrouted(_) => "misrouted".into(),
        }
    }
}

/// Decides where one recipient goes: a plugin's on-route first (with the egress pool it
/// may choose), then the static routes, then MX.
pub(super) async fn route(
    shared: &Shared,
    plugins: &mut SessionPlugins,
    wants_route: bool,
    address: &str,
) -> (Destination, Option<String>) {
    // Names in A-label form: that is how routes are configured and how DNS knows them.
    let domain = match Mailbox::parse(address, true) {
        Ok(mailbox) => match mailbox.domain() {
            Domain::Name(name) => crate::config::ascii_domain(name).unwrap_or_else(|| name.clone()),
            Domain::Literal(literal) => literal.to_string(),
        },
        Err(_) => address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
    };
    let named = |name: &str| -> Destination {
        match shared.config().routes.iter().find(|r| r.name == name) {
            Some(route) => configured(route, shared.config().delivery.tls),
            None => Destination::Misrouted(format!("no [[route]] is named `{name}`")),
        }
    };
    if wants_route && let Some((choice, egress)) = plugins.route(address).await {
        let destination = match choice {
            w::Route::Mx => Destination::Mx { domain },
            w::Route::Named(name) => named(&name),
            w::Route::Local => match &shared.config().delivery.local_maildir {
                Some(root) => Destination::Maildir { root: root.clone() },
                None => Destination::Misrouted(
                    "a plugin chose `local`, but [delivery] local_maildir is not set".into(),
                ),
            },
            w::Route::Discard => Destination::Discard,
        };
        return (destination, egress);
    }
    let config = shared.config();
    if let Some(route) = config
        .routes
        .iter()
        .find(|r| r.domains.iter().any(|d| d.as_str() == domain))
    {
        return (configured(route, config.delivery.tls), None);
    }
    (Destination::Mx { domain }, None)
}

/// The destination of a configured route; a route without a usable next hop is
/// misrouted rather than dropped, so the mail waits for the configuration to be fixed.
fn configured(route: &crate::config::RouteConfig, default_tls: TlsPolicy) -> Destination {
    if let Some(root) = &route.maildir {
        return Destination::Maildir { root: root.clone() };
    }
    match route.smarthost.as_deref().and_then(lookup::parse_host_port) {
        Some((host, port)) => Destination::Smarthost {
            route: route.name.clone(),
            host,
            port,
            tls: route.tls.unwrap_or(default_tls),
        },
        None => Destination::Misrouted(format!("route `{}` has no usable next hop", route.name)),
    }
}
