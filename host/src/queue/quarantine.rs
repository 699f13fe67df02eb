//! Quarantine: a message a plugin quarantined is moved to `<spool>/quarantine/` instead of
//! being delivered, and its recipients are recorded as final, so the queue neither
//! delivers it nor retries it.

use std::sync::Arc;

use super::message::Message;
use super::state::{Event, Outcome};
use super::{Shared, now_ms};
use crate::spool::QueueId;

/// Moves a quarantined message out of the queue's way and finalises its recipients.
pub(super) fn quarantine(
    shared: &Arc<Shared>,
    id: QueueId,
    message: &mut Message,
    pending: &[(usize, u32)],
    reason: &str,
) {
    let dir = shared.spool_dir.join("quarantine");
    let moved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::rename(shared.message_path(id), dir.join(id.to_string())));
    if let Err(e) = moved {
        tracing::error!(queue_id = %id, error = %e, "cannot move a message into quarantine");
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
            owed_notice: None,
        })
        .collect();
    if let Err(e) = shared.record(id, message, &events) {
        tracing::error!(queue_id = %id, error = %e, "cannot record the quarantine");
    }
    tracing::info!(queue_id = %id, %reason, "message quarantined");
    shared
        .events
        .emit(crate::events::Event::quarantined(id, reason));
}
