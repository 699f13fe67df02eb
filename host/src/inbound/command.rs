//! Command lines: turns one line the client sent into a typed [`Command`].
//!
//! Only the verb and the shape of the arguments are judged here; what an argument means
//! (an address, a parameter) is judged by the stage that handles the command. Parsing does
//! not allocate: arguments borrow from the line.

/// One SMTP command with its raw arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain`
    Ehlo(&'a str),
    /// `HELO domain`
    Helo(&'a str),
    /// `MAIL FROM:` and what follows the colon.
    Mail(&'a str),
    /// `RCPT TO:` and what follows the colon.
    Rcpt(&'a str),
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// The chunk size in octets.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `HELP [topic]`
    Help,
    /// `VRFY string`
    Vrfy,
    /// `EXPN string`
    Expn,
    /// `STARTTLS`
    StartTls,
    /// `AUTH mechanism [initial-response]`
    Auth(&'a str),
}

/// Why a command line could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The verb is not an SMTP command.
    #[error("unknown command")]
    Unknown,
    /// The verb is known but its arguments are malformed.
    #[error("{0}")]
    Syntax(&'static str),
    /// The line is not UTF-8 (or contains control characters).
    #[error("invalid characters in command")]
    BadCharacters,
}

impl<'a> Command<'a> {
    /// Parses a command line without its line ending.
    pub fn parse(line: &'a [u8]) -> Result<Command<'a>, CommandError> {
        let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
        if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(CommandError::BadCharacters);
        }
        let (verb, rest) = match line.find([' ', '\t']) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let args = rest.trim_matches([' ', '\t']);
        let no_args = |command: Command<'a>| {
            if args.is_empty() {
                Ok(command)
            } else {
                Err(CommandError::Syntax("this command takes no arguments"))
            }
        };
        let verb_is = |name: &str| verb.eq_ignore_ascii_case(name);
        if verb_is("EHLO") {
            required(args, "EHLO needs a domain or address literal").map(Command::Ehlo)
        } else if verb_is("HELO") {
            required(args, "HELO needs a domain or address literal").map(Command::Helo)
        } else if verb_is("MAIL") {
            after_prefix(rest, "FROM:", "expected MAIL FROM:<address>").map(Command::Mail)
        } else if verb_is("RCPT") {
            after_prefix(rest, "TO:", "expected RCPT TO:<address>").map(Command::Rcpt)
        } else if verb_is("DATA") {
            no_args(Command::Data)
        } else if verb_is("BDAT") {
            parse_bdat(args)
        } else if verb_is("RSET") {
            no_args(Command::Rset)
        } else if verb_is("NOOP") {
            Ok(Command::Noop)
        } else if verb_is("QUIT") {
            no_args(Command::Quit)
        } else if verb_is("HELP") {
            Ok(Command::Help)
        } else if verb_is("VRFY") {
            required(args, "VRFY needs an argument").map(|_| Command::Vrfy)
        } else if verb_is("EXPN") {
            required(args, "EXPN needs an argument").map(|_| Command::Expn)
        } else if verb_is("STARTTLS") {
            no_args(Command::StartTls)
        } else if verb_is("AUTH") {
            required(args, "AUTH needs a mechanism").map(Command::Auth)
        } else {
            Err(CommandError::Unknown)
        }
    }

    /// Whether the server may read further pipelined commands after this one before
    /// answering it. RFC 2920 §3.1: commands that change the connection or wait for
    /// something other than a command end a group.
    pub fn ends_pipeline_group(&self) -> bool {
        matches!(
            self,
            Command::Data | Command::Quit | Command::StartTls | Command::Auth(_)
        )
    }
}

fn required<'a>(args: &'a str, why: &'static str) -> Result<&'a str, CommandError> {
    if args.is_empty() {
        Err(CommandError::Syntax(why))
    } else {
        Ok(args)
    }
}

/// Strips a case-insensitive `FROM:` / `TO:` prefix. RFC 5321 allows no space before the
/// colon; one is tolerated after the verb, since that is how the verb was split off.
fn after_prefix<'a>(
    rest: &'a str,
    prefix: &str,
    why: &'static str,
) -> Result<&'a str, CommandError> {
    let rest = rest.trim_start_matches(' ');
    match rest.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => Ok(&rest[prefix.len()..]),
        _ => Err(CommandError::Syntax(why)),
    }
}

fn parse_bdat(args: &str) -> Result<Command<'_>, CommandError> {
    let mut words = args.split_ascii_whitespace();
    let size = words
        .next()
        .filter(|w| !w.is_empty() && w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(CommandError::Syntax("expected BDAT <size> [LAST]"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected BDAT <size> [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("expected BDAT <size> [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command<'_>, CommandError> {
        Command::parse(line.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse("ehlo client.test"), Ok(Command::Ehlo("client.test")));
        assert_eq!(parse("QuIt"), Ok(Command::Quit));
        assert_eq!(
            parse("mail from:<a@b.test> SIZE=10"),
            Ok(Command::Mail("<a@b.test> SIZE=10"))
        );
        assert_eq!(parse("RCPT TO:<x@y.test>"), Ok(Command::Rcpt("<x@y.test>")));
        assert_eq!(
            parse("MAIL FROM: <a@b.test>"),
            Ok(Command::Mail(" <a@b.test>"))
        );
    }

    #[test]
    fn malformed_arguments_are_syntax_errors() {
        assert!(matches!(parse("MAIL <a@b>"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            parse("RCPT FROM:<a@b>"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(parse("EHLO"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("DATA now"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("QUIT please"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("BDAT"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("BDAT -1"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            parse("BDAT 10 FIRST"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse("BDAT 99999999999999999999999"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn bdat_sizes_and_last() {
        assert_eq!(
            parse("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse("bdat 1000 last"),
            Ok(Command::Bdat {
                size: 1000,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 42"),
            Ok(Command::Bdat {
                size: 42,
                last: false
            })
        );
    }

    #[test]
    fn unknown_verbs_and_bad_bytes() {
        assert_eq!(parse("FOO bar"), Err(CommandError::Unknown));
        assert_eq!(parse(""), Err(CommandError::Unknown));
        assert_eq!(
            Command::parse(b"NOOP \xff"),
            Err(CommandError::BadCharacters)
        );
        assert_eq!(parse("NOOP \x00"), Err(CommandError::BadCharacters));
    }
}
