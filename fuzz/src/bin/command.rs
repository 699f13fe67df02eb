//! Fuzz target: the SMTP command-line parser (`inbound::command::Command::parse`).
//!
//! Properties: no panic; borrowed arguments are sub-slices of the line; a line with a
//! control character (other than TAB) or invalid UTF-8 is always refused; the verb is
//! case-insensitive (the line with its verb re-cased parses to the same command).

use tidegate::inbound::command::{Command, CommandError};

fn recase_verb(line: &[u8]) -> Vec<u8> {
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let mut out = line.to_vec();
    for b in &mut out[..end] {
        if b.is_ascii_lowercase() {
            b.make_ascii_uppercase();
        } else if b.is_ascii_uppercase() {
            b.make_ascii_lowercase();
        }
    }
    out
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let parsed = Command::parse(data);
        let text = std::str::from_utf8(data);
        let bad = text.is_err() || data.iter().any(|&b| b.is_ascii_control() && b != b'\t');
        if bad {
            assert_eq!(parsed, Err(CommandError::BadCharacters), "{data:?}");
        }
        if let (Ok(command), Ok(text)) = (&parsed, text) {
            let range = text.as_bytes().as_ptr_range();
            let within = |arg: &str| {
                let r = arg.as_bytes().as_ptr_range();
                range.start <= r.start && r.end <= range.end
            };
            match command {
                Command::Ehlo(a) | Command::Helo(a) | Command::Auth(a) => {
                    assert!(within(a) && !a.is_empty(), "{text:?}")
                }
                Command::Mail(a) | Command::Rcpt(a) => assert!(within(a), "{text:?}"),
                _ => {}
            }
        }
        let recased = recase_verb(data);
        let again = Command::parse(&recased);
        match (&parsed, &again) {
            (Ok(a), Ok(b)) => assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "{data:?}"
            ),
            (Err(a), Err(b)) => assert_eq!(a, b, "{data:?}"),
            _ => panic!("verb case changed the outcome: {data:?} {parsed:?} {again:?}"),
        }
    });
}
