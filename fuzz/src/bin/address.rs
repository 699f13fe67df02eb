//! Fuzz target: the path and parameter parser (`inbound::address`): `MAIL FROM:` and
//! `RCPT TO:` arguments, bare mailboxes and domains.
//!
//! The first byte picks the entry point and whether SMTPUTF8 is in effect. Properties: no
//! panic; what parses displays in a canonical form that parses back to the same value (and
//! displays the same again); the canonical form of a mailbox fits the 256-octet path limit,
//! so it can always be sent on; without SMTPUTF8 nothing non-ASCII is accepted.

use tidegate::inbound::address::{
    Domain, Mailbox, parse_forward_path, parse_params, parse_reverse_path,
};

fn params_text(params: &[tidegate::inbound::address::Param]) -> String {
    params.iter().map(|p| format!(" {p}")).collect()
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (flag, rest) = tidegate_fuzz::flag_and_rest(data);
        let Ok(input) = std::str::from_utf8(rest) else {
            return;
        };
        let utf8 = flag & 1 == 1;
        match (flag >> 1) % 5 {
            0 => {
                if let Ok((path, params)) = parse_reverse_path(input, utf8) {
                    let text = format!("{path}{}", params_text(&params));
                    let again = parse_reverse_path(&text, utf8)
                        .unwrap_or_else(|e| panic!("{input:?} -> {text:?}: {e}"));
                    assert_eq!(again, (path, params), "{input:?} -> {text:?}");
                    assert!(utf8 || text.is_ascii(), "{input:?}");
                }
            }
            1 => {
                if let Ok((path, params)) = parse_forward_path(input, utf8) {
                    let text = format!("{path}{}", params_text(&params));
                    let again = parse_forward_path(&text, utf8)
                        .unwrap_or_else(|e| panic!("{input:?} -> {text:?}: {e}"));
                    assert_eq!(again, (path, params), "{input:?} -> {text:?}");
                    assert!(utf8 || text.is_ascii(), "{input:?}");
                }
            }
            2 => {
                if let Ok(mailbox) = Mailbox::parse(input, utf8) {
                    let text = mailbox.to_string();
                    assert!(text.len() <= 256, "{input:?} -> {text:?}");
                    let again = Mailbox::parse(&text, utf8)
                        .unwrap_or_else(|e| panic!("{input:?} -> {text:?}: {e}"));
                    assert_eq!(again, mailbox, "{input:?} -> {text:?}");
                    assert_eq!(again.to_string(), text);
                    assert!(utf8 || !mailbox.is_utf8(), "{input:?}");
                }
            }
            3 => {
                if let Ok(domain) = Domain::parse(input, utf8) {
                    let text = domain.to_string();
                    let again = Domain::parse(&text, utf8)
                        .unwrap_or_else(|e| panic!("{input:?} -> {text:?}: {e}"));
                    assert_eq!(again, domain, "{input:?} -> {text:?}");
                    assert!(utf8 || !domain.is_utf8(), "{input:?}");
                }
            }
            _ => {
                if let Ok(params) = parse_params(input, utf8) {
                    let text = params_text(&params);
                    let again = parse_params(&text, utf8)
                        .unwrap_or_else(|e| panic!("{input:?} -> {text:?}: {e}"));
                    assert_eq!(again, params, "{input:?} -> {text:?}");
                }
            }
        }
    });
}
