//! The delivery-status requests a client makes with its MAIL and RCPT parameters: DSN
//! (RFC 3461: RET, ENVID, NOTIFY, ORCPT) and REQUIRETLS (RFC 8689).
//!
//! They are kept in the envelope as the client sent them (with the other parameters, so
//! the spool format does not change and the values go on to the next hop byte for byte);
//! this module checks them at the edge ([`check_mail_param`], [`check_rcpt_param`]) and
//! reads them back typed for the queue and the client ([`Envelope::ret`],
//! [`Recipient::notify`], ...).

use super::envelope::{Envelope, Param, Recipient};

/// RFC 3461 §4.4: an ENVID is at most 100 characters.
pub const MAX_ENVID: usize = 100;

/// RFC 3461 §4.2: an ORCPT is at most 500 characters.
pub const MAX_ORCPT: usize = 500;

/// What of the message a failure notice returns (RET, RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header block only.
    Hdrs,
}

/// Which notices the sender asked for about one recipient (NOTIFY, RFC 3461 §4.1).
/// Without NOTIFY, failures and delays are reported and successes are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    /// Report a successful delivery (or relay to a next hop without DSN).
    pub success: bool,
    /// Report a failure.
    pub failure: bool,
    /// Report a delay.
    pub delay: bool,
}

impl Notify {
    /// What a recipient without NOTIFY gets (RFC 3461 §4.1: "FAILURE" or "FAILURE,DELAY"
    /// at the MTA's choice; Tidegate sends both).
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: true,
    };

    /// Parses a NOTIFY value: `NEVER`, or a comma-separated list of SUCCESS, FAILURE and
    /// DELAY (case-insensitive, each at most once).
    pub fn parse(value: &str) -> Option<Notify> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Notify {
                success: false,
                failure: false,
                delay: false,
            });
        }
        let mut notify = Notify {
            success: false,
            failure: false,
            delay: false,
        };
        for word in value.split(',') {
            let flag = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut notify.success,
                "FAILURE" => &mut notify.failure,
                "DELAY" => &mut notify.delay,
                _ => return None,
            };
            if *flag {
                return None;
            }
            *flag = true;
        }
        Some(notify)
    }
}

/// Why a DSN or REQUIRETLS parameter was refused (the reply is 501 5.5.4, or 530 5.7.10
/// for REQUIRETLS outside TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    /// The value is malformed; the text says which parameter.
    Malformed(&'static str),
    /// The parameter was given twice.
    Repeated(&'static str),
    /// REQUIRETLS outside a TLS session.
    NeedsTls,
}

/// Checks one MAIL parameter that belongs to this module; `None` when it is not one of
/// them (RET, ENVID, REQUIRETLS), `Some(Ok(()))` when it is valid. `earlier` are the
/// parameters before it, for repetitions; `tls` says whether the session is encrypted.
pub fn check_mail_param(
    keyword: &str,
    value: Option<&str>,
    earlier: &[(String, Option<String>)],
    tls: bool,
) -> Option<Result<(), ParamError>> {
    let repeated = |name: &'static str| {
        if earlier.iter().any(|(k, _)| k == keyword) {
            Err(ParamError::Repeated(name))
        } else {
            Ok(())
        }
    };
    Some(match (keyword, value) {
        ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS") => {
            repeated("RET")
        }
        ("RET", _) => Err(ParamError::Malformed("RET")),
        ("ENVID", Some(v)) if v.len() <= MAX_ENVID && is_xtext(v) => repeated("ENVID"),
        ("ENVID", _) => Err(ParamError::Malformed("ENVID")),
        ("REQUIRETLS", None) if tls => repeated("REQUIRETLS"),
        ("REQUIRETLS", None) => Err(ParamError::NeedsTls),
        ("REQUIRETLS", Some(_)) => Err(ParamError::Malformed("REQUIRETLS")),
        _ => return None,
    })
}

/// Checks one RCPT parameter that belongs to this module (NOTIFY, ORCPT), as
/// [`check_mail_param`] does.
pub fn check_rcpt_param(
    keyword: &str,
    value: Option<&str>,
    earlier: &[(String, Option<String>)],
) -> Option<Result<(), ParamError>> {
    let repeated = |name: &'static str| {
        if earlier.iter().any(|(k, _)| k == keyword) {
            Err(ParamError::Repeated(name))
        } else {
            Ok(())
        }
    };
    Some(match (keyword, value) {
        ("NOTIFY", Some(v)) if Notify::parse(v).is_some() => repeated("NOTIFY"),
        ("NOTIFY", _) => Err(ParamError::Malformed("NOTIFY")),
        ("ORCPT", Some(v)) if is_orcpt(v) => repeated("ORCPT"),
        ("ORCPT", _) => Err(ParamError::Malformed("ORCPT")),
        _ => return None,
    })
}

/// `addr-type ";" xtext` (RFC 3461 §4.2), `rfc822` with xtext or `utf-8` with
/// `utf-8-addr-xtext` (RFC 6533 §3: xtext that may also hold non-ASCII characters).
fn is_orcpt(value: &str) -> bool {
    if value.len() > MAX_ORCPT {
        return false;
    }
    let Some((kind, address)) = value.split_once(';') else {
        return false;
    };
    if kind.eq_ignore_ascii_case("rfc822") {
        is_xtext(address)
    } else if kind.eq_ignore_ascii_case("utf-8") {
        // Non-ASCII characters stand for themselves; the ASCII rest is xtext.
        let ascii: String = address.chars().filter(char::is_ascii).collect();
        !address.is_empty()
            && address.chars().all(|c| c.is_ascii() || !c.is_control())
            && (ascii.is_empty() || is_xtext(&ascii))
    } else {
        false
    }
}

/// Whether `value` is valid xtext (RFC 3461 §4): printable ASCII other than `+` and `=`,
/// with `+XX` (two upper-case hexadecimal digits) standing for any octet.
pub fn is_xtext(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex =
                    |b: Option<&u8>| b.is_some_and(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
                if !(hex(bytes.get(i + 1)) && hex(bytes.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    !bytes.is_empty()
}

fn find<'p>(params: &'p [Param], keyword: &str) -> Option<&'p Param> {
    params
        .iter()
        .find(|p| p.keyword.eq_ignore_ascii_case(keyword))
}

impl Envelope {
    /// RET, if the client gave it.
    pub fn ret(&self) -> Option<Ret> {
        let value = find(&self.mail_params, "RET")?.value.as_deref()?;
        if value.eq_ignore_ascii_case("FULL") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case("HDRS") {
            Some(Ret::Hdrs)
        } else {
            None
        }
    }

    /// ENVID as the client sent it (xtext), if it is valid.
    pub fn envid(&self) -> Option<&str> {
        find(&self.mail_params, "ENVID")?
            .value
            .as_deref()
            .filter(|v| v.len() <= MAX_ENVID && is_xtext(v))
    }

    /// Whether MAIL carried REQUIRETLS (RFC 8689): the message travels only over verified
    /// TLS to next hops that offer REQUIRETLS.
    pub fn requiretls(&self) -> bool {
        find(&self.mail_params, "REQUIRETLS").is_some()
    }
}

impl Recipient {
    /// The notices asked for about this recipient ([`Notify::DEFAULT`] without NOTIFY).
    pub fn notify(&self) -> Notify {
        find(&self.params, "NOTIFY")
            .and_then(|p| p.value.as_deref())
            .and_then(Notify::parse)
            .unwrap_or(Notify::DEFAULT)
    }

    /// Whether NOTIFY was given at all (a next hop then gets it as it was).
    pub fn notify_raw(&self) -> Option<&str> {
        find(&self.params, "NOTIFY")
            .and_then(|p| p.value.as_deref())
            .filter(|v| Notify::parse(v).is_some())
    }

    /// ORCPT as the client sent it (`addr-type;xtext`), if it is valid.
    pub fn orcpt(&self) -> Option<&str> {
        find(&self.params, "ORCPT")
            .and_then(|p| p.value.as_deref())
            .filter(|v| is_orcpt(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        assert_eq!(
            Notify::parse("never"),
            Some(Notify {
                success: false,
                failure: false,
                delay: false
            })
        );
        assert_eq!(
            Notify::parse("SUCCESS,delay"),
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,SUCCESS", "ALWAYS", "SUCCESS,"] {
            assert_eq!(Notify::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn mail_and_rcpt_params() {
        let none: &[(String, Option<String>)] = &[];
        assert_eq!(
            check_mail_param("RET", Some("hdrs"), none, false),
            Some(Ok(()))
        );
        assert!(matches!(
            check_mail_param("RET", Some("BODY"), none, false),
            Some(Err(ParamError::Malformed(_)))
        ));
        assert_eq!(
            check_mail_param("ENVID", Some(&"a".repeat(100)), none, false),
            Some(Ok(()))
        );
        assert!(
            check_mail_param("ENVID", Some(&"a".repeat(101)), none, false)
                .is_some_and(|r| r.is_err())
        );
        assert_eq!(
            check_mail_param("REQUIRETLS", None, none, false),
            Some(Err(ParamError::NeedsTls))
        );
        assert_eq!(
            check_mail_param("REQUIRETLS", None, none, true),
            Some(Ok(()))
        );
        let earlier = vec![("RET".to_owned(), Some("FULL".to_owned()))];
        assert_eq!(
            check_mail_param("RET", Some("FULL"), &earlier, false),
            Some(Err(ParamError::Repeated("RET")))
        );
        assert_eq!(check_mail_param("SIZE", Some("1"), none, false), None);
        assert_eq!(
            check_rcpt_param("ORCPT", Some("rfc822;a+2Bb@example.test"), none),
            Some(Ok(()))
        );
        assert_eq!(
            check_rcpt_param("ORCPT", Some("utf-8;ü@example.test"), none),
            Some(Ok(()))
        );
        for bad in ["a@example.test", "x400;a", "rfc822;a=b", "rfc822;"] {
            assert!(
                check_rcpt_param("ORCPT", Some(bad), none).is_some_and(|r| r.is_err()),
                "{bad}"
            );
        }
    }

    #[test]
    fn xtext_values() {
        for good in ["alice@example.test", "e+3Dmc2@example.test", "+2B"] {
            assert!(is_xtext(good), "{good}");
        }
        for bad in ["", "a=b", "a+3d", "a+", "a+4", "a b"] {
            assert!(!is_xtext(bad), "{bad}");
        }
    }
}
