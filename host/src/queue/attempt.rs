//! One delivery attempt of one message: route each pending recipient, hand each group to
//! its destination, record the outcomes durably, tell the plugins, bounce what failed for
//! good, and schedule what is left.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dsn::{Action, DsnInput, FailedRecipient, build_dsn};
use super::state::{Event, Outcome};
use super::{Shared, now_ms, retry_delay};
use crate::config::TlsPolicy;
use crate::inbound::address::{Domain, Mailbox};
use crate::outbound::client::{ClientError, ClientSession, Outgoing, Stage, Timeouts};
use crate::outbound::lookup::{self, LookupError, NextHop};
use crate::outbound::maildir;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::SessionPlugins;
use crate::spool::envelope::{Envelope, apply_header_edits};
use crate::spool::{QueueId, StoredMessage};

/// Where a group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
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
    fn limit_key(&self) -> String {
        match self {
            Destination::Smarthost { route, .. } => format!("route:{route}"),
            Destination::Mx { domain } => format!("mx:{domain}"),
            Destination::Maildir { root } => format!("maildir:{}", root.display()),
            Destination::Discard => "discard".into(),
            Destination::Misrouted(_) => "misrouted".into(),
        }
    }
}

/// One recipient's outcome in this attempt, before it becomes an [`Event`].
#[derive(Debug, Clone)]
struct Result1 {
    rcpt: usize,
    outcome: Outcome,
    reply: String,
    status: Option<String>,
    remote: Option<String>,
}

impl Result1 {
    fn new(
        rcpt: usize,
        outcome: Outcome,
        reply: impl Into<String>,
        status: Option<String>,
        remote: Option<String>,
    ) -> Self {
        Result1 {
            rcpt,
            outcome,
            reply: reply.into(),
            status,
            remote,
        }
    }
}

/// Runs one attempt of message `id`.
pub(crate) async fn run(shared: &Arc<Shared>, id: QueueId) {
    let Some((stored, pending)) = shared.pending(id) else {
        return;
    };
    let envelope = &stored.envelope;
    if let Some(reason) = &envelope.quarantine {
        quarantine(shared, id, &pending, reason);
        shared.finish_attempt(id, None);
        return;
    }

    let path = shared.message_path(id);
    let message_len = stored.message_len;
    let edits = envelope.header_edits.clone();
    let read = tokio::task::spawn_blocking(move || {
        crate::spool::read_message(&path, message_len).map(|raw| apply_header_edits(&raw, &edits))
    })
    .await;
    let message = match read {
        Ok(Ok(message)) => message,
        Ok(Err(e)) => {
            tracing::error!(%id, error = %e, "cannot read a queued message; will retry");
            shared.finish_attempt(id, Some(now_ms() + 60_000));
            return;
        }
        Err(_) => {
            shared.finish_attempt(id, Some(now_ms() + 60_000));
            return;
        }
    };

    let mut plugins = shared.take_plugin_session();
    let wants_route = plugins.has(w::Hooks::ROUTE);
    let mut groups: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
    for &(rcpt, _) in &pending {
        let address = &envelope.recipients[rcpt].address;
        let destination = route(shared, &mut plugins, wants_route, address).await;
        groups.entry(destination).or_default().push(rcpt);
    }

    let mut results = Vec::with_capacity(pending.len());
    for (destination, rcpts) in groups {
        let limit = shared.destination_limit(&destination.limit_key());
        let Ok(_permit) = limit.acquire_owned().await else {
            return;
        };
        results.extend(deliver(shared, &destination, envelope, &rcpts, &message).await);
    }

    let attempts: BTreeMap<usize, u32> = pending.iter().copied().collect();
    let now = SystemTime::now();
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expired = now_secs
        .saturating_sub(envelope.received_at)
        .saturating_mul(1000)
        >= u64::try_from(shared.config.queue.max_lifetime.0.as_millis()).unwrap_or(u64::MAX);
    let mut next_due: Option<u64> = None;
    let events: Vec<Event> = results
        .into_iter()
        .map(|mut result| {
            let attempt = attempts.get(&result.rcpt).copied().unwrap_or(0) + 1;
            let mut next = None;
            if result.outcome == Outcome::Deferred {
                if expired {
                    result.outcome = Outcome::Bounced;
                    result.status = Some("4.4.7".into());
                    result.reply =
                        format!("message expired in the queue; last error: {}", result.reply);
                } else {
                    let delay = retry_delay(&shared.config.queue.retry_intervals, attempt);
                    let due = now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    next = Some(due / 1000);
                }
            }
            Event {
                rcpt: result.rcpt,
                outcome: result.outcome,
                attempt,
                at: now_secs,
                next,
                reply: result.reply,
                status: result.status,
                remote: result.remote,
            }
        })
        .collect();

    // The bounce is spooled before the outcomes are recorded: a crash in between repeats
    // the attempt (and perhaps the bounce) rather than losing the bounce.
    let bounced: Vec<&Event> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Bounced)
        .collect();
    if !bounced.is_empty() {
        bounce(shared, &stored, &bounced, &message).await;
    }

    // A first attempt that settles every recipient needs no state log: removing the
    // message (durably, in the spool's next group commit) is the record that it is done,
    // and a crash before that repeats the attempt exactly as a crash before a log append
    // would. This saves a file creation, an fdatasync and an unlink per message.
    let first_and_final = pending.len() == envelope.recipients.len()
        && pending.iter().all(|&(_, attempts)| attempts == 0)
        && events.len() == pending.len()
        && events.iter().all(|e| e.outcome != Outcome::Deferred);
    let removed = first_and_final
        && {
            match shared.spool.remove(id).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "cannot remove a finished message; recording its state instead");
                    false
                }
            }
        };
    let recorded = if removed {
        Ok(Ok(()))
    } else {
        let path = shared.state_path(id);
        let to_write = events.clone();
        tokio::task::spawn_blocking(move || super::state::append(&path, &to_write)).await
    };
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Without a durable record the outcomes may be repeated; retry later rather
            // than act on what is not on disk.
            tracing::error!(%id, error = %e, "cannot write the state log; will retry");
            shared.finish_attempt(id, Some(now_ms() + 60_000));
            return;
        }
        Err(_) => {
            shared.finish_attempt(id, Some(now_ms() + 60_000));
            return;
        }
    }
    if let Err(e) = shared.record_in_memory(id, &events) {
        tracing::error!(%id, error = %e, "state update failed");
    }
    for event in &events {
        let outcome = match event.outcome {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
        };
        shared
            .metrics
            .deliveries
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        let address = &envelope.recipients[event.rcpt].address;
        tracing::info!(%id, recipient = %address, outcome = ?event.outcome, attempt = event.attempt, reply = %event.reply, "delivery attempt");
    }

    if plugins.has(w::Hooks::DELIVERY) {
        for event in &events {
            let info = w::DeliveryInfo {
                queue_id: id.to_string(),
                recipient: envelope.recipients[event.rcpt].address.clone(),
                status: match event.outcome {
                    Outcome::Delivered => w::DeliveryStatus::Delivered,
                    Outcome::Deferred => w::DeliveryStatus::Deferred,
                    Outcome::Bounced => w::DeliveryStatus::Bounced,
                },
                reply: event.reply.clone(),
                attempt: event.attempt,
            };
            plugins.delivery(&info).await;
        }
    }

    delay_notice(shared, &stored, &events, &message).await;
    shared.return_plugin_session(plugins);
    if removed {
        shared.finish_removed(id);
    } else {
        shared.finish_attempt(id, next_due);
    }
}

/// Moves a quarantined message out of the queue's way and finalises its recipients.
fn quarantine(shared: &Arc<Shared>, id: QueueId, pending: &[(usize, u32)], reason: &str) {
    let dir = shared.spool_dir.join("quarantine");
    let moved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::rename(shared.message_path(id), dir.join(id.to_string())));
    if let Err(e) = moved {
        tracing::error!(%id, error = %e, "cannot move a message into quarantine");
        return;
    }
    let events: Vec<Event> = pending
        .iter()
        .map(|&(rcpt, attempts)| Event {
            rcpt,
            outcome: Outcome::Delivered,
            attempt: attempts + 1,
            at: now_ms() / 1000,
            next: None,
            reply: format!("quarantined: {reason}"),
            status: None,
            remote: None,
        })
        .collect();
    if let Err(e) = shared.record(id, &events) {
        tracing::error!(%id, error = %e, "cannot record the quarantine");
    }
    tracing::info!(%id, %reason, "message quarantined");
}

/// Decides where one recipient goes: a plugin's on-route first, then the static routes,
/// then MX.
async fn route(
    shared: &Shared,
    plugins: &mut SessionPlugins,
    wants_route: bool,
    address: &str,
) -> Destination {
    let domain = match Mailbox::parse(address, true) {
        Ok(mailbox) => match mailbox.domain() {
            Domain::Name(name) => name.clone(),
            Domain::Literal(literal) => literal.to_string(),
        },
        Err(_) => address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
    };
    let named = |name: &str| -> Destination {
        match shared.config.routes.iter().find(|r| r.name == name) {
            Some(route) => configured(route, shared.config.delivery.tls),
            None => Destination::Misrouted(format!("no [[route]] is named `{name}`")),
        }
    };
    if wants_route && let Some(choice) = plugins.route(address).await {
        return match choice {
            w::Route::Mx => Destination::Mx { domain },
            w::Route::Named(name) => named(&name),
            w::Route::Local => match &shared.config.delivery.local_maildir {
                Some(root) => Destination::Maildir { root: root.clone() },
                None => Destination::Misrouted(
                    "a plugin chose `local`, but [delivery] local_maildir is not set".into(),
                ),
            },
            w::Route::Discard => Destination::Discard,
        };
    }
    if let Some(route) = shared
        .config
        .routes
        .iter()
        .find(|r| r.domains.iter().any(|d| d.as_str() == domain))
    {
        return configured(route, shared.config.delivery.tls);
    }
    Destination::Mx { domain }
}

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

/// Delivers one group of recipients to one destination.
async fn deliver(
    shared: &Arc<Shared>,
    destination: &Destination,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &[u8],
) -> Vec<Result1> {
    let all = |outcome: Outcome, reply: &str, status: Option<&str>| -> Vec<Result1> {
        rcpts
            .iter()
            .map(|&r| Result1::new(r, outcome, reply, status.map(str::to_owned), None))
            .collect()
    };
    match destination {
        Destination::Discard => all(Outcome::Delivered, "discarded by policy", None),
        Destination::Misrouted(why) => {
            tracing::error!(why = %why, "misrouted recipients");
            all(Outcome::Deferred, why, Some("4.3.5"))
        }
        Destination::Maildir { root } => {
            deliver_maildir(shared, root, envelope, rcpts, message).await
        }
        Destination::Smarthost {
            host, port, tls, ..
        } => match lookup::resolve_host(&shared.dns, host, *port).await {
            Ok(addrs) => {
                deliver_smtp(
                    shared,
                    vec![NextHop {
                        name: host.clone(),
                        addrs,
                    }],
                    *tls,
                    envelope,
                    rcpts,
                    message,
                )
                .await
            }
            Err(e) => lookup_failure(rcpts, &e),
        },
        Destination::Mx { domain } => {
            match lookup::mx_hosts(&shared.dns, domain, shared.config.delivery.mx_port).await {
                Ok(mut hops) => {
                    let mut tls = shared.config.delivery.tls;
                    if let Some(sts) = &shared.mta_sts
                        && let Some(policy) = sts.policy(&shared.dns, domain).await
                    {
                        use crate::outbound::mta_sts::Mode;
                        let allowed: Vec<NextHop> = hops
                            .iter()
                            .filter(|hop| policy.allows(&hop.name))
                            .cloned()
                            .collect();
                        match policy.mode {
                            Mode::Enforce => {
                                // Only the listed MX hosts, only over verified TLS.
                                hops = allowed;
                                tls = TlsPolicy::Required;
                                if hops.is_empty() {
                                    let why = format!(
                                        "no MX host of {domain} matches its MTA-STS policy"
                                    );
                                    return all(Outcome::Deferred, &why, Some("4.7.5"));
                                }
                            }
                            Mode::Testing if allowed.len() < hops.len() => {
                                tracing::warn!(%domain, "MX hosts outside the MTA-STS policy (testing mode: delivering anyway)");
                            }
                            Mode::Testing | Mode::None => {}
                        }
                    }
                    deliver_smtp(shared, hops, tls, envelope, rcpts, message).await
                }
                Err(e) => lookup_failure(rcpts, &e),
            }
        }
    }
}

fn lookup_failure(rcpts: &[usize], error: &LookupError) -> Vec<Result1> {
    let (outcome, status) = match error {
        LookupError::Permanent { enhanced, .. } => (Outcome::Bounced, (*enhanced).to_owned()),
        LookupError::Temporary(_) => (Outcome::Deferred, "4.4.3".to_owned()),
    };
    rcpts
        .iter()
        .map(|&r| Result1::new(r, outcome, error.to_string(), Some(status.clone()), None))
        .collect()
}

async fn deliver_maildir(
    shared: &Arc<Shared>,
    root: &std::path::Path,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &[u8],
) -> Vec<Result1> {
    let mut results = Vec::with_capacity(rcpts.len());
    for &rcpt in rcpts {
        let root = root.to_owned();
        let hostname = shared.config.hostname.to_string();
        let address = envelope.recipients[rcpt].address.clone();
        let sender = envelope.sender.clone();
        let body = message.to_vec();
        let written = tokio::task::spawn_blocking(move || {
            maildir::deliver(&root, &hostname, &address, sender.as_deref(), &body)
        })
        .await;
        results.push(match written {
            Ok(Ok(path)) => Result1::new(
                rcpt,
                Outcome::Delivered,
                format!("stored in {}", path.display()),
                None,
                None,
            ),
            Ok(Err(e)) => Result1::new(
                rcpt,
                Outcome::Deferred,
                format!("maildir: {e}"),
                Some("4.3.0".into()),
                None,
            ),
            Err(e) => Result1::new(
                rcpt,
                Outcome::Deferred,
                format!("maildir task: {e}"),
                Some("4.3.0".into()),
                None,
            ),
        });
    }
    results
}

fn timeouts(shared: &Shared) -> Timeouts {
    let delivery = &shared.config.delivery;
    Timeouts {
        connect: delivery.connect_timeout.0,
        greeting: delivery.command_timeout.0,
        command: delivery.command_timeout.0,
        data_init: delivery.command_timeout.0,
        data_block: delivery.command_timeout.0,
        data_end: delivery.data_timeout.0,
    }
}

/// Tries each host and address in turn until one takes the transaction.
async fn deliver_smtp(
    shared: &Arc<Shared>,
    hops: Vec<NextHop>,
    tls: TlsPolicy,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &[u8],
) -> Vec<Result1> {
    let recipients: Vec<String> = rcpts
        .iter()
        .map(|&r| envelope.recipients[r].address.clone())
        .collect();
    let outgoing = Outgoing {
        sender: envelope.sender.as_deref(),
        recipients: &recipients,
        size: message.len() as u64,
        body: envelope.body,
        smtputf8: envelope.smtputf8,
        message,
    };
    let helo = shared
        .config
        .delivery
        .helo_name
        .clone()
        .unwrap_or_else(|| shared.config.hostname.to_string());
    let mut last_error = String::from("no address to try");
    for hop in &hops {
        for &addr in &hop.addrs {
            match transact(shared, addr, &hop.name, tls, &helo, &outgoing).await {
                Ok(result) => return map_transaction(rcpts, &hop.name, result),
                Err(error)
                    if error.is_permanent()
                        && !matches!(error.stage(), Some(Stage::Greeting | Stage::Ehlo)) =>
                {
                    // A MAIL refusal or a message the server cannot take: the message
                    // itself is refused, and trying elsewhere would not help. (A 5xx
                    // greeting or EHLO refusal is about this host: the next one is tried.)
                    let status = error.enhanced().map(|e| e.to_string());
                    let reply = format!("{}: {error}", hop.name);
                    return rcpts
                        .iter()
                        .map(|&r| {
                            Result1::new(
                                r,
                                Outcome::Bounced,
                                reply.clone(),
                                status.clone(),
                                Some(hop.name.clone()),
                            )
                        })
                        .collect();
                }
                Err(error) if matches!(error.stage(), Some(Stage::DataBlock | Stage::DataEnd)) => {
                    // The server may have the message already: another host now could
                    // deliver it twice. Defer, and let the retry find out.
                    let reply = format!("{} [{addr}]: {error}", hop.name);
                    return rcpts
                        .iter()
                        .map(|&r| {
                            Result1::new(
                                r,
                                Outcome::Deferred,
                                reply.clone(),
                                Some("4.4.2".into()),
                                Some(hop.name.clone()),
                            )
                        })
                        .collect();
                }
                Err(error) => {
                    tracing::info!(host = %hop.name, %addr, %error, "next hop failed, trying the next");
                    last_error = format!("{} [{addr}]: {error}", hop.name);
                }
            }
        }
    }
    rcpts
        .iter()
        .map(|&r| {
            Result1::new(
                r,
                Outcome::Deferred,
                last_error.clone(),
                Some("4.4.1".into()),
                None,
            )
        })
        .collect()
}

/// One transaction on a pooled or new connection; a pooled connection that fails before
/// the server answered anything about this message is retried once on a fresh one.
async fn transact(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    host: &str,
    tls: TlsPolicy,
    helo: &str,
    outgoing: &Outgoing<'_>,
) -> Result<crate::outbound::client::TransactionResult, ClientError> {
    let pooled = shared
        .pool
        .take(addr)
        .filter(|s| tls != TlsPolicy::Required || s.is_tls());
    if let Some(mut session) = pooled {
        let result = session.send(outgoing).await;
        // `send` leaves a usable session clean for the next transaction.
        keep(shared, addr, session);
        match result {
            Ok(result) => return Ok(result),
            // A stale pooled connection fails at its first command. Only then is a retry
            // on a fresh connection safe: once message data may have reached the server,
            // sending again could deliver twice.
            Err(error) if !error.is_permanent() && error.stage() == Some(Stage::Mail) => {
                tracing::debug!(%addr, %error, "pooled connection failed, reconnecting");
            }
            Err(error) => return Err(error),
        }
    }
    let mut session = open(shared, addr, host, tls, helo).await?;
    let result = session.send(outgoing).await;
    keep(shared, addr, session);
    result
}

/// Connects and applies the TLS policy.
async fn open(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    host: &str,
    tls: TlsPolicy,
    helo: &str,
) -> Result<ClientSession, ClientError> {
    let session = ClientSession::connect(addr, helo, timeouts(shared)).await?;
    let offered = session.capabilities().starttls;
    match tls {
        TlsPolicy::None => Ok(session),
        TlsPolicy::Opportunistic if !offered => Ok(session),
        TlsPolicy::Required if !offered => {
            session.quit().await;
            Err(ClientError::Tls(format!(
                "{host} does not offer STARTTLS and TLS is required"
            )))
        }
        TlsPolicy::Opportunistic => {
            let name = server_name(host, addr);
            match session.starttls(&shared.tls_any, name, helo).await {
                Ok(session) => Ok(session),
                Err(error) => {
                    // RFC 7435: opportunistic encryption must not make delivery worse
                    // than plain text. Start over without it.
                    tracing::info!(%host, %addr, %error, "opportunistic TLS failed, going on without");
                    ClientSession::connect(addr, helo, timeouts(shared)).await
                }
            }
        }
        TlsPolicy::Required => {
            let name = server_name(host, addr);
            session.starttls(&shared.tls_verified, name, helo).await
        }
    }
}

/// The name the certificate must match: the host's name, or its address.
fn server_name(host: &str, addr: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(host.trim_end_matches('.').to_owned())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(addr.ip().into()))
}

fn keep(shared: &Shared, addr: SocketAddr, session: ClientSession) {
    if session.is_usable() {
        shared.pool.put(addr, session);
    }
}

fn map_transaction(
    rcpts: &[usize],
    host: &str,
    result: crate::outbound::client::TransactionResult,
) -> Vec<Result1> {
    let remote = Some(host.to_owned());
    rcpts
        .iter()
        .zip(result.recipients)
        .map(|(&rcpt, reply)| {
            let (outcome, reply) = match (reply, &result.data) {
                (Err(refused), _) => (outcome_of(refused.code), refused),
                (Ok(_), Some(Ok(done))) => (Outcome::Delivered, done.clone()),
                (Ok(_), Some(Err(failed))) => (outcome_of(failed.code), failed.clone()),
                (Ok(accepted), None) => (Outcome::Deferred, accepted),
            };
            let status = Some(reply.status().to_string());
            Result1::new(
                rcpt,
                outcome,
                format!("{host}: {reply}"),
                status,
                remote.clone(),
            )
        })
        .collect()
}

fn outcome_of(code: u16) -> Outcome {
    if (500..600).contains(&code) {
        Outcome::Bounced
    } else {
        Outcome::Deferred
    }
}

/// Sends one DSN to the sender for the recipients that bounced in this attempt. Never to
/// the null sender: a bounce of a bounce is logged and dropped.
async fn bounce(shared: &Arc<Shared>, stored: &StoredMessage, bounced: &[&Event], message: &[u8]) {
    report(shared, stored, bounced, message, Action::Failed).await;
}

/// Sends a DSN of kind `action` about `events` to the sender; returns whether one was
/// spooled.
async fn report(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    bounced: &[&Event],
    message: &[u8],
    action: Action,
) -> bool {
    let envelope = &stored.envelope;
    let Some(sender) = envelope.sender.clone() else {
        if action == Action::Failed {
            for event in bounced {
                tracing::warn!(id = %stored.id, recipient = %envelope.recipients[event.rcpt].address, reply = %event.reply, "double bounce dropped (the sender is <>)");
            }
        }
        return false;
    };
    let now = SystemTime::now();
    let failed: Vec<FailedRecipient> = bounced
        .iter()
        .map(|event| FailedRecipient {
            address: envelope.recipients[event.rcpt].address.clone(),
            original: None,
            action,
            status: event.status.clone().unwrap_or_else(|| match action {
                Action::Failed => "5.0.0".into(),
                Action::Delayed => "4.0.0".into(),
            }),
            remote_mta: event.remote.clone(),
            diagnostic: Some(format!("smtp; {}", event.reply)),
            last_attempt: now,
        })
        .collect();
    let hostname = shared.config.hostname.to_string();
    let dsn = build_dsn(&DsnInput {
        reporting_mta: &hostname,
        original: envelope,
        original_message: message,
        recipients: &failed,
        arrival: UNIX_EPOCH + Duration::from_secs(envelope.received_at),
        now,
        message_id_domain: &hostname,
    });
    let dsn_envelope = Envelope {
        version: crate::spool::envelope::ENVELOPE_VERSION,
        id: String::new(),
        received_at: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        sender: None,
        mail_params: Vec::new(),
        recipients: vec![crate::spool::envelope::Recipient {
            address: sender.clone(),
            params: Vec::new(),
        }],
        body: crate::spool::envelope::BodyType::SevenBit,
        smtputf8: envelope.smtputf8,
        client: envelope.client.clone(),
        size: dsn.len() as u64,
        header_edits: Vec::new(),
        tags: BTreeMap::new(),
        quarantine: None,
    };
    match shared.inject(dsn_envelope, &dsn).await {
        Ok(dsn_id) => {
            tracing::info!(id = %stored.id, dsn = %dsn_id, to = %sender, recipients = failed.len(), kind = ?action, "delivery status notification sent");
            true
        }
        Err(e) => {
            tracing::error!(id = %stored.id, error = %e, "cannot spool a delivery status notification");
            false
        }
    }
}

/// Sends one delay notice per message, once it has waited `delay_notice_after`, for the
/// recipients still deferred. A marker file beside the state log remembers it was sent
/// (a crash before the marker is written can repeat a notice, never lose one).
async fn delay_notice(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    events: &[Event],
    message: &[u8],
) {
    let Some(after) = shared.config.queue.delay_notice_after else {
        return;
    };
    let waited = now_ms() / 1000 - stored.envelope.received_at.min(now_ms() / 1000);
    if waited < after.0.as_secs() {
        return;
    }
    let deferred: Vec<&Event> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Deferred)
        .collect();
    let marker = shared.delay_marker(stored.id);
    if deferred.is_empty() || marker.exists() {
        return;
    }
    if report(shared, stored, &deferred, message, Action::Delayed).await
        && let Err(e) = std::fs::write(&marker, b"")
    {
        tracing::warn!(id = %stored.id, error = %e, "cannot remember the delay notice");
    }
}
