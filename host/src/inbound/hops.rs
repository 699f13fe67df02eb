//! Hop counting: how many `Received:` fields a message arrived with.
//!
//! Every MTA a message passes through adds a `Received:` field, so a message that
//! circulates between misconfigured servers (an MX pointing back at a relay that routes
//! the domain back to the MX) gathers them without end. Counting them and refusing a
//! message over a limit (RFC 5321 §6.3, Postfix's `hopcount_limit`) breaks such a loop
//! wherever it runs, even where the next-hop checks in the queue cannot see it.
//!
//! The counter is fed the message as it is stored (after dot-unstuffing), in pieces split
//! anywhere, and keeps a few bytes of state: it looks only at the header section, up to
//! the first empty line.

/// The longest field-name prefix worth keeping: `received`, optional white space, `:`.
const PREFIX: usize = 16;

/// Counts `Received:` header fields in a message fed to it piece by piece.
#[derive(Debug, Clone)]
pub struct HopCounter {
    /// The first bytes of the current line (enough to recognise the field name).
    prefix: [u8; PREFIX],
    /// How many bytes of the current line have been seen (saturating).
    len: usize,
    /// The header section has ended (an empty line): nothing more to count.
    done: bool,
    count: u32,
}

impl Default for HopCounter {
    fn default() -> Self {
        HopCounter {
            prefix: [0; PREFIX],
            len: 0,
            done: false,
            count: 0,
        }
    }
}

impl HopCounter {
    /// A counter at the start of a message.
    pub fn new() -> Self {
        HopCounter::default()
    }

    /// Looks at the next bytes of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !self.done && !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.take(&rest[..i]);
                    self.end_of_line();
                    rest = &rest[i + 1..];
                }
                None => {
                    self.take(rest);
                    rest = &[];
                }
            }
        }
    }

    /// The `Received:` fields counted so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < PREFIX {
                self.prefix[self.len] = b;
            }
            self.len = self.len.saturating_add(1);
        }
    }

    fn end_of_line(&mut self) {
        let seen = &self.prefix[..self.len.min(PREFIX)];
        let line = seen.strip_suffix(b"\r").unwrap_or(seen);
        if self.len == 0 || (self.len == 1 && line.is_empty()) {
            // The empty line that ends the header section.
            self.done = true;
        } else if is_received(line) {
            self.count = self.count.saturating_add(1);
        }
        self.len = 0;
    }
}

/// Whether a header line starts the `Received` field: the name in any case, then
/// optional white space (the obsolete syntax of RFC 5322 §4.5), then a colon. Folded
/// continuation lines start with white space, so they never match.
fn is_received(line: &[u8]) -> bool {
    const NAME: &[u8] = b"received";
    let Some(head) = line.get(..NAME.len()) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(NAME) {
        return false;
    }
    line[NAME.len()..]
        .iter()
        .find(|&&b| b != b' ' && b != b'\t')
        .is_some_and(|&b| b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(message: &[u8]) -> u32 {
        let mut counter = HopCounter::new();
        counter.feed(message);
        counter.count()
    }

    #[test]
    fn received_fields_are_counted_in_the_header_only() {
        let message = b"Received: from a\r\n\tby b; date\r\nRECEIVED : x\r\nreceived:y\r\n\
            Subject: hi\r\nX-Received: no\r\nReceivedX: no\r\n\r\nReceived: in the body\r\n";
        assert_eq!(count(message), 3);
    }

    #[test]
    fn the_count_does_not_depend_on_how_the_message_is_split() {
        let mut message = Vec::new();
        for n in 0..60 {
            message.extend_from_slice(format!("Received: from hop{n}\r\n\tby x;\r\n").as_bytes());
        }
        message.extend_from_slice(b"Subject: s\r\n\r\nReceived: body\r\n");
        assert_eq!(count(&message), 60);
        for step in [1, 2, 3, 7, 64] {
            let mut counter = HopCounter::new();
            for piece in message.chunks(step) {
                counter.feed(piece);
            }
            assert_eq!(counter.count(), 60, "pieces of {step}");
        }
    }

    #[test]
    fn bare_line_feeds_end_lines_too() {
        assert_eq!(count(b"Received: a\nReceived: b\n\nReceived: c\n"), 2);
    }

    #[test]
    fn a_message_without_a_header_counts_nothing() {
        assert_eq!(count(b"\r\nReceived: a\r\n"), 0);
        assert_eq!(count(b""), 0);
    }
}
