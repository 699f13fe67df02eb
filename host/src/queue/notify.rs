//! Notifications to the sender: a bounce for recipients that failed for good, a delay
//! notice for mail that has waited too long. Each is a DSN ([`super::dsn`]) spooled as a
//! new message from the null sender: the queue delivers and retries it like any other, and
//! a DSN that fails is never bounced in turn.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dsn::{Action, DsnInput, FailedRecipient, build_dsn};
use super::state::{Event, Outcome};
use super::{Shared, now_ms};
use crate::spool::StoredMessage;
use crate::spool::envelope::Envelope;

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

/// Sends one DSN to the sender for the recipients that bounced in this attempt. Never to
/// the null sender: a bounce of a bounce is logged and dropped.
pub(super) async fn bounce(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    bounced: &[&Event],
    message: &[u8],
) -> Report {
    report(shared, stored, bounced, message, Action::Failed).await
}

/// Sends a DSN of kind `action` about `events` to the sender.
async fn report(
    shared: &Arc<Shared>,
    stored: &StoredMessage,
    bounced: &[&Event],
    message: &[u8],
    action: Action,
) -> Report {
    let envelope = &stored.envelope;
    let Some(sender) = envelope.sender.clone() else {
        if action == Action::Failed {
            for event in bounced {
                tracing::warn!(queue_id = %stored.id, recipient = %envelope.recipients[event.rcpt].address, reply = %event.reply, "double bounce dropped (the sender is <>)");
            }
        }
        return Report::NotOwed;
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
    let hostname = shared.config().hostname.to_string();
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
    let deferred: Vec<&Event> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Deferred)
        .collect();
    let marker = shared.delay_marker(stored.id);
    if deferred.is_empty() || marker.exists() {
        return;
    }
    if report(shared, stored, &deferred, message, Action::Delayed).await == Report::Spooled
        && let Err(e) = std::fs::write(&marker, b"")
    {
        tracing::warn!(queue_id = %stored.id, error = %e, "cannot remember the delay notice");
    }
}
