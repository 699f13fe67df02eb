//! Per-recipient delivery state: an append-only log beside each message
//! (`<spool>/state/<ID>`), one JSON line per outcome, fdatasynced before the queue acts on
//! it (and the directory fsynced when the log is created, so the file itself survives a
//! power cut). Recovery replays the log; a torn line (a crash mid-append) is skipped,
//! which only means that outcome is learnt again by the next attempt, and never hides the
//! lines after it: an append after a torn tail starts on a line of its own.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The next hop accepted it (or the local transport stored it): final.
    Delivered,
    /// A temporary failure: retried at `next`.
    Deferred,
    /// A permanent failure (or expiry): final, a DSN goes to the sender.
    Bounced,
    /// Deleted by the operator without a DSN: final.
    Deleted,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The recipient's index in the envelope.
    pub rcpt: usize,
    /// What happened.
    pub outcome: Outcome,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// When, in seconds since the epoch.
    pub at: u64,
    /// The next attempt, for a deferral (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// The remote reply or local reason.
    pub reply: String,
    /// The RFC 3463 status for a DSN, e.g. `5.1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The host that answered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// A success notice (NOTIFY=SUCCESS) still owed for this delivery: it must be spooled
    /// before the event is recorded. Never written: once recorded, it was spooled.
    #[serde(skip)]
    pub owed_notice: Option<super::dsn::Action>,
}

/// Appends events and makes them durable.
pub fn append(path: &Path, events: &[Event]) -> std::io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let existed = path.exists();
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // A torn last line (no newline) must not swallow the first event appended after it.
    let len = file.metadata()?.len();
    let mut last = None;
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut byte = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut byte)?;
        last = Some(byte[0]);
    }
    let text = encode_append(last, events)?;
    file.write_all(&text)?;
    file.sync_data()?;
    if !existed && let Some(dir) = path.parent() {
        // The new file's directory entry is durable only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads every complete event of a log (none if it does not exist).
pub fn replay(path: &Path) -> std::io::Result<Vec<Event>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    parse(std::io::BufReader::new(file))
}

/// Reads every complete event from the text of a log; a line that does not parse is a torn
/// one: skipped, and reading goes on. [`replay`] runs it on the file; it is public for
/// fuzzing (`fuzz/`), which runs it on bytes.
pub fn parse(log: impl BufRead) -> std::io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for line in log.split(b'\n') {
        let line = line?;
        if let Ok(event) = serde_json::from_slice::<Event>(&line) {
            events.push(event);
        }
    }
    Ok(events)
}

/// The bytes [`append`] adds to a log whose last byte is `last` (`None` when it is empty):
/// one JSON line per event, after a line ending of its own when the log ends in a torn
/// line. Public for fuzzing (`fuzz/`): whatever a log holds, [`parse`] of it with these
/// bytes appended must give its old events followed by the new ones.
pub fn encode_append(last: Option<u8>, events: &[Event]) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::with_capacity(events.len() * 128 + 1);
    if last.is_some_and(|b| b != b'\n') {
        text.push(b'\n');
    }
    for event in events {
        serde_json::to_writer(&mut text, event)?;
        text.push(b'\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rcpt: usize, outcome: Outcome) -> Event {
        Event {
            rcpt,
            outcome,
            attempt: 1,
            at: 1,
            next: None,
            reply: "250 ok".into(),
            status: None,
            remote: None,
            owed_notice: None,
        }
    }

    #[test]
    fn appends_replay_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert!(replay(&path).unwrap().is_empty());
        append(&path, &[event(0, Outcome::Delivered)]).unwrap();
        append(
            &path,
            &[event(1, Outcome::Deferred), event(2, Outcome::Bounced)],
        )
        .unwrap();
        let mut file = std::fs::File::options().append(true).open(&path).unwrap();
        file.write_all(b"{\"rcpt\":3,\"outc").unwrap();
        let events = replay(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2], event(2, Outcome::Bounced));
    }

    #[test]
    fn events_after_a_torn_line_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, &[event(0, Outcome::Delivered)]).unwrap();
        let mut file = std::fs::File::options().append(true).open(&path).unwrap();
        file.write_all(b"{\"rcpt\":3,\"outc").unwrap();
        // The next append starts on a line of its own, and replay reads past the tear.
        append(&path, &[event(1, Outcome::Delivered)]).unwrap();
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"garbage\n")
            .unwrap();
        append(&path, &[event(2, Outcome::Bounced)]).unwrap();
        let events = replay(&path).unwrap();
        assert_eq!(
            events,
            [
                event(0, Outcome::Delivered),
                event(1, Outcome::Delivered),
                event(2, Outcome::Bounced)
            ]
        );
    }

    #[test]
    fn an_append_after_any_tail_is_read_back_after_the_old_events() {
        let old = encode_append(None, &[event(0, Outcome::Deferred)]).unwrap();
        for tail in [
            &b""[..],
            b"{\"rcpt\":3,\"outc",
            b"garbage\n",
            b"\n\n",
            b"\r",
        ] {
            let mut log = old.clone();
            log.extend_from_slice(tail);
            let appended = encode_append(log.last().copied(), &[event(1, Outcome::Bounced)]);
            log.extend_from_slice(&appended.unwrap());
            assert_eq!(
                parse(&log[..]).unwrap(),
                [event(0, Outcome::Deferred), event(1, Outcome::Bounced)],
                "{tail:?}"
            );
        }
    }

    /// The fuzz target's seeds (`fuzz/corpus/state_log/`) must stay logs replay reads.
    #[test]
    fn the_fuzz_seed_state_logs_replay() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/state_log");
        assert_eq!(replay(&dir.join("log")).unwrap().len(), 3);
        // A torn first line, then the whole log, then a torn tail.
        assert_eq!(replay(&dir.join("torn-middle")).unwrap().len(), 3);
    }
}
