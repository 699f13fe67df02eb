//! Decoding of message data as received after `DATA` or inside `BDAT` chunks.
//!
//! The session hands over whatever the network delivered, split anywhere, and
//! gets back the bytes to store. Nothing here buffers the message: state that
//! straddles a split is a handful of flags and counters, so feeding one byte at
//! a time gives exactly the same result as feeding everything at once.
//!
//! Problems are recorded as [`Violations`] instead of being returned as errors,
//! because the session has to read to the end of the data anyway before it can
//! reply (RFC 5321 §4.1.1.4, RFC 3030 §2).
//!
//! SMTP smuggling: only CR LF counts as a line ending when looking for the
//! `DATA` terminator or for a dot to unstuff. A bare LF or bare CR never puts
//! the reader at a line start, whatever the [`BareLineEndings`] policy says
//! about how to store it, so `<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>` and
//! friends are never mistaken for the end of the message.

use memchr::memchr2;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// What to do with a bare LF (not preceded by CR) or a bare CR (not followed
/// by LF) in message data.
///
/// Either way the byte after a bare line ending is not at a line start, so a
/// `.` there is neither unstuffed nor the start of a `DATA` terminator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Store the bytes as they came and record
    /// [`Violations::bare_line_ending`]; the session should reject the message.
    #[default]
    Reject,
    /// Store CR LF in place of each bare CR or bare LF and record nothing.
    /// The stored message may then hold `CR LF .` that came from `LF .`; that
    /// is harmless because the outbound side dot-stuffs what it sends.
    Normalize,
}

/// Problems seen in the data so far. Recorded rather than returned, so the
/// session can drain the data before it replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Violations {
    /// A bare CR or bare LF was seen under [`BareLineEndings::Reject`].
    pub bare_line_ending: bool,
    /// A line held more than `max_line` octets, not counting its line ending
    /// nor a stuffing dot (RFC 5321 §4.5.3.1.6). Bare line endings end a line
    /// for this count, as they do in what `Normalize` stores.
    pub line_too_long: bool,
}

impl Violations {
    /// Whether anything at all was recorded.
    #[must_use]
    pub fn any(&self) -> bool {
        self.bare_line_ending || self.line_too_long
    }
}

/// Where decoded bytes go: `None` discards them (the caller went over its
/// size limit and only needs the data drained), but they are still counted.
type Out<'a, 'b> = &'a mut Option<&'b mut Vec<u8>>;

/// Line-ending policy and line-length accounting shared by [`DotReader`] and
/// [`ChunkScanner`]. Knows nothing about dots.
#[derive(Debug, Clone)]
struct Lines {
    policy: BareLineEndings,
    max_line: usize,
    /// Octets of the current line so far. Bare line endings reset it too,
    /// since under `Normalize` they become real line breaks in what is stored
    /// (and under `Reject` the message is refused anyway).
    line_len: usize,
    /// The last byte seen was a CR that has already been written out; whether
    /// it was bare depends on the next byte, which has not arrived yet.
    cr_pending: bool,
    violations: Violations,
    octets: u64,
}

impl Lines {
    fn new(policy: BareLineEndings, max_line: usize) -> Self {
        Self {
            policy,
            max_line,
            line_len: 0,
            cr_pending: false,
            violations: Violations::default(),
            octets: 0,
        }
    }

    #[inline]
    fn put(&mut self, out: Out<'_, '_>, bytes: &[u8]) {
        self.octets += bytes.len() as u64;
        if let Some(buf) = out.as_deref_mut() {
            buf.extend_from_slice(bytes);
        }
    }

    /// Accounts for `n` octets of line content.
    #[inline]
    fn text(&mut self, n: usize) {
        self.line_len = self.line_len.saturating_add(n);
        if self.line_len > self.max_line {
            self.violations.line_too_long = true;
        }
    }

    /// Records a bare line ending. Writing its bytes (or the CR LF replacing
    /// them) is left to the caller, which knows what it has already copied.
    #[inline]
    fn bare(&mut self) {
        self.line_len = 0;
        if self.policy == BareLineEndings::Reject {
            self.violations.bare_line_ending = true;
        }
    }

    /// A bare CR that the caller has NOT written yet (the `DATA` reader holds
    /// back the CR of `.` CR until it knows whether LF follows).
    fn bare_cr_unwritten(&mut self, out: Out<'_, '_>) {
        self.bare();
        match self.policy {
            BareLineEndings::Reject => self.put(out, b"\r"),
            BareLineEndings::Normalize => self.put(out, b"\r\n"),
        }
    }

    /// Resolves a pending CR when the data ends for good.
    fn finish(&mut self, out: Out<'_, '_>) {
        if self.cr_pending {
            self.cr_pending = false;
            self.bare();
            if self.policy == BareLineEndings::Normalize {
                self.put(out, b"\n");
            }
        }
    }

    /// Scans `input[pos..]` as line content and line endings, writing what is
    /// to be stored. Runs of bytes that are stored unchanged are copied with
    /// one `extend_from_slice` each, so in the common case (no bare endings,
    /// no dots at line starts) a whole input is copied in one go.
    ///
    /// With `DOTS` the scan stops at a line start (after a proper CR LF) when
    /// the input ends there or the next byte is `.`, because only the `DATA`
    /// reader knows what a dot there means. It returns the position reached and
    /// whether that position is a line start.
    #[inline]
    fn scan<const DOTS: bool>(
        &mut self,
        input: &[u8],
        mut pos: usize,
        out: Out<'_, '_>,
    ) -> (usize, bool) {
        // Start of the bytes from `input` not yet written.
        let mut run = pos;
        if self.cr_pending {
            let Some(&b) = input.get(pos) else {
                return (pos, false);
            };
            self.cr_pending = false;
            if b == LF {
                // The CR went out with the previous input; the LF joins the
                // run.
                self.line_len = 0;
                pos += 1;
                if DOTS && input.get(pos).is_none_or(|&b| b == b'.') {
                    self.put(out, &input[run..pos]);
                    return (pos, true);
                }
            } else {
                self.bare();
                if self.policy == BareLineEndings::Normalize {
                    self.put(out, b"\n");
                }
            }
        }
        loop {
            let Some(k) = memchr2(CR, LF, &input[pos..]) else {
                self.text(input.len() - pos);
                self.put(out, &input[run..]);
                return (input.len(), false);
            };
            self.text(k);
            let at = pos + k;
            if input[at] == LF {
                self.bare();
                pos = at + 1;
                if self.policy == BareLineEndings::Normalize {
                    self.put(out, &input[run..at]);
                    self.put(out, b"\r\n");
                    run = pos;
                }
                continue;
            }
            match input.get(at + 1) {
                None => {
                    // Store the CR now: it is stored under either policy and
                    // either outcome, so only the follow-up is left to decide.
                    self.cr_pending = true;
                    self.put(out, &input[run..]);
                    return (input.len(), false);
                }
                Some(&LF) => {
                    self.line_len = 0;
                    pos = at + 2;
                    if DOTS && input.get(pos).is_none_or(|&b| b == b'.') {
                        self.put(out, &input[run..pos]);
                        return (pos, true);
                    }
                }
                Some(_) => {
                    self.bare();
                    pos = at + 1;
                    if self.policy == BareLineEndings::Normalize {
                        self.put(out, &input[run..pos]);
                        self.put(out, b"\n");
                        run = pos;
                    }
                }
            }
        }
    }
}

/// Result of one [`DotReader::feed`].
#[must_use = "bytes past `consumed` belong to the next command"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes that belonged to the message data, terminator included.
    /// Less than the input length only when `complete`: the rest is the next
    /// pipelined command.
    pub consumed: usize,
    /// The terminator has been seen; the message is complete.
    pub complete: bool,
}

/// Where the `DATA` reader is relative to the start of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// After a proper CR LF (or at the very start of the data).
    LineStart,
    /// A `.` at a line start; withheld, as it is either stuffing or the
    /// terminator.
    Dot,
    /// `.` CR at a line start; neither stored yet, as LF would make them the
    /// terminator.
    DotCr,
    /// Anywhere else.
    Mid,
    /// The terminator has been consumed.
    Done,
}

/// Decodes the data following a `DATA` command (RFC 5321 §4.1.1.4, §4.5.2):
/// removes stuffing dots and stops right after the CR LF `.` CR LF terminator.
///
/// The data starts at a line start (the `DATA` command's own CR LF counts), so
/// `.` CR LF straight away is an empty message. The CR LF before the
/// terminating dot ends the message's last line and is stored.
#[derive(Debug, Clone)]
pub struct DotReader {
    lines: Lines,
    state: DotState,
}

impl DotReader {
    /// A reader for one message. `max_line` is the longest line allowed, in
    /// octets without CR LF (RFC 5321: 998).
    #[must_use]
    pub fn new(policy: BareLineEndings, max_line: usize) -> Self {
        Self {
            lines: Lines::new(policy, max_line),
            state: DotState::LineStart,
        }
    }

    /// Decodes `input`, appending what is to be stored to `out`, or only
    /// counting it when `out` is `None` (past the size limit, so a huge
    /// message drains without growing memory).
    ///
    /// Stops right after the terminator; once complete, further calls consume
    /// nothing. Bytes of a possible terminator that the input cut short are
    /// remembered, not written, so `out` may lag the input by up to two bytes.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) -> Fed {
        let out = &mut out;
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                DotState::Mid => {
                    let (next, line_start) = self.lines.scan::<true>(input, pos, out);
                    pos = next;
                    if line_start {
                        self.state = DotState::LineStart;
                    }
                }
                DotState::LineStart => {
                    if input[pos] == b'.' {
                        pos += 1;
                        self.state = DotState::Dot;
                    } else {
                        self.state = DotState::Mid;
                    }
                }
                DotState::Dot => {
                    if input[pos] == CR {
                        pos += 1;
                        self.state = DotState::DotCr;
                    } else {
                        // The dot was stuffing: drop it. Whatever follows,
                        // even a bare LF, is ordinary line content.
                        self.state = DotState::Mid;
                    }
                }
                DotState::DotCr => {
                    if input[pos] == LF {
                        self.state = DotState::Done;
                        return Fed {
                            consumed: pos + 1,
                            complete: true,
                        };
                    }
                    // A stuffing dot followed by a bare CR.
                    self.lines.bare_cr_unwritten(out);
                    self.state = DotState::Mid;
                }
                DotState::Done => break,
            }
        }
        Fed {
            consumed: pos,
            complete: self.state == DotState::Done,
        }
    }

    /// Whether the terminator has been seen.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.state == DotState::Done
    }

    /// Problems recorded so far.
    #[must_use]
    pub fn violations(&self) -> Violations {
        self.lines.violations
    }

    /// Octets of message written so far (after unstuffing and normalising),
    /// counting those discarded with a `None` output.
    #[must_use]
    pub fn octets(&self) -> u64 {
        self.lines.octets
    }
}

/// Checks and passes through the content of the `BDAT` chunks of one message
/// (RFC 3030): no dots, no terminator, the caller feeds exactly each chunk's
/// declared bytes. Line state carries across chunks, so a CR ending one chunk
/// and an LF starting the next make a proper CR LF.
#[derive(Debug, Clone)]
pub struct ChunkScanner {
    lines: Lines,
}

impl ChunkScanner {
    /// A scanner for one message. `max_line` is the longest line allowed, in
    /// octets without CR LF (RFC 5321: 998).
    #[must_use]
    pub fn new(policy: BareLineEndings, max_line: usize) -> Self {
        Self {
            lines: Lines::new(policy, max_line),
        }
    }

    /// Scans chunk content, appending what is to be stored to `out`, or only
    /// counting it when `out` is `None`. Always consumes all of `input`.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) {
        self.lines.scan::<false>(input, 0, &mut out);
    }

    /// Call after the `LAST` chunk: a CR at the very end of the message is
    /// bare, as no LF can follow it any more.
    pub fn finish(&mut self, mut out: Option<&mut Vec<u8>>) {
        self.lines.finish(&mut out);
    }

    /// Problems recorded so far.
    #[must_use]
    pub fn violations(&self) -> Violations {
        self.lines.violations
    }

    /// Octets of message written so far (after normalising), counting those
    /// discarded with a `None` output.
    #[must_use]
    pub fn octets(&self) -> u64 {
        self.lines.octets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use BareLineEndings::{Normalize, Reject};

    const MAX: usize = 998;

    /// Everything at once.
    fn data(policy: BareLineEndings, input: &[u8]) -> (Vec<u8>, Fed, Violations) {
        let mut r = DotReader::new(policy, MAX);
        let mut out = Vec::new();
        let fed = r.feed(input, Some(&mut out));
        assert_eq!(r.octets(), out.len() as u64);
        (out, fed, r.violations())
    }

    /// Fed in pieces at the given split points; `consumed` is the total.
    fn data_split(
        policy: BareLineEndings,
        max: usize,
        input: &[u8],
        splits: &[usize],
    ) -> (Vec<u8>, Fed, Violations) {
        let mut r = DotReader::new(policy, max);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut complete = false;
        let mut prev = 0;
        for &end in splits.iter().chain(std::iter::once(&input.len())) {
            let piece = &input[prev..end];
            let fed = r.feed(piece, Some(&mut out));
            assert!(fed.consumed <= piece.len());
            if complete {
                assert_eq!(fed.consumed, 0, "consumed after completion");
            }
            if !fed.complete {
                assert_eq!(fed.consumed, piece.len(), "stopped early");
            }
            consumed += fed.consumed;
            complete = fed.complete;
            prev = end;
        }
        assert_eq!(r.octets(), out.len() as u64);
        (out, Fed { consumed, complete }, r.violations())
    }

    fn bytewise(policy: BareLineEndings, max: usize, input: &[u8]) -> (Vec<u8>, Fed, Violations) {
        let splits: Vec<usize> = (1..input.len()).collect();
        data_split(policy, max, input, &splits)
    }

    /// Same result whole, bytewise and split in two at every index.
    fn data_all_ways(
        policy: BareLineEndings,
        max: usize,
        input: &[u8],
    ) -> (Vec<u8>, Fed, Violations) {
        let whole = data_split(policy, max, input, &[]);
        assert_eq!(bytewise(policy, max, input), whole, "bytewise");
        for i in 0..=input.len() {
            assert_eq!(data_split(policy, max, input, &[i]), whole, "split at {i}");
        }
        whole
    }

    fn chunks(policy: BareLineEndings, max: usize, parts: &[&[u8]]) -> (Vec<u8>, Violations) {
        let mut s = ChunkScanner::new(policy, max);
        let mut out = Vec::new();
        for p in parts {
            s.feed(p, Some(&mut out));
        }
        s.finish(Some(&mut out));
        assert_eq!(s.octets(), out.len() as u64);
        (out, s.violations())
    }

    fn done(consumed: usize) -> Fed {
        Fed {
            consumed,
            complete: true,
        }
    }

    const BARE: Violations = Violations {
        bare_line_ending: true,
        line_too_long: false,
    };
    const CLEAN: Violations = Violations {
        bare_line_ending: false,
        line_too_long: false,
    };
    const LONG: Violations = Violations {
        bare_line_ending: false,
        line_too_long: true,
    };

    #[test]
    fn empty_message() {
        assert_eq!(data(Reject, b".\r\n"), (vec![], done(3), CLEAN));
        assert_eq!(
            data_all_ways(Reject, MAX, b".\r\nQUIT\r\n"),
            (vec![], done(3), CLEAN)
        );
    }

    #[test]
    fn simple_message_keeps_last_crlf() {
        assert_eq!(
            data(Reject, b"a\r\n.\r\n"),
            (b"a\r\n".to_vec(), done(6), CLEAN)
        );
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\n";
        let (out, fed, v) = data_all_ways(Reject, MAX, input);
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!((fed, v), (done(input.len()), CLEAN));
    }

    #[test]
    fn unstuffing() {
        let input = b"..x\r\n.x\r\n..\r\n...\r\nx.\r\n.\r\n";
        let (out, fed, v) = data_all_ways(Reject, MAX, input);
        assert_eq!(out, b".x\r\nx\r\n.\r\n..\r\nx.\r\n");
        assert_eq!((fed, v), (done(input.len()), CLEAN));
        // A dot alone on a line only ever terminates.
        assert_eq!(
            data(Reject, b"a\r\n.\r\nb\r\n.\r\n"),
            (b"a\r\n".to_vec(), done(6), CLEAN)
        );
    }

    #[test]
    fn pipelined_bytes_not_consumed() {
        let input = b"a\r\n..\r\n.\r\nMAIL FROM:<x>\r\n";
        for policy in [Reject, Normalize] {
            let (out, fed, v) = data_all_ways(policy, MAX, input);
            assert_eq!(out, b"a\r\n.\r\n");
            assert_eq!((fed, v), (done(10), CLEAN));
        }
        // Once complete, nothing more is taken.
        let mut r = DotReader::new(Reject, MAX);
        let mut out = Vec::new();
        assert_eq!(r.feed(b".\r\n", Some(&mut out)), done(3));
        assert!(r.is_complete());
        assert_eq!(r.feed(b"a\r\n.\r\n", Some(&mut out)), done(0));
        assert!(out.is_empty());
    }

    #[test]
    fn terminator_split_everywhere() {
        let input = b"ab\r\n.c\r\n..\r\nd\r\n.\r\nRSET\r\n";
        for policy in [Reject, Normalize] {
            let (out, fed, v) = data_all_ways(policy, MAX, input);
            assert_eq!(out, b"ab\r\nc\r\n.\r\nd\r\n");
            assert_eq!((fed, v), (done(input.len() - 6), CLEAN));
        }
    }

    /// Each smuggling attempt is followed by a real terminator and trailing
    /// junk, so we check both that it did not terminate and what was stored.
    #[test]
    fn smuggling_variants() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            // (attempt, stored under Reject, stored under Normalize)
            (b"a\n.\nb", b"a\n.\nb", b"a\r\n.\r\nb"),
            (b"a\n.\r\nb", b"a\n.\r\nb", b"a\r\n.\r\nb"),
            (b"a\r\n.\nb", b"a\r\n\nb", b"a\r\n\r\nb"),
            (b"a\r.\rb", b"a\r.\rb", b"a\r\n.\r\nb"),
            (b"a\r\n.\rb", b"a\r\n\rb", b"a\r\n\r\nb"),
            (b"a\r\n.\r.\r\nb", b"a\r\n\r.\r\nb", b"a\r\n\r\n.\r\nb"),
            (b"a\r.\r\nb", b"a\r.\r\nb", b"a\r\n.\r\nb"),
            (b"a\n\r.\r\nb", b"a\n\r.\r\nb", b"a\r\n\r\n.\r\nb"),
            (b"a\r\n.\r\r\nb", b"a\r\n\r\r\nb", b"a\r\n\r\n\r\nb"),
            (b"a\n.\r\n..\r\nb", b"a\n.\r\n.\r\nb", b"a\r\n.\r\n.\r\nb"),
        ];
        for &(attempt, rejected, normalized) in cases {
            let mut input = attempt.to_vec();
            input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            let len = input.len() - 6;
            for (policy, stored, v) in [(Reject, rejected, BARE), (Normalize, normalized, CLEAN)] {
                let mut expected = stored.to_vec();
                expected.extend_from_slice(b"\r\n");
                let got = data_all_ways(policy, MAX, &input);
                assert_eq!(
                    got,
                    (expected, done(len), v),
                    "{policy:?} {:?}",
                    String::from_utf8_lossy(attempt)
                );
            }
        }
    }

    #[test]
    fn bare_endings_at_data_start() {
        // The data starts at a line start, so a bare LF there is still bare.
        assert_eq!(
            data(Reject, b"\n.\n\r\n.\r\n"),
            (b"\n.\n\r\n".to_vec(), done(8), BARE)
        );
        assert_eq!(
            data(Normalize, b"\n.\n\r\n.\r\n"),
            (b"\r\n.\r\n\r\n".to_vec(), done(8), CLEAN)
        );
        // `.` LF at the start: stuffing dot removed, then a bare LF.
        assert_eq!(
            data(Reject, b".\n\r\n.\r\n"),
            (b"\n\r\n".to_vec(), done(7), BARE)
        );
    }

    #[test]
    fn normalize_crlf_is_one_ending_lfcr_is_two() {
        let input = b"a\r\nb\n\rc\r\n.\r\n";
        let (out, fed, v) = data_all_ways(Normalize, MAX, input);
        assert_eq!(out, b"a\r\nb\r\n\r\nc\r\n");
        assert_eq!((fed, v), (done(input.len()), CLEAN));
    }

    #[test]
    fn unterminated_data_holds_back_possible_terminator() {
        let mut r = DotReader::new(Reject, MAX);
        let mut out = Vec::new();
        assert_eq!(
            r.feed(b"a\r\n.\r", Some(&mut out)),
            Fed {
                consumed: 5,
                complete: false
            }
        );
        assert_eq!(out, b"a\r\n");
        assert_eq!(r.feed(b"\n", Some(&mut out)), done(1));
        assert_eq!(out, b"a\r\n");
    }

    fn line(n: usize) -> Vec<u8> {
        let mut v = vec![b'x'; n];
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn line_length_data() {
        for (n, v) in [(998, CLEAN), (999, LONG)] {
            let mut input = line(n);
            input.extend_from_slice(&line(5));
            input.extend_from_slice(b".\r\n");
            let mut expected = line(n);
            expected.extend_from_slice(&line(5));
            let whole = data(Reject, &input);
            assert_eq!(whole, (expected, done(input.len()), v));
            assert_eq!(bytewise(Reject, MAX, &input), whole);
            for i in [1, 500, 997, 998, 999, 1000, 1001] {
                assert_eq!(
                    data_split(Reject, MAX, &input, &[i]),
                    whole,
                    "{n} split {i}"
                );
            }
        }
        // The stuffing dot does not count towards the length.
        let mut input = b".".to_vec();
        input.extend_from_slice(&line(998));
        input.extend_from_slice(b".\r\n");
        assert_eq!(data(Reject, &input).2, CLEAN);
        // A line is counted from the last line ending, not from the start.
        let mut input = line(600);
        input.extend_from_slice(&line(600));
        input.extend_from_slice(b".\r\n");
        assert_eq!(data(Reject, &input).2, CLEAN);
    }

    #[test]
    fn line_length_chunks() {
        for (n, v) in [(998, CLEAN), (999, LONG)] {
            let input = line(n);
            for i in 0..=input.len() {
                let got = chunks(Reject, MAX, &[&input[..i], &input[i..]]);
                assert_eq!(got, (input.clone(), v), "{n} split {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(chunks(Reject, MAX, &bytes), (input.clone(), v));
            // No line ending at all in the last chunk still counts.
            assert_eq!(chunks(Reject, MAX, &[&input[..n]]).1, v);
        }
    }

    #[test]
    fn bdat_crlf_across_chunks() {
        for policy in [Reject, Normalize] {
            assert_eq!(
                chunks(policy, MAX, &[b"a\r", b"\nb\r\n"]),
                (b"a\r\nb\r\n".to_vec(), CLEAN)
            );
            assert_eq!(
                chunks(policy, MAX, &[b"a\r", b"", b"\n.\r\n"]),
                (b"a\r\n.\r\n".to_vec(), CLEAN)
            );
        }
        // CR then something else across a boundary is a bare CR.
        assert_eq!(
            chunks(Reject, MAX, &[b"a\r", b"b\r\n"]),
            (b"a\rb\r\n".to_vec(), BARE)
        );
        assert_eq!(
            chunks(Normalize, MAX, &[b"a\r", b"b\r\n"]),
            (b"a\r\nb\r\n".to_vec(), CLEAN)
        );
        assert_eq!(
            chunks(Normalize, MAX, &[b"a\r", b"\rb"]),
            (b"a\r\n\r\nb".to_vec(), CLEAN)
        );
        // Bare LF at a chunk start.
        assert_eq!(
            chunks(Reject, MAX, &[b"a", b"\nb"]),
            (b"a\nb".to_vec(), BARE)
        );
        assert_eq!(
            chunks(Normalize, MAX, &[b"a", b"\nb"]),
            (b"a\r\nb".to_vec(), CLEAN)
        );
    }

    #[test]
    fn bdat_has_no_dot_handling() {
        let input = b"..x\r\n.\r\nmore\r\n";
        assert_eq!(chunks(Reject, MAX, &[input]), (input.to_vec(), CLEAN));
    }

    #[test]
    fn bdat_bare_cr_at_end_of_last_chunk() {
        assert_eq!(
            chunks(Reject, MAX, &[b"a\r\n", b"b\r"]),
            (b"a\r\nb\r".to_vec(), BARE)
        );
        assert_eq!(
            chunks(Normalize, MAX, &[b"a\r\n", b"b\r"]),
            (b"a\r\nb\r\n".to_vec(), CLEAN)
        );
        // Before finish, nothing is decided yet.
        let mut s = ChunkScanner::new(Reject, MAX);
        let mut out = Vec::new();
        s.feed(b"a\r", Some(&mut out));
        assert_eq!(s.violations(), CLEAN);
        s.finish(Some(&mut out));
        assert_eq!(s.violations(), BARE);
        assert_eq!(out, b"a\r");
    }

    #[test]
    fn discarding_output_still_scans_and_counts() {
        let mut r = DotReader::new(Normalize, MAX);
        let mut out = Vec::new();
        assert!(!r.feed(b"ab\n", Some(&mut out)).complete);
        assert_eq!(out, b"ab\r\n");
        let fed = r.feed(b"..cd\r\n.\r\nQUIT\r\n", None);
        assert_eq!(fed, done(9));
        assert_eq!(out, b"ab\r\n");
        // After a bare LF the dots are not at a line start: both are kept.
        assert_eq!(r.octets(), 4 + 6);

        let mut s = ChunkScanner::new(Reject, 3);
        s.feed(b"abcd\n", None);
        s.finish(None);
        assert_eq!(s.octets(), 5);
        assert_eq!(
            s.violations(),
            Violations {
                bare_line_ending: true,
                line_too_long: true
            }
        );
    }

    /// Small deterministic PRNG so the tests need no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }
    }

    /// Dot-stuffs lines that all end in CR LF and appends the terminator.
    fn encode(message: &[u8]) -> Vec<u8> {
        let mut wire = Vec::with_capacity(message.len() + message.len() / 16 + 5);
        let mut at_start = true;
        for (i, &b) in message.iter().enumerate() {
            if at_start && b == b'.' {
                wire.push(b'.');
            }
            wire.push(b);
            at_start = b == LF && i > 0 && message[i - 1] == CR;
        }
        wire.extend_from_slice(b".\r\n");
        wire
    }

    /// Byte-at-a-time reference for the whole of the rules, looking ahead
    /// freely since it sees the whole input. With `dots` it follows `DATA`
    /// (and the input must hold a terminator), without it `BDAT` (the input
    /// is the whole message, so a CR at its end is bare).
    fn reference(
        policy: BareLineEndings,
        max: usize,
        input: &[u8],
        dots: bool,
    ) -> (Vec<u8>, Fed, Violations) {
        let mut out = Vec::new();
        let mut v = Violations::default();
        let (mut i, mut line_start, mut len) = (0, dots, 0);
        while i < input.len() {
            if line_start && input[i] == b'.' {
                if input[i + 1..].starts_with(b"\r\n") {
                    return (out, done(i + 3), v);
                }
                i += 1;
                line_start = false;
                continue;
            }
            line_start = false;
            let b = input[i];
            if b == CR && input.get(i + 1) == Some(&LF) {
                out.extend_from_slice(b"\r\n");
                (i, line_start, len) = (i + 2, dots, 0);
            } else if b == CR || b == LF {
                match policy {
                    Reject => {
                        out.push(b);
                        v.bare_line_ending = true;
                    }
                    Normalize => out.extend_from_slice(b"\r\n"),
                }
                (i, len) = (i + 1, 0);
            } else {
                out.push(b);
                len += 1;
                v.line_too_long |= len > max;
                i += 1;
            }
        }
        assert!(!dots, "reference input must terminate");
        (out, done(input.len()), v)
    }

    fn random_splits(rng: &mut Rng, len: usize) -> Vec<usize> {
        let mut splits: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(len + 1)).collect();
        splits.sort_unstable();
        splits
    }

    #[test]
    fn random_data_matches_reference() {
        let alphabet = b"..\r\r\n\nab";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let n = rng.below(40);
            let mut input: Vec<u8> = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            input.extend_from_slice(b"\r\n.\r\nXY");
            let max = rng.below(6);
            for policy in [Reject, Normalize] {
                let expected = reference(policy, max, &input, true);
                let splits = random_splits(&mut rng, input.len());
                assert_eq!(
                    data_split(policy, max, &input, &splits),
                    expected,
                    "{policy:?} {:?} {splits:?}",
                    String::from_utf8_lossy(&input)
                );
                assert_eq!(bytewise(policy, max, &input), expected);
            }
        }
    }

    #[test]
    fn random_chunks_match_reference() {
        let alphabet = b".\r\r\n\nab";
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        for _ in 0..20_000 {
            let n = rng.below(30);
            let input: Vec<u8> = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let max = rng.below(6);
            for policy in [Reject, Normalize] {
                let (expected, _, v) = reference(policy, max, &input, false);
                let splits = random_splits(&mut rng, input.len());
                let mut parts = Vec::new();
                let mut prev = 0;
                for &s in splits.iter().chain(std::iter::once(&input.len())) {
                    parts.push(&input[prev..s]);
                    prev = s;
                }
                assert_eq!(
                    chunks(policy, max, &parts),
                    (expected, v),
                    "{policy:?} {:?} {splits:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn random_crlf_messages_round_trip() {
        let alphabet = b"...\r\nabc \t";
        let mut rng = Rng(42);
        for _ in 0..5_000 {
            // Build lines from bytes other than CR and LF, each ending in CR LF.
            let mut message = Vec::new();
            for _ in 0..rng.below(8) {
                for _ in 0..rng.below(12) {
                    let b = alphabet[rng.below(alphabet.len())];
                    if b != CR && b != LF {
                        message.push(b);
                    }
                }
                message.extend_from_slice(b"\r\n");
            }
            let wire = encode(&message);
            let splits = random_splits(&mut rng, wire.len());
            for policy in [Reject, Normalize] {
                assert_eq!(
                    data_split(policy, MAX, &wire, &splits),
                    (message.clone(), done(wire.len()), CLEAN)
                );
            }
        }
    }

    #[test]
    fn large_message_in_4k_pieces() {
        let mut rng = Rng(7);
        let mut message = Vec::new();
        while message.len() < 6 << 20 {
            let len = rng.below(200);
            if rng.below(10) == 0 {
                message.push(b'.');
            }
            message.extend((0..len).map(|i| b"abcdefghij .:"[(i + len) % 13]));
            message.extend_from_slice(b"\r\n");
        }
        let mut wire = encode(&message);
        let body_len = wire.len();
        wire.extend_from_slice(b"QUIT\r\n");

        let mut r = DotReader::new(Reject, MAX);
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in wire.chunks(4096) {
            let fed = r.feed(piece, Some(&mut out));
            consumed += fed.consumed;
            if fed.complete {
                break;
            }
        }
        assert!(r.is_complete());
        assert_eq!(consumed, body_len);
        assert!(out == message, "large message differs");
        assert_eq!(r.violations(), CLEAN);
        assert_eq!(r.octets(), message.len() as u64);

        // The same through BDAT, where the content is passed through as is.
        let mut s = ChunkScanner::new(Reject, MAX);
        let mut out = Vec::new();
        for piece in message.chunks(4096) {
            s.feed(piece, Some(&mut out));
        }
        s.finish(Some(&mut out));
        assert!(out == message, "large BDAT message differs");
        assert_eq!(s.violations(), CLEAN);

        // Drained without storing: the output never grows.
        let mut r = DotReader::new(Reject, MAX);
        let mut consumed = 0;
        for piece in wire.chunks(4096) {
            consumed += r.feed(piece, None).consumed;
        }
        assert_eq!(consumed, body_len);
        assert_eq!(r.octets(), message.len() as u64);
    }
}
