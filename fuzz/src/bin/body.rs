//! Fuzz target: the DATA and BDAT readers (`inbound::body::DotReader`, `ChunkScanner`).
//!
//! The first byte picks the policy (reject or normalise bare CR/LF), the line limit and how
//! the rest is split into network reads or BDAT chunks. Properties: no panic; the result
//! does not depend on how the input is split; the DATA reader consumes exactly up to and
//! including the first CR LF `.` CR LF that starts at a line start, and never past it;
//! under `Normalize` what is stored holds no bare CR or bare LF; under `Reject` a bare
//! ending is always flagged and, when none is flagged, the stored bytes hold none;
//! discarding output counts the same octets; under `Normalize` a line is flagged as too
//! long exactly when a stored line exceeds the limit; BDAT output is the input when nothing
//! needs normalising.

use tidegate::inbound::body::{BareLineEndings, ChunkScanner, DotReader, Fed, Violations};

/// True when every CR in `bytes` is followed by LF and every LF preceded by CR.
fn only_crlf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

/// Cuts `input` into pieces at positions derived from `seed`.
fn pieces(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let step = usize::from(seed % 7) + 1;
    let mut out = Vec::new();
    let mut at = 0;
    let mut n = 0usize;
    while at < input.len() {
        let len = ((n * 31 + usize::from(seed)) % (step * 3) + 1).min(input.len() - at);
        out.push(&input[at..at + len]);
        at += len;
        n += 1;
    }
    out
}

fn data(
    policy: BareLineEndings,
    max: usize,
    parts: &[&[u8]],
) -> (Vec<u8>, usize, bool, Violations, u64) {
    let mut reader = DotReader::new(policy, max);
    let mut out = Vec::new();
    let mut consumed = 0;
    for part in parts {
        let Fed {
            consumed: used,
            complete,
        } = reader.feed(part, Some(&mut out));
        assert!(used <= part.len());
        consumed += used;
        if complete {
            break;
        }
        assert_eq!(
            used,
            part.len(),
            "an incomplete reader consumes all it is given"
        );
    }
    (
        out,
        consumed,
        reader.is_complete(),
        reader.violations(),
        reader.octets(),
    )
}

/// Where the DATA terminator ends: just past the first CR LF . CR LF whose dot is at a line
/// start (the data itself starts at one), or `None`.
fn terminator_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|at| at + 5)
}

fn main() {
    afl::fuzz!(|data_in: &[u8]| {
        let (flag, input) = tidegate_fuzz::flag_and_rest(data_in);
        let policy = if flag & 1 == 0 {
            BareLineEndings::Reject
        } else {
            BareLineEndings::Normalize
        };
        let max = if flag & 2 == 0 { 998 } else { 8 };
        let seed = flag >> 2;

        // DATA: all at once, split, and byte by byte must agree.
        let whole = data(policy, max, &[input]);
        let split = data(policy, max, &pieces(input, seed));
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let bytewise = data(policy, max, &bytes);
        assert_eq!(whole, split, "split changed the DATA result");
        assert_eq!(whole, bytewise, "byte-by-byte changed the DATA result");
        let (out, consumed, complete, violations, octets) = whole;
        assert_eq!(octets, out.len() as u64);
        // The terminator: a CR LF . CR LF can only be hidden by an earlier one, and
        // dot-stuffing never makes one out of nothing.
        match terminator_end(input) {
            Some(end) => {
                assert!(complete, "missed the terminator");
                assert_eq!(consumed, end, "consumed the wrong amount");
            }
            None => {
                assert!(!complete, "saw a terminator that is not there");
                assert_eq!(consumed, input.len());
            }
        }
        if complete {
            assert!(
                out.is_empty() || out.ends_with(b"\r\n"),
                "message does not end in CR LF"
            );
        }
        let mut discarding = DotReader::new(policy, max);
        let _ = discarding.feed(input, None);
        assert_eq!(discarding.octets(), octets, "discarding changed the count");
        assert_eq!(discarding.violations(), violations);
        check_endings(policy, max, &out, violations, complete);

        // BDAT: the whole input as chunks, then LAST.
        let scan = |parts: &[&[u8]]| {
            let mut scanner = ChunkScanner::new(policy, max);
            let mut out = Vec::new();
            for part in parts {
                scanner.feed(part, Some(&mut out));
            }
            scanner.finish(Some(&mut out));
            (out, scanner.violations(), scanner.octets())
        };
        let chunks_whole = scan(&[input]);
        assert_eq!(
            chunks_whole,
            scan(&pieces(input, seed)),
            "split changed the BDAT result"
        );
        let (out, violations, octets) = chunks_whole;
        assert_eq!(octets, out.len() as u64);
        check_endings(policy, max, &out, violations, true);
        if policy == BareLineEndings::Reject {
            assert_eq!(out, input, "BDAT under Reject stores exactly what came");
        } else if only_crlf(input) {
            assert_eq!(out, input, "BDAT with only CR LF stores exactly what came");
        }
    });
}

/// The longest run of octets between CR LF pairs.
fn longest_line(bytes: &[u8]) -> usize {
    let (mut longest, mut start, mut i) = (0, 0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            longest = longest.max(i - start);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    longest.max(bytes.len() - start)
}

fn check_endings(
    policy: BareLineEndings,
    max: usize,
    out: &[u8],
    violations: Violations,
    complete: bool,
) {
    match policy {
        BareLineEndings::Normalize => {
            assert!(!violations.bare_line_ending);
            // An incomplete DATA may end in a CR still waiting for its LF.
            let checked = if !complete && out.ends_with(b"\r") {
                &out[..out.len() - 1]
            } else {
                out
            };
            assert!(
                only_crlf(checked),
                "bare CR or LF stored under Normalize: {out:?}"
            );
            // Every ending stored is then CR LF and no stuffing dot is stored, so the
            // stored lines are exactly the lines the limit is about.
            assert_eq!(
                violations.line_too_long,
                longest_line(checked) > max,
                "line limit {max} misjudged: {out:?}"
            );
        }
        BareLineEndings::Reject => {
            let trailing_cr = !complete && out.ends_with(b"\r");
            let checked = if trailing_cr {
                &out[..out.len() - 1]
            } else {
                out
            };
            if !violations.bare_line_ending {
                assert!(
                    only_crlf(checked),
                    "bare ending stored but not flagged: {out:?}"
                );
            }
        }
    }
}
