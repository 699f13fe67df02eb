//! One delivery attempt of one message: route each pending recipient (`routing`),
//! hand each group to its destination (`transport`), bounce what failed for good
//! (`notify`), record the outcomes durably, tell the plugins, and schedule what is
//! left. A quarantined message is set aside instead (`quarantine`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::classify::{FailureClass, classify};
use super::destinations::Entry;
use super::notify::{Report, bounce, delay_notice, success};
use super::quarantine::quarantine;
use super::routing::{Destination, route};
use super::shaping::{self, Policy};
use super::state::{self, Event, Outcome};
use super::transport::{RecipientResult, deliver};
use super::{Shared, now_ms, retry_delay};
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::SessionPlugins;
use crate::spool::QueueId;
use crate::spool::envelope::Envelope;
use crate::spool::outgoing::MessageOctets;

/// Runs one attempt of message `id`.
pub(crate) async fn run(shared: &Arc<Shared>, id: QueueId) {
    let started = std::time::Instant::now();
    if !record_held_outcomes(shared, id).await {
        return;
    }
    let Some(mut message) = shared.load(id).await else {
        return;
    };
    let all_pending = message.pending();
    if all_pending.is_empty() {
        // Held outcomes just recorded settled every recipient.
        shared.finish_attempt(id, &message, None);
        return;
    }
    let stored = Arc::clone(&message.stored);
    let envelope = &stored.envelope;
    // Recipients whose destination the operator holds wait; the others go on.
    let pending: Vec<(usize, u32)> = all_pending
        .iter()
        .copied()
        .filter(|&(rcpt, _)| {
            let domain = envelope.recipients[rcpt]
                .address
                .rsplit_once('@')
                .map_or("", |(_, d)| d);
            !shared.holds.holds_domain(domain)
        })
        .collect();
    if pending.is_empty() {
        shared.finish_held(id);
        return;
    }
    if let Some(reason) = &envelope.quarantine {
        quarantine(shared, id, &mut message, &pending, reason);
        shared.finish_attempt(id, &message, None);
        return;
    }

    // Routing runs under a global slot, so that a flood of due messages does not route
    // (and take plugin instances) all at once; the slot is given back before waiting for
    // any destination.
    let groups = {
        let Ok(_global) = shared.global.acquire().await else {
            return;
        };
        let mut plugins = shared.take_plugin_session();
        plugins.set_message_tags(&envelope.tags);
        let wants_route = plugins.has(w::Hooks::ROUTE);
        // By destination and the egress pool a plugin chose for it.
        let mut groups: BTreeMap<(Destination, Option<String>), Vec<usize>> = BTreeMap::new();
        for &(rcpt, _) in &pending {
            let address = &envelope.recipients[rcpt].address;
            let routed = route(shared, &mut plugins, wants_route, address).await;
            groups.entry(routed).or_default().push(rcpt);
        }
        shared.return_plugin_session(plugins);
        groups
    };

    // The message body is read only once a delivery may start, so messages waiting for
    // a slow destination's slot hold no body in memory.
    let mut body: Option<MessageOctets> = None;
    let mut results = Vec::with_capacity(pending.len());
    // Recipients whose delivery was recorded as soon as their destination accepted them.
    let mut recorded_early: Vec<usize> = Vec::new();
    // A destination with no room for this message: the attempt stops there, and the
    // message waits parked on it with its remaining recipients.
    let mut parked_on: Option<String> = None;
    // Each attempted recipient's destination class, for the metrics.
    let mut classes: Vec<(usize, &'static str)> = Vec::with_capacity(pending.len());
    // Each attempted recipient's destination gate, for on-delivery.
    let mut gates: Vec<(usize, String)> = Vec::with_capacity(pending.len());
    let last_group = groups.len().saturating_sub(1);
    for (n, ((destination, egress), rcpts)) in groups.into_iter().enumerate() {
        // The destination's slot first, then a global one: a destination that tarpits
        // (or is dead and times out) holds at most its own `max_per_destination` global
        // slots while it delivers, as many attempts wait for it, and the messages queued
        // behind those wait parked, holding nothing, so mail to every other destination
        // keeps flowing.
        let policy = policy_of(shared, &destination).await;
        let key = policy.key.clone();
        let ticket = match shared.destinations.enter(&policy, id) {
            Entry::Wait(ticket) => ticket,
            Entry::Full => {
                parked_on = Some(key);
                break;
            }
        };
        let Some(_destination_slot) = ticket.acquire().await else {
            return;
        };
        // Then the fleet's place, when gateways share a limit per destination: waiting for
        // it holds this destination's slot only, never a global one.
        let fleet_limit = shared
            .config()
            .queue
            .fleet_max_per_destination
            .filter(|_| destination.is_remote());
        let _fleet_slot = super::fleet::acquire(shared.plugins.services(), &key, fleet_limit).await;
        let Ok(_global) = shared.global.acquire().await else {
            return;
        };
        let octets = match &body {
            Some(octets) => octets,
            None => match read_body(shared, id, envelope, stored.message_len).await {
                Some(octets) => body.insert(octets),
                None => {
                    shared.finish_attempt(id, &message, Some(now_ms() + 60_000));
                    return;
                }
            },
        };
        classes.extend(rcpts.iter().map(|&r| (r, destination.class())));
        gates.extend(rcpts.iter().map(|&r| (r, key.clone())));
        let delivered = deliver(
            shared,
            &destination,
            &policy,
            egress.as_deref(),
            envelope,
            &rcpts,
            octets,
        )
        .await;
        react(shared, &policy, &delivered);
        if n < last_group {
            // More destinations follow, and they may take long: what this one accepted is
            // recorded now, so a crash later in the attempt repeats no more than the one
            // transaction it interrupts.
            recorded_early.extend(
                record_delivered(shared, id, &stored, octets.head(), &pending, &delivered).await,
            );
        }
        results.extend(delivered);
    }
    if results.is_empty()
        && let Some(key) = &parked_on
    {
        // Nothing was tried: nothing to record.
        shared.finish_parked(id, key);
        return;
    }
    // Every group that was tried had read the body; what the notices return of it is
    // its header block.
    let octets = body.unwrap_or_else(|| MessageOctets::in_memory(Vec::new()));
    let mut plugins = shared.take_plugin_session();
    plugins.set_message_tags(&envelope.tags);

    let (mut events, mut next_due) = outcomes(shared, envelope, &pending, results);
    for event in events
        .iter_mut()
        .filter(|e| recorded_early.contains(&e.rcpt))
    {
        // Its notice went with its early record.
        event.owed_notice = None;
    }

    // The bounce is spooled before the outcomes are recorded: a crash in between repeats
    // the attempt (and perhaps the bounce) rather than losing the bounce.
    let bounced: Vec<&Event> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Bounced)
        .collect();
    if !bounced.is_empty()
        && bounce(
            shared,
            &stored,
            &bounced,
            octets.head(),
            octets.len() == octets.head().len() as u64,
        )
        .await
            == Report::Failed
    {
        // A recipient recorded as bounced without its DSN on disk would be lost to the
        // sender for good: it stays deferred, and the bounce is tried again with it.
        let retry = now_ms() + first_retry_ms(shared);
        for event in events.iter_mut().filter(|e| e.outcome == Outcome::Bounced) {
            tracing::error!(queue_id = %id, recipient = %envelope.recipients[event.rcpt].address, "the bounce could not be spooled: the recipient stays deferred until it can be");
            event.outcome = Outcome::Deferred;
            event.next = Some(retry / 1000);
            event.reply = format!("bounce not spooled yet; {}", event.reply);
        }
        next_due = Some(next_due.map_or(retry, |d| d.min(retry)));
    }

    let mut to_record: Vec<Event> = events
        .iter()
        .filter(|e| !recorded_early.contains(&e.rcpt))
        .cloned()
        .collect();
    // Success notices, like bounces, are spooled before the deliveries they report are
    // recorded. One that cannot be spooled holds this attempt's outcomes in memory (as a
    // failed record does): the deliveries cannot be repeated, so they wait for their
    // notice, which is tried again first at the next attempt.
    if !spool_success_notices(shared, &stored, &to_record, octets.head()).await {
        tracing::error!(queue_id = %id, "a success notice could not be spooled: the outcomes are held until it can be");
        shared.set_unrecorded(id, to_record);
        shared.return_plugin_session(plugins);
        shared.finish_attempt(id, &message, Some(now_ms() + first_retry_ms(shared)));
        return;
    }
    for event in &mut to_record {
        event.owed_notice = None;
    }
    let Some(removed) = persist(
        shared,
        id,
        envelope,
        &pending,
        &to_record,
        recorded_early.is_empty(),
    )
    .await
    else {
        // Nothing of this attempt is on disk. Delivering again would repeat what the next
        // hops already accepted, every retry for as long as the disk is full; so the
        // message is held, its outcomes kept in memory, and only the record is retried.
        tracing::error!(queue_id = %id, "delivery outcomes could not be recorded: the message is held, and nothing more is delivered until they are on disk");
        shared.set_unrecorded(id, to_record);
        shared.finish_attempt(id, &message, Some(now_ms() + first_retry_ms(shared)));
        return;
    };
    message.apply(&events);
    count_and_log(shared, id, envelope, &events, started, &classes);
    tell_plugins(shared, &mut plugins, id, envelope, &events, &gates).await;

    delay_notice(shared, &stored, &events, octets.head()).await;
    shared.return_plugin_session(plugins);
    if removed {
        shared.finish_removed(id);
    } else if let Some(key) = &parked_on {
        shared.finish_parked(id, key);
    } else {
        shared.finish_attempt(id, &message, next_due);
    }
}

/// The shaping policy of `destination`; provider rules need its MX hosts, looked up
/// (through the resolver's cache, which the delivery then uses too) only when there are
/// such rules.
async fn policy_of(shared: &Shared, destination: &Destination) -> Policy {
    let config = shared.config();
    let mx_hosts = match destination {
        Destination::Mx { domain } if shaping::wants_mx_hosts(&config) => {
            crate::outbound::lookup::mx_hosts(&shared.dns, domain, config.delivery.mx_port)
                .await
                .map(|hops| hops.into_iter().map(|hop| hop.name).collect())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    shaping::policy_for(&config, destination, &mx_hosts)
}

/// Lets the destination's reactions see what it answered ("slow down" replies suspend it
/// or lower its rates), logged and counted when they change something.
fn react(shared: &Shared, policy: &Policy, results: &[RecipientResult]) {
    if policy.react.is_empty() {
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    for result in results.iter().filter(|r| r.outcome != Outcome::Delivered) {
        // The reply as the server sent it, without the host name the result starts with.
        let reply = result
            .reply
            .split_once(": ")
            .map_or(result.reply.as_str(), |(_, reply)| reply);
        if seen.contains(&reply) {
            continue;
        }
        seen.push(reply);
        if let Some(change) = shared.destinations.react(policy, reply) {
            tracing::warn!(destination = %policy.key, policy = %policy.name, %reply, %change, "destination slowed down by its reply");
            shared
                .metrics
                .shaping_reactions
                .get_or_create(&crate::metrics::PolicyLabels {
                    policy: policy.name.to_string(),
                })
                .inc();
        }
    }
}

/// Writes the outcomes of an earlier attempt that could not be recorded then (see
/// `run`), before anything else is delivered; returns whether the attempt may go on. The
/// recipients they settle are then not delivered again (the attempt reads them back from
/// the log).
async fn record_held_outcomes(shared: &Arc<Shared>, id: QueueId) -> bool {
    let mut held = shared.take_unrecorded(id);
    if held.is_empty() {
        return true;
    }
    if held.iter().any(|e| e.owed_notice.is_some()) {
        // Deliveries held because their success notice could not be spooled: the notice
        // first, then the record (never the record without the notice).
        let spooled = match shared.load(id).await {
            Some(message) => {
                let head = message_head(shared, id, &message.stored).await;
                spool_success_notices(shared, &message.stored, &held, &head).await
            }
            None => false,
        };
        if !spooled {
            tracing::error!(queue_id = %id, "a success notice still cannot be spooled: the message stays held");
            shared.set_unrecorded(id, held);
            shared.schedule_retry(id, now_ms() + first_retry_ms(shared));
            return false;
        }
        for event in &mut held {
            event.owed_notice = None;
        }
    }
    let path = shared.state_path(id);
    let to_write = held.clone();
    let written = tokio::task::spawn_blocking(move || state::append(&path, &to_write)).await;
    match written {
        Ok(Ok(())) => {
            tracing::info!(queue_id = %id, outcomes = held.len(), "held delivery outcomes recorded at last: delivering again");
            true
        }
        failed => {
            if let Ok(Err(e)) = failed {
                tracing::error!(queue_id = %id, error = %e, "delivery outcomes still cannot be recorded: the message stays held");
            }
            shared.set_unrecorded(id, held);
            shared.schedule_retry(id, now_ms() + first_retry_ms(shared));
            false
        }
    }
}

/// Spools one success notice for the events that owe one; true when none is owed or it
/// is on disk.
async fn spool_success_notices(
    shared: &Arc<Shared>,
    stored: &crate::spool::StoredMessage,
    events: &[Event],
    head: &[u8],
) -> bool {
    let owed: Vec<(&Event, super::dsn::Action)> = events
        .iter()
        .filter_map(|e| e.owed_notice.map(|action| (e, action)))
        .collect();
    success(shared, stored, &owed, head).await != Report::Failed
}

/// The first retry interval, in milliseconds: how soon a failed record or bounce is
/// tried again.
fn first_retry_ms(shared: &Shared) -> u64 {
    u64::try_from(retry_delay(&shared.config().queue.retry_intervals, 1).as_millis())
        .unwrap_or(u64::MAX)
}

/// The header block of a queued message (what a DSN returns of it), empty if it cannot
/// be read.
pub(super) async fn message_head(
    shared: &Shared,
    id: QueueId,
    stored: &crate::spool::StoredMessage,
) -> Vec<u8> {
    read_body(shared, id, &stored.envelope, stored.message_len)
        .await
        .map(|octets| {
            let head = octets.head();
            head[..crate::spool::envelope::find_header_end(head)].to_vec()
        })
        .unwrap_or_default()
}

/// Opens a queued message for sending, its header edits applied, off the runtime (a large
/// body stays in the spool file and is read as it is sent); `None` (logged) when it
/// cannot be read, and the attempt is to be retried.
async fn read_body(
    shared: &Shared,
    id: QueueId,
    envelope: &Envelope,
    message_len: u64,
) -> Option<MessageOctets> {
    let path = shared.message_path(id);
    let edits = envelope.header_edits.clone();
    let read =
        tokio::task::spawn_blocking(move || MessageOctets::open(&path, message_len, &edits)).await;
    match read {
        Ok(Ok(message)) => Some(message),
        Ok(Err(e)) => {
            tracing::error!(queue_id = %id, error = %e, "cannot read a queued message; will retry");
            None
        }
        Err(_) => None,
    }
}

/// Turns this attempt's results into state-log events: a deferral past the message's
/// lifetime becomes a bounce, any other is given its next attempt. Also returns when the
/// earliest of those is due.
fn outcomes(
    shared: &Shared,
    envelope: &Envelope,
    pending: &[(usize, u32)],
    results: Vec<RecipientResult>,
) -> (Vec<Event>, Option<u64>) {
    let attempts: BTreeMap<usize, u32> = pending.iter().copied().collect();
    let now = SystemTime::now();
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expired = now_secs
        .saturating_sub(envelope.received_at)
        .saturating_mul(1000)
        >= u64::try_from(shared.config().queue.max_lifetime.0.as_millis()).unwrap_or(u64::MAX);
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
                    let delay = retry_delay(&shared.config().queue.retry_intervals, attempt);
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
                owed_notice: result
                    .success
                    .filter(|_| result.outcome == Outcome::Delivered)
                    .filter(|_| envelope.recipients[result.rcpt].notify().success),
                remote: result.remote,
            }
        })
        .collect();
    (events, next_due)
}

/// Records at once the recipients of one destination that were delivered, before the
/// attempt goes on to the next; returns those recorded (none if the log cannot be
/// written: they are then recorded, or held, with the rest at the end of the attempt).
async fn record_delivered(
    shared: &Arc<Shared>,
    id: QueueId,
    stored: &crate::spool::StoredMessage,
    head: &[u8],
    pending: &[(usize, u32)],
    results: &[RecipientResult],
) -> Vec<usize> {
    let envelope = &stored.envelope;
    let delivered: Vec<RecipientResult> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Delivered)
        .cloned()
        .collect();
    if delivered.is_empty() {
        return Vec::new();
    }
    let (mut events, _) = outcomes(shared, envelope, pending, delivered);
    if !spool_success_notices(shared, stored, &events, head).await {
        // Recorded at the end of the attempt with the rest, once the notice is spooled.
        return Vec::new();
    }
    for event in &mut events {
        event.owed_notice = None;
    }
    let path = shared.state_path(id);
    let to_write = events.clone();
    match tokio::task::spawn_blocking(move || state::append(&path, &to_write)).await {
        Ok(Ok(())) => events.iter().map(|e| e.rcpt).collect(),
        Ok(Err(e)) => {
            tracing::warn!(queue_id = %id, error = %e, "cannot record deliveries yet; trying again at the end of the attempt");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Makes this attempt's outcomes durable, either by removing a finished message or by
/// appending to its state log. Returns whether the message was removed, or `None` when
/// nothing is on disk and the attempt must be repeated. `may_skip_log`: nothing of this
/// attempt is in the state log yet, so a first attempt that settles every recipient may
/// record itself by removing the message.
async fn persist(
    shared: &Shared,
    id: QueueId,
    envelope: &Envelope,
    pending: &[(usize, u32)],
    events: &[Event],
    may_skip_log: bool,
) -> Option<bool> {
    // A first attempt that settles every recipient needs no state log: removing the
    // message (durably, in the spool's next group commit) is the record that it is done,
    // and a crash before that repeats the attempt exactly as a crash before a log append
    // would. This saves a file creation, an fdatasync and an unlink per message.
    let first_and_final = may_skip_log
        && pending.len() == envelope.recipients.len()
        && pending.iter().all(|&(_, attempts)| attempts == 0)
        && events.len() == pending.len()
        && events.iter().all(|e| e.outcome != Outcome::Deferred);
    let removed = first_and_final
        && {
            match shared.spool.remove(id).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(queue_id = %id, error = %e, "cannot remove a finished message; recording its state instead");
                    false
                }
            }
        };
    let recorded = if removed {
        Ok(Ok(()))
    } else {
        let path = shared.state_path(id);
        let to_write = events.to_vec();
        tokio::task::spawn_blocking(move || state::append(&path, &to_write)).await
    };
    match recorded {
        Ok(Ok(())) => Some(removed),
        Ok(Err(e)) => {
            // Without a durable record the outcomes may be repeated; retry later rather
            // than act on what is not on disk.
            tracing::error!(queue_id = %id, error = %e, "cannot write the state log; will retry");
            None
        }
        Err(_) => None,
    }
}

/// Counts each outcome in the metrics, logs it and emits its delivery event.
fn count_and_log(
    shared: &Shared,
    id: QueueId,
    envelope: &Envelope,
    events: &[Event],
    started: std::time::Instant,
    classes: &[(usize, &'static str)],
) {
    let duration = started.elapsed();
    let metrics = &shared.metrics;
    for event in events {
        let outcome = match event.outcome {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Deleted => "deleted",
        };
        shared
            .metrics
            .deliveries
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        let class = classes
            .iter()
            .find(|(r, _)| *r == event.rcpt)
            .map_or("none", |(_, c)| c);
        metrics
            .delivery_attempts
            .get_or_create(&crate::metrics::AttemptLabels { outcome, class })
            .inc();
        match event.outcome {
            Outcome::Delivered => {
                let waited = event.at.saturating_sub(envelope.received_at);
                metrics.delivery_latency.observe(waited as f64);
            }
            Outcome::Bounced => {
                let code = event
                    .status
                    .as_deref()
                    .and_then(|s| s.rsplit_once('.').map(|(class, _)| class.to_owned()))
                    .unwrap_or_else(|| "none".to_owned());
                metrics
                    .bounces
                    .get_or_create(&crate::metrics::BounceLabels { code })
                    .inc();
            }
            _ => {}
        }
        let address = &envelope.recipients[event.rcpt].address;
        let failure = failure_class(event);
        if let Some(failure) = failure {
            let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
            shared.note_error(domain, &event.reply);
            metrics
                .delivery_failures
                .get_or_create(&crate::metrics::FailureLabels {
                    outcome,
                    class: failure.as_str(),
                })
                .inc();
        }
        let class_name = failure.map_or("", FailureClass::as_str);
        tracing::info!(queue_id = %id, recipient = %address, outcome = ?event.outcome, class = class_name, attempt = event.attempt, remote = event.remote.as_deref().unwrap_or(""), duration_ms = duration.as_millis() as u64, reply = %event.reply, "delivery attempt");
        let mut delivery = crate::events::Delivery::new(address.clone(), event.attempt, duration)
            .reply(event.reply.clone(), event.status.clone());
        if let Some(failure) = failure {
            delivery = delivery.class(failure.as_str());
        }
        if let Some(remote) = &event.remote {
            delivery = delivery.host(remote.clone());
        }
        use crate::events::Event as Fact;
        shared.events.emit(match event.outcome {
            Outcome::Delivered => Fact::delivered(id, delivery),
            Outcome::Deferred => Fact::deferred(id, delivery),
            Outcome::Bounced if event.status.as_deref() == Some("4.4.7") => {
                Fact::expired(id, vec![address.clone()])
            }
            Outcome::Bounced => Fact::bounced(id, delivery),
            Outcome::Deleted => Fact::deleted(id, "the queue"),
        });
    }
}

/// The class of a deferral or bounce (`None` for a delivery or an operator's deletion).
fn failure_class(event: &Event) -> Option<FailureClass> {
    matches!(event.outcome, Outcome::Deferred | Outcome::Bounced)
        .then(|| classify(event.status.as_deref(), &event.reply))
}

/// Tells the on-delivery plugins each outcome, once it is recorded: like the rest of the
/// queue, they hear of nothing that is not on disk.
async fn tell_plugins(
    shared: &Shared,
    plugins: &mut SessionPlugins,
    id: QueueId,
    envelope: &Envelope,
    events: &[Event],
    gates: &[(usize, String)],
) {
    if plugins.has(w::Hooks::DELIVERY) {
        for event in events {
            let info = w::DeliveryInfo {
                queue_id: id.to_string(),
                recipient: envelope.recipients[event.rcpt].address.clone(),
                status: match event.outcome {
                    Outcome::Delivered => w::DeliveryStatus::Delivered,
                    Outcome::Deferred => w::DeliveryStatus::Deferred,
                    Outcome::Bounced | Outcome::Deleted => w::DeliveryStatus::Bounced,
                },
                reply: event.reply.clone(),
                attempt: event.attempt,
            };
            let destination = gates
                .iter()
                .find(|(r, _)| *r == event.rcpt)
                .map_or_else(String::new, |(_, key)| key.clone());
            let (policy, closed, rate_percent) = shared
                .destinations
                .facts(&destination)
                .unwrap_or_else(|| ("built-in".to_owned(), None, 100));
            let facts = w::OutcomeFacts {
                failure_class: failure_class(event).map(|c| c.as_str().to_owned()),
                enhanced: event.status.clone(),
                destination,
                policy,
                closed,
                rate_percent,
            };
            plugins.delivery(&info, facts).await;
        }
    }
}
