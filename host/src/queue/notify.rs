//! Notifications to the sender: a bounce for recipients that failed for good, a delay
//! notice for mail that has waited too long, and a success notice for recipients whose
//! sender asked for one (NOTIFY=SUCCESS, RFC 3461). What each recipient's NOTIFY allows is
//! honoured here: no failure notice without FAILURE, no delay notice without DELAY, none
//! at all with NEVER (absent NOTIFY means FAILURE and DELAY). Each is a DSN ([`super::dsn`]) spooled as a
//! new message from the null sender: the queue delivers and retries it like any other, and
//! a DSN that fails is never bounced in turn.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dsn::{Action, DsnInput, FailedRecipient, build_dsn};
use super::state::{Event, Outcome};
use super::{Shared, now_ms};
use crate::spool::StoredMessage;
use crate::spool::dsn_params::Ret;
use crate::spool::envelope::{Envelope, Param};

/// What became of a DSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// Spooled: it will be delivered like any message.
    Spooled,
    /// None is owed (the sender is `<>`).
    NotOwed,
    /// It could not be spooled (a full disk, an I/O error): nothing was sent.
    Failed,
}

/// Sends one DSN to the sender for the recipients that bounced in this attempt and whose
/// NOTIFY asks for failures. Never to the null sender: a bounce of a bounce is logged and
/// dropped. `whole`: `message` is the whole message, so RET=FULL can be honoured.
pub(super) async fn bounce(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    bounced: &[&Event],
    message: &[u8],
    whole: bool,
) -> Report {
    let envelope = &stored.envelope;
    let wanted: Vec<(&Event, Action)> = bounced
        .iter()
        .filter(|e| {
            let asked = envelope.recipients[e.rcpt].notify().failure;
            if !asked {
                tracing::info!(queue_id = %stored.id, recipient = %envelope.recipients[e.rcpt].address, "no failure notice: NOTIFY does not ask for one");
            }
            asked
        })
        .map(|e| (*e, Action::Failed))
        .collect();
    if wanted.is_empty() {
        return Report::NotOwed;
    }
    // RFC 8689 §4.3 (a REQUIRETLS message's notice travels over channels no better than
    // the sender asked for the message itself): its body is never returned.
    let full = whole && envelope.ret() == Some(Ret::Full) && !envelope.requiretls();
    report(shared, stored, &wanted, message, full).await
}

/// Sends one success notice ("delivered", or "relayed" to a next hop without DSN) for
/// recipients whose NOTIFY asks for it (the caller picks them).
pub(super) async fn success(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    delivered: &[(&Event, Action)],
    message: &[u8],
) -> Report {
    if delivered.is_empty() {
        return Report::NotOwed;
    }
    report(shared, stored, delivered, message, false).await
}

/// Sends a DSN about `events` (each with its action) to the sender; `full` returns the
/// whole message rather than its header block.
async fn report(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    bounced: &[(&Event, Action)],
    message: &[u8],
    full: bool,
) -> Report {
    let envelope = &stored.envelope;
    let action = bounced.first().map_or(Action::Failed, |(_, a)| *a);
    let Some(sender) = envelope.sender.clone() else {
        if action == Action::Failed {
            for (event, _) in bounced {
                tracing::warn!(queue_id = %stored.id, recipient = %envelope.recipients[event.rcpt].address, reply = %event.reply, "double bounce dropped (the sender is <>)");
            }
        }
        return Report::NotOwed;
    };
    let now = SystemTime::now();
    let failed: Vec<FailedRecipient> = bounced
        .iter()
        .map(|&(event, action)| FailedRecipient {
            address: envelope.recipients[event.rcpt].address.clone(),
            original: envelope.recipients[event.rcpt].orcpt().map(str::to_owned),
            action,
            status: event.status.clone().unwrap_or_else(|| match action {
                Action::Failed => "5.0.0".into(),
                Action::Delayed => "4.0.0".into(),
                Action::Delivered | Action::Relayed => "2.0.0".into(),
            }),
            remote_mta: event.remote.clone(),
            diagnostic: Some(format!("smtp; {}", event.reply)),
            last_attempt: now,
        })
        .collect();
    let hostname = shared.config().hostname.to_string();
    let dsn = build_dsn(&DsnInput {
        reporting_mta: &hostname,
        original: envelope,
        original_message: message,
        return_full: full,
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
        // RFC 8689 §4.3: a notice about a REQUIRETLS message is sent with REQUIRETLS.
        // Its own notices are never asked for (NOTIFY=NEVER is implied for `<>`).
        mail_params: if envelope.requiretls() {
            vec![Param {
                keyword: "REQUIRETLS".into(),
                value: None,
            }]
        } else {
            Vec::new()
        },
        recipients: vec![crate::spool::envelope::Recipient {
            address: sender.clone(),
            params: Vec::new(),
        }],
        // A returned 8-bit message makes the report 8-bit too.
        body: if full {
            envelope.body
        } else {
            crate::spool::envelope::BodyType::SevenBit
        },
        smtputf8: envelope.smtputf8,
        client: envelope.client.clone(),
        size: dsn.len() as u64,
        header_edits: Vec::new(),
        tags: BTreeMap::new(),
        quarantine: None,
    };
    match shared.inject(dsn_envelope, &dsn).await {
        Ok(dsn_id) => {
            tracing::info!(queue_id = %stored.id, dsn = %dsn_id, to = %sender, recipients = failed.len(), kind = ?action, "delivery status notification sent");
            Report::Spooled
        }
        Err(e) => {
            tracing::error!(queue_id = %stored.id, error = %e, "cannot spool a delivery status notification");
            Report::Failed
        }
    }
}

/// Sends one delay notice per message, once it has waited `delay_notice_after`, for the
/// recipients still deferred. A marker file beside the state log remembers it was sent
/// (a crash before the marker is written can repeat a notice, never lose one).
pub(super) async fn delay_notice(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    events: &[Event],
    message: &[u8],
) {
    let Some(after) = shared.config().queue.delay_notice_after else {
        return;
    };
    let waited = now_ms() / 1000 - stored.envelope.received_at.min(now_ms() / 1000);
    if waited < after.0.as_secs() {
        return;
    }
    let deferred: Vec<(&Event, Action)> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Deferred)
        .filter(|e| stored.envelope.recipients[e.rcpt].notify().delay)
        .map(|e| (e, Action::Delayed))
        .collect();
    let marker = shared.delay_marker(stored.id);
    if deferred.is_empty() || marker.exists() {
        return;
    }
    if report(shared, stored, &deferred, message, false).await == Report::Spooled
        && let Err(e) = std::fs::write(&marker, b"")
    {
        tracing::warn!(queue_id = %stored.id, error = %e, "cannot remember the delay notice");
    }
}
