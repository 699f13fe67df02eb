//! Transport: hands one group of recipients to its [`Destination`] (SMTP to a smarthost or
//! the MX hosts through [`crate::outbound`], a maildir, or nowhere) and says what became of
//! each recipient. It decides nothing about retries or bounces: the attempt turns these
//! results into durable outcomes.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Shared;
use super::dsn::Action;
use super::routing::Destination;
use super::shaping::Policy;
use super::state::Outcome;
use crate::config::TlsPolicy;
use crate::outbound::client::{ClientError, ClientSession, Outgoing, Stage, Timeouts};
use crate::outbound::lookup::{self, LookupError, NextHop};
use crate::outbound::maildir;
use crate::outbound::pool::PoolKey;
use crate::spool::envelope::Envelope;
use crate::spool::outgoing::MessageOctets;

/// One recipient's outcome in this attempt, before it becomes an
/// [`Event`](super::state::Event).
#[derive(Debug, Clone)]
pub(super) struct RecipientResult {
    /// The recipient's index in the envelope.
    pub(super) rcpt: usize,
    /// What happened.
    pub(super) outcome: Outcome,
    /// The remote reply or local reason.
    pub(super) reply: String,
    /// The RFC 3463 status for a DSN, e.g. `5.1.1`.
    pub(super) status: Option<String>,
    /// The host that answered, if any.
    pub(super) remote: Option<String>,
    /// For a delivery: the success notice it earns a recipient with NOTIFY=SUCCESS
    /// (RFC 3461 §4.1): "delivered" into a mailbox here, "relayed" to a next hop without
    /// DSN; none when the next hop took the request on (it offers DSN) or by policy.
    pub(super) success: Option<Action>,
}

impl RecipientResult {
    fn new(
        rcpt: usize,
        outcome: Outcome,
        reply: impl Into<String>,
        status: Option<String>,
        remote: Option<String>,
    ) -> Self {
        RecipientResult {
            rcpt,
            outcome,
            reply: reply.into(),
            status,
            remote,
            success: None,
        }
    }

    fn with_success(mut self, success: Option<Action>) -> Self {
        self.success = success;
        self
    }

    /// The same outcome for every recipient of a group.
    fn for_all(
        rcpts: &[usize],
        outcome: Outcome,
        reply: &str,
        status: Option<String>,
        remote: Option<String>,
    ) -> Vec<RecipientResult> {
        rcpts
            .iter()
            .map(|&r| RecipientResult::new(r, outcome, reply, status.clone(), remote.clone()))
            .collect()
    }
}

/// How a group goes out: the shaping policy's per-connection and per-transaction
/// bounds, and the egress pool.
struct Sending<'a> {
    policy: &'a Policy,
    egress: Option<Arc<crate::config::Config>>,
    pool: Option<String>,
}

impl Sending<'_> {
    /// The local address and HELO name for a connection to `addr`: from the egress pool
    /// if there is one (`Err` when it has no address of `addr`'s family), else the
    /// system's choice and the configured name.
    fn source(
        &self,
        shared: &Shared,
        addr: SocketAddr,
        helo: &str,
    ) -> Result<(Option<std::net::IpAddr>, String), String> {
        let (Some(config), Some(name)) = (&self.egress, &self.pool) else {
            return Ok((None, helo.to_owned()));
        };
        let Some(pool) = config.egress.iter().find(|p| &p.name == name) else {
            return Ok((None, helo.to_owned()));
        };
        let turn = shared
            .egress_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match crate::outbound::egress::choose(pool, turn, addr.is_ipv6()) {
            Some(chosen) => Ok((
                Some(chosen.address),
                chosen.helo.clone().unwrap_or_else(|| helo.to_owned()),
            )),
            None => Err(format!(
                "egress pool `{name}` has no {} address",
                if addr.is_ipv6() { "IPv6" } else { "IPv4" }
            )),
        }
    }
}

/// The egress pool of a destination: its shaping entry's, its route's, or the default.
fn egress_pool(
    config: &crate::config::Config,
    destination: &Destination,
    policy: &Policy,
) -> Option<String> {
    let route = match destination {
        Destination::Smarthost { route, .. } => config
            .routes
            .iter()
            .find(|r| &r.name == route)
            .and_then(|r| r.egress.clone()),
        _ => None,
    };
    policy
        .egress
        .clone()
        .or(route)
        .or_else(|| config.delivery.egress.clone())
}

/// Delivers one group of recipients to one destination.
pub(super) async fn deliver(
    shared: &Arc<Shared>,
    destination: &Destination,
    policy: &Policy,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &MessageOctets,
) -> Vec<RecipientResult> {
    let config = shared.config();
    let pool = egress_pool(&config, destination, policy);
    let sending = Sending {
        policy,
        egress: pool.is_some().then_some(config),
        pool,
    };
    let mut results = Vec::with_capacity(rcpts.len());
    // More recipients than the destination takes in one transaction make more
    // transactions (on the same connection, through the pool).
    for chunk in rcpts.chunks(policy.recipients_per_message.max(1)) {
        results
            .extend(deliver_group(shared, destination, &sending, envelope, chunk, message).await);
    }
    results
}

async fn deliver_group(
    shared: &Arc<Shared>,
    destination: &Destination,
    sending: &Sending<'_>,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &MessageOctets,
) -> Vec<RecipientResult> {
    let all = |outcome: Outcome, reply: &str, status: Option<&str>| {
        RecipientResult::for_all(rcpts, outcome, reply, status.map(str::to_owned), None)
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
            route,
            host,
            port,
            tls,
        } => match lookup::resolve_host(&shared.dns, host, *port).await {
            Ok(addrs) => {
                let tls = if *tls == TlsPolicy::Required && tls_not_required(envelope, message) {
                    TlsPolicy::Opportunistic
                } else {
                    *tls
                };
                let chunking = shared
                    .config()
                    .routes
                    .iter()
                    .find(|r| r.name == *route)
                    .and_then(|r| r.chunking)
                    .unwrap_or(shared.config().delivery.chunking);
                deliver_smtp(
                    shared,
                    sending,
                    chunking,
                    vec![NextHop {
                        name: host.clone(),
                        addrs,
                    }],
                    tls,
                    envelope,
                    rcpts,
                    message,
                )
                .await
            }
            Err(e) => lookup_failure(rcpts, &e),
        },
        Destination::Mx { domain } => {
            match lookup::mx_hosts(&shared.dns, domain, shared.config().delivery.mx_port).await {
                Ok(mut hops) => {
                    let mut tls = shared.config().delivery.tls;
                    // RFC 8689 §5: `TLS-Required: No` asks that TLS policy (MTA-STS here)
                    // not stop delivery; REQUIRETLS on MAIL overrides it.
                    let tls_optional = tls_not_required(envelope, message);
                    if tls_optional && tls == TlsPolicy::Required {
                        tls = TlsPolicy::Opportunistic;
                    }
                    if !tls_optional
                        && let Some(sts) = &shared.mta_sts
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
                    let chunking = shared.config().delivery.chunking;
                    deliver_smtp(
                        shared, sending, chunking, hops, tls, envelope, rcpts, message,
                    )
                    .await
                }
                Err(e) => lookup_failure(rcpts, &e),
            }
        }
    }
}

/// Whether the message says `TLS-Required: No` (RFC 8689 §5) and MAIL did not ask for
/// REQUIRETLS (which wins): TLS is then attempted but not demanded by policy.
fn tls_not_required(envelope: &Envelope, message: &MessageOctets) -> bool {
    !envelope.requiretls() && says_tls_not_required(message.head())
}

/// Whether a header block has a `TLS-Required: No` field (case-insensitive, folded or
/// not).
fn says_tls_not_required(head: &[u8]) -> bool {
    let head = &head[..crate::spool::envelope::find_header_end(head)];
    let mut fields = head.split(|b| *b == b'\n').peekable();
    while let Some(line) = fields.next() {
        // A continuation line belongs to the field before it.
        if matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"TLS-Required")
        {
            continue;
        }
        // The value with its continuation lines, unfolded.
        let mut value = line[colon + 1..].to_vec();
        while let Some(next) = fields.peek()
            && matches!(next.first(), Some(b' ' | b'\t'))
        {
            value.extend_from_slice(next);
            fields.next();
        }
        if value.trim_ascii().eq_ignore_ascii_case(b"No") {
            return true;
        }
    }
    false
}

fn lookup_failure(rcpts: &[usize], error: &LookupError) -> Vec<RecipientResult> {
    let (outcome, status) = match error {
        LookupError::Permanent { enhanced, .. } => (Outcome::Bounced, (*enhanced).to_owned()),
        LookupError::Temporary(_) => (Outcome::Deferred, "4.4.3".to_owned()),
    };
    rcpts
        .iter()
        .map(|&r| RecipientResult::new(r, outcome, error.to_string(), Some(status.clone()), None))
        .collect()
}

async fn deliver_maildir(
    shared: &Arc<Shared>,
    root: &std::path::Path,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &MessageOctets,
) -> Vec<RecipientResult> {
    let mut results = Vec::with_capacity(rcpts.len());
    for &rcpt in rcpts {
        let root = root.to_owned();
        let hostname = shared.config().hostname.to_string();
        let address = envelope.recipients[rcpt].address.clone();
        let sender = envelope.sender.clone();
        let octets = message.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut reader = octets.blocking_reader()?;
            maildir::deliver(&root, &hostname, &address, sender.as_deref(), &mut reader)
        })
        .await;
        results.push(match written {
            Ok(Ok(path)) => RecipientResult::new(
                rcpt,
                Outcome::Delivered,
                format!("stored in {}", path.display()),
                None,
                None,
            )
            .with_success(Some(Action::Delivered)),
            Ok(Err(e)) => RecipientResult::new(
                rcpt,
                Outcome::Deferred,
                format!("maildir: {e}"),
                Some("4.3.0".into()),
                None,
            ),
            Err(e) => RecipientResult::new(
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
    let config = shared.config();
    let delivery = &config.delivery;
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
// Each argument is one fact of this attempt; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn deliver_smtp(
    shared: &Arc<Shared>,
    sending: &Sending<'_>,
    chunking: bool,
    hops: Vec<NextHop>,
    tls: TlsPolicy,
    envelope: &Envelope,
    rcpts: &[usize],
    message: &MessageOctets,
) -> Vec<RecipientResult> {
    let recipients: Vec<String> = rcpts
        .iter()
        .map(|&r| envelope.recipients[r].address.clone())
        .collect();
    let recipient_dsn: Vec<(Option<&str>, Option<&str>)> = rcpts
        .iter()
        .map(|&r| {
            let recipient = &envelope.recipients[r];
            (recipient.notify_raw(), recipient.orcpt())
        })
        .collect();
    let requiretls = envelope.requiretls();
    let outgoing = Outgoing {
        sender: envelope.sender.as_deref(),
        recipients: &recipients,
        size: message.len(),
        body: envelope.body,
        smtputf8: envelope.smtputf8,
        message,
        ret: envelope
            .mail_params
            .iter()
            .find(|p| p.keyword == "RET")
            .and_then(|p| p.value.as_deref())
            .filter(|_| envelope.ret().is_some()),
        envid: envelope.envid(),
        recipient_dsn: &recipient_dsn,
        requiretls,
        chunking,
    };
    // RFC 8689 §4.2.1: a REQUIRETLS message goes only over TLS with a verified
    // certificate, whatever the route or MTA-STS would allow.
    let tls = if requiretls { TlsPolicy::Required } else { tls };
    let helo = shared
        .config()
        .delivery
        .helo_name
        .clone()
        .unwrap_or_else(|| shared.config().hostname.to_string());
    let mut last_error = String::from("no address to try");
    // A host that could not take the message as it is (status, reply, host), and whether
    // some host could not be asked at all (then a later attempt may find it).
    let mut unsupported: Option<(Option<String>, String, String)> = None;
    let mut unreachable_host = false;
    for hop in &hops {
        for &addr in &hop.addrs {
            let (source, helo) = match sending.source(shared, addr, &helo) {
                Ok(chosen) => chosen,
                Err(why) => {
                    last_error = format!("{} [{addr}]: {why}", hop.name);
                    unreachable_host = true;
                    continue;
                }
            };
            let connection = Connection {
                addr,
                host: &hop.name,
                tls,
                source,
                helo: &helo,
                max_transactions: sending.policy.messages_per_connection,
            };
            match transact(shared, &connection, &outgoing).await {
                Ok(result) => return map_transaction(rcpts, &hop.name, result),
                Err(ClientError::Tls(why)) if requiretls => {
                    // No STARTTLS, or a certificate that does not verify: this host can
                    // never take a REQUIRETLS message as it is. Another MX host may; if
                    // none can, the message bounces with 5.7.10 (RFC 8689 §4.2.1).
                    tracing::info!(host = %hop.name, %addr, %why, "next hop cannot take a REQUIRETLS message, trying the next");
                    unsupported = Some((
                        Some(crate::outbound::client::REQUIRETLS_NEEDED.to_string()),
                        format!(
                            "{}: REQUIRETLS: no verified TLS to this host ({why})",
                            hop.name
                        ),
                        hop.name.clone(),
                    ));
                }
                Err(error @ ClientError::Unsupported { .. }) => {
                    // This host lacks what the message needs (8BITMIME, SMTPUTF8, SIZE
                    // room), but nothing was sent: another MX host may have it. Only when
                    // every host that answered says the same does the message bounce.
                    tracing::info!(host = %hop.name, %addr, %error, "next hop cannot take the message, trying the next");
                    unsupported = Some((
                        error.enhanced().map(|e| e.to_string()),
                        format!("{}: {error}", hop.name),
                        hop.name.clone(),
                    ));
                }
                Err(error)
                    if error.is_permanent()
                        && !matches!(
                            error.stage(),
                            Some(Stage::Greeting | Stage::Ehlo | Stage::StartTls)
                        ) =>
                {
                    // A MAIL refusal or a message the server cannot take: the message
                    // itself is refused, and trying elsewhere would not help. (A 5xx
                    // greeting, EHLO or STARTTLS refusal is about this host: the next one
                    // is tried, and if none takes the mail it waits and is retried.)
                    let status = error.enhanced().map(|e| e.to_string());
                    let reply = format!("{}: {error}", hop.name);
                    return RecipientResult::for_all(
                        rcpts,
                        Outcome::Bounced,
                        &reply,
                        status,
                        Some(hop.name.clone()),
                    );
                }
                Err(error) if matches!(error.stage(), Some(Stage::DataBlock | Stage::DataEnd)) => {
                    // The server may have the message already: another host now could
                    // deliver it twice. Defer, and let the retry find out.
                    let reply = format!("{} [{addr}]: {error}", hop.name);
                    return RecipientResult::for_all(
                        rcpts,
                        Outcome::Deferred,
                        &reply,
                        Some("4.4.2".into()),
                        Some(hop.name.clone()),
                    );
                }
                Err(error) => {
                    tracing::info!(host = %hop.name, %addr, %error, "next hop failed, trying the next");
                    last_error = format!("{} [{addr}]: {error}", hop.name);
                    unreachable_host = true;
                }
            }
        }
    }
    if let Some((status, reply, host)) = unsupported
        && !unreachable_host
    {
        // Every host that could be reached refused the message as it is: it will not
        // change by waiting.
        return RecipientResult::for_all(rcpts, Outcome::Bounced, &reply, status, Some(host));
    }
    RecipientResult::for_all(
        rcpts,
        Outcome::Deferred,
        &last_error,
        Some("4.4.1".into()),
        None,
    )
}

/// A connection to make (or take from the pool).
struct Connection<'a> {
    addr: SocketAddr,
    host: &'a str,
    tls: TlsPolicy,
    /// The egress address, if any.
    source: Option<std::net::IpAddr>,
    helo: &'a str,
    /// Transactions on one connection before it is closed.
    max_transactions: u32,
}

/// One transaction on a pooled or new connection; a pooled connection that fails before
/// the server answered anything about this message is retried once on a fresh one.
async fn transact(
    shared: &Arc<Shared>,
    connection: &Connection<'_>,
    outgoing: &Outgoing<'_>,
) -> Result<crate::outbound::client::TransactionResult, ClientError> {
    let Connection {
        addr,
        host,
        tls,
        source,
        helo,
        max_transactions,
    } = *connection;
    if shared.own_addresses.load().contains(addr) {
        return Err(ClientError::LoopsBack(format!(
            "{host} [{addr}] is one of this gateway's listeners"
        )));
    }
    // A pooled connection serves only deliveries with the TLS requirements it met, from
    // the address it was opened from.
    let key = PoolKey::new(addr, host, tls).from_source(source);
    let pooled = shared
        .pool
        .take(&key)
        .filter(|s| tls != TlsPolicy::Required || s.is_tls());
    if let Some(mut session) = pooled {
        let result = session.send(outgoing).await;
        // `send` leaves a usable session clean for the next transaction.
        keep_for(shared, key.clone(), session, max_transactions).await;
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
    let mut session = open_from(shared, addr, source, host, tls, helo).await?;
    let result = session.send(outgoing).await;
    keep_for(shared, key, session, max_transactions).await;
    result
}

/// [`keep`], unless the connection has carried its share of transactions: then it is
/// closed with QUIT.
async fn keep_for(shared: &Shared, key: PoolKey, session: ClientSession, max_transactions: u32) {
    if session.transactions() >= max_transactions {
        if session.is_usable() {
            session.quit().await;
        }
        return;
    }
    keep(shared, key, session);
}

/// Connects and applies the TLS policy.
pub(super) async fn open(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    host: &str,
    tls: TlsPolicy,
    helo: &str,
) -> Result<ClientSession, ClientError> {
    open_from(shared, addr, None, host, tls, helo).await
}

/// [`open`] from the local address `source`.
async fn open_from(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    host: &str,
    tls: TlsPolicy,
    helo: &str,
) -> Result<ClientSession, ClientError> {
    let session = ClientSession::connect_from(addr, source, helo, timeouts(shared)).await?;
    let config = shared.config();
    let hostname = config.hostname.as_str();
    if session.announces(hostname) {
        session.quit().await;
        return Err(ClientError::LoopsBack(format!(
            "{host} [{addr}] calls itself {hostname}, this gateway's own name"
        )));
    }
    let offered = session.capabilities().starttls;
    let counted = |session: ClientSession| {
        if let Some(version) = session.tls_version() {
            shared
                .metrics
                .tls_sessions
                .get_or_create(&crate::metrics::TlsLabels {
                    direction: "out",
                    version: version.to_owned(),
                })
                .inc();
        }
        session
    };
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
                Ok(session) => Ok(counted(session)),
                Err(error) => {
                    // RFC 7435: opportunistic encryption must not make delivery worse
                    // than plain text. Start over without it.
                    tracing::info!(%host, %addr, %error, "opportunistic TLS failed, going on without");
                    ClientSession::connect_from(addr, source, helo, timeouts(shared)).await
                }
            }
        }
        TlsPolicy::Required => {
            let name = server_name(host, addr);
            session
                .starttls(&shared.tls_verified, name, helo)
                .await
                .map(counted)
        }
    }
}

/// The name the certificate must match: the host's name, or its address.
fn server_name(host: &str, addr: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(host.trim_end_matches('.').to_owned())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(addr.ip().into()))
}

pub(super) fn keep(shared: &Shared, key: PoolKey, session: ClientSession) {
    if session.is_usable() {
        shared.pool.put(key, session);
    }
}

fn map_transaction(
    rcpts: &[usize],
    host: &str,
    result: crate::outbound::client::TransactionResult,
) -> Vec<RecipientResult> {
    let remote = Some(host.to_owned());
    // A next hop that offers DSN was given NOTIFY and reports on from there.
    let success = (!result.dsn).then_some(Action::Relayed);
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
            RecipientResult::new(
                rcpt,
                outcome,
                format!("{host}: {reply}"),
                status,
                remote.clone(),
            )
            .with_success(success)
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

#[cfg(test)]
mod tests {
    use super::says_tls_not_required;

    #[test]
    fn tls_required_no_is_found_in_the_header_block_only() {
        for yes in [
            &b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n"[..],
            b"tls-required:no\r\n\r\n",
            b"TLS-Required:\r\n  NO \r\nSubject: x\r\n\r\n",
        ] {
            assert!(
                says_tls_not_required(yes),
                "{}",
                String::from_utf8_lossy(yes)
            );
        }
        for no in [
            &b"Subject: x\r\n\r\nTLS-Required: No\r\n"[..],
            b"TLS-Required: Yes\r\n\r\n",
            b"X-TLS-Required: No\r\n\r\n",
            b"TLS-Required: No thanks\r\n\r\n",
            b"Subject: a\r\n TLS-Required: No\r\n\r\n",
        ] {
            assert!(
                !says_tls_not_required(no),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }
}
