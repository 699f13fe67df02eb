//! Fuzz target: the per-recipient state log replay (`queue::state::parse`, what
//! `queue::state::replay` runs on `state/<ID>` at start-up) and the append framing
//! (`queue::state::encode_append`).
//!
//! Properties: no panic, whatever the log holds (a torn or garbled line is skipped);
//! appending an event to any log, as `append` does, makes replay return the old events
//! followed by the new one: nothing written before can hide it, and it hides nothing.

use tidegate::queue::state::{Event, Outcome, encode_append, parse};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(old) = parse(data) else {
            return;
        };
        for event in &old {
            let line = serde_json::to_vec(event).unwrap_or_default();
            let again = parse(&line[..]).unwrap_or_default();
            assert_eq!(
                again.as_slice(),
                std::slice::from_ref(event),
                "event does not round-trip"
            );
        }
        let new = Event {
            rcpt: old.len(),
            outcome: Outcome::Delivered,
            attempt: 1,
            at: 1,
            next: None,
            reply: "250 2.0.0 ok".into(),
            status: None,
            remote: None,
            owed_notice: None,
        };
        let Ok(tail) = encode_append(data.last().copied(), std::slice::from_ref(&new)) else {
            return;
        };
        let mut log = data.to_vec();
        log.extend_from_slice(&tail);
        let replayed = parse(&log[..]).unwrap_or_default();
        let mut expected = old.clone();
        expected.push(new);
        assert_eq!(replayed, expected, "an append changed what replay sees");
    });
}
