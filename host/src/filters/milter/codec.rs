//! The milter wire format (Sendmail's libmilter protocol, version 6): packets, the commands
//! an MTA sends and the replies a milter gives, decoded with every length bounded.
//!
//! Written here rather than taken from `miltr-common`/`miltr-client`: those crates are
//! young (0.1/0.2, two users), pull in `async-trait` and `miette`, and leave the client's
//! bounds and deadlines to the caller anyway; the client needs only the framing and a
//! handful of commands, and a small codec with its own tests keeps every limit (packet
//! size, strings, counts) in one place that a hostile milter cannot get past.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version spoken.
pub const VERSION: u32 = 6;
/// The largest body chunk sent in one `SMFIC_BODY` packet.
pub const CHUNK: usize = 65_535;
/// The largest packet accepted from a milter (libmilter's own limit for what it sends
/// with the 1 MB `SMFIP_MDS_1M` option, never offered here, is below this).
pub const MAX_PACKET: usize = 1024 * 1024 + 16;

/// Actions (what the milter may do to the message), `SMFIF_*`.
pub mod action {
    /// Add header fields.
    pub const ADDHDRS: u32 = 0x01;
    /// Replace the body (never offered: see the client's doc).
    pub const CHGBODY: u32 = 0x02;
    /// Add recipients.
    pub const ADDRCPT: u32 = 0x04;
    /// Delete recipients.
    pub const DELRCPT: u32 = 0x08;
    /// Change or delete header fields.
    pub const CHGHDRS: u32 = 0x10;
    /// Quarantine the message.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the envelope sender.
    pub const CHGFROM: u32 = 0x40;
    /// Add recipients with ESMTP parameters.
    pub const ADDRCPT_PAR: u32 = 0x80;
    /// Ask for a macro list per stage.
    pub const SETSYMLIST: u32 = 0x100;
    /// What Tidegate offers: everything but replacing the body.
    pub const OFFERED: u32 =
        ADDHDRS | ADDRCPT | DELRCPT | CHGHDRS | QUARANTINE | CHGFROM | ADDRCPT_PAR | SETSYMLIST;
}

/// Protocol steps the milter may turn off, or answer without a reply, `SMFIP_*`.
pub mod step {
    /// No connect information.
    pub const NOCONNECT: u32 = 0x01;
    /// No HELO.
    pub const NOHELO: u32 = 0x02;
    /// No MAIL.
    pub const NOMAIL: u32 = 0x04;
    /// No RCPT.
    pub const NORCPT: u32 = 0x08;
    /// No body.
    pub const NOBODY: u32 = 0x10;
    /// No header fields.
    pub const NOHDRS: u32 = 0x20;
    /// No end of header.
    pub const NOEOH: u32 = 0x40;
    /// No reply to each header field.
    pub const NR_HDR: u32 = 0x80;
    /// No unknown commands.
    pub const NOUNKNOWN: u32 = 0x100;
    /// No DATA.
    pub const NODATA: u32 = 0x200;
    /// The milter may answer SKIP to a body chunk.
    pub const SKIP: u32 = 0x400;
    /// No reply to connect.
    pub const NR_CONN: u32 = 0x1000;
    /// No reply to HELO.
    pub const NR_HELO: u32 = 0x2000;
    /// No reply to MAIL.
    pub const NR_MAIL: u32 = 0x4000;
    /// No reply to RCPT.
    pub const NR_RCPT: u32 = 0x8000;
    /// No reply to DATA.
    pub const NR_DATA: u32 = 0x10000;
    /// No reply to unknown commands.
    pub const NR_UNKN: u32 = 0x20000;
    /// No reply to end of header.
    pub const NR_EOH: u32 = 0x40000;
    /// No reply to a body chunk.
    pub const NR_BODY: u32 = 0x80000;
    /// What Tidegate offers: every "no" and "no reply" step and SKIP; not RCPT_REJ
    /// (recipients refused earlier are never shown), HDR_LEADSPC, or the large
    /// packet sizes.
    pub const OFFERED: u32 = NOCONNECT
        | NOHELO
        | NOMAIL
        | NORCPT
        | NOBODY
        | NOHDRS
        | NOEOH
        | NR_HDR
        | NOUNKNOWN
        | NODATA
        | SKIP
        | NR_CONN
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKN
        | NR_EOH
        | NR_BODY;
}

/// A malformed or oversized packet, or a broken connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading or writing failed.
    #[error("milter connection: {0}")]
    Io(#[from] std::io::Error),
    /// A packet's length is 0 or over [`MAX_PACKET`].
    #[error("milter sent a packet of {0} bytes (at most {MAX_PACKET})")]
    Length(usize),
    /// A packet's contents do not fit its command.
    #[error("milter sent a malformed `{command}` packet: {why}")]
    Malformed {
        /// The reply code character.
        command: char,
        /// What is wrong.
        why: &'static str,
    },
    /// A reply code the protocol does not have.
    #[error("milter sent an unknown reply `{0}`")]
    Unknown(char),
}

/// A command sent to the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `O`: version, actions, protocol steps.
    OptNeg {
        /// Actions offered.
        actions: u32,
        /// Protocol steps offered.
        steps: u32,
    },
    /// `D`: macros for the command `for_command`.
    Macros {
        /// The command code they belong to.
        for_command: u8,
        /// Name and value pairs.
        macros: &'a [(&'a str, String)],
    },
    /// `C`: the client's host name, and its address and port (`None`: unknown).
    Connect {
        /// Host name (or the address in brackets).
        hostname: &'a str,
        /// Address and port.
        address: Option<std::net::SocketAddr>,
    },
    /// `H`: the HELO name.
    Helo(&'a str),
    /// `M`: `<sender>` and ESMTP arguments.
    Mail(&'a [String]),
    /// `R`: `<recipient>` and ESMTP arguments.
    Rcpt(&'a [String]),
    /// `T`: DATA.
    Data,
    /// `L`: a header field, name and value.
    Header(&'a str, &'a str),
    /// `N`: end of header.
    EndOfHeader,
    /// `B`: a body chunk.
    Body(&'a [u8]),
    /// `E`: end of message.
    EndOfMessage,
    /// `A`: abort the transaction.
    Abort,
    /// `Q`: quit.
    Quit,
}

impl Command<'_> {
    /// The command code.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => b'O',
            Command::Macros { .. } => b'D',
            Command::Connect { .. } => b'C',
            Command::Helo(_) => b'H',
            Command::Mail(_) => b'M',
            Command::Rcpt(_) => b'R',
            Command::Data => b'T',
            Command::Header(..) => b'L',
            Command::EndOfHeader => b'N',
            Command::Body(_) => b'B',
            Command::EndOfMessage => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
        }
    }

    /// The packet: length, code, data. Strings are NUL-terminated; a NUL inside one
    /// (never in what SMTP hands over) is cut there rather than split into two.
    pub fn encode(&self) -> Vec<u8> {
        fn cstr(out: &mut Vec<u8>, text: &str) {
            let bytes = text.as_bytes();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            out.extend_from_slice(&bytes[..end]);
            out.push(0);
        }
        let mut data = Vec::new();
        match self {
            Command::OptNeg { actions, steps } => {
                data.extend_from_slice(&VERSION.to_be_bytes());
                data.extend_from_slice(&actions.to_be_bytes());
                data.extend_from_slice(&steps.to_be_bytes());
            }
            Command::Macros {
                for_command,
                macros,
            } => {
                data.push(*for_command);
                for (name, value) in *macros {
                    cstr(&mut data, name);
                    cstr(&mut data, value);
                }
            }
            Command::Connect { hostname, address } => {
                cstr(&mut data, hostname);
                match address {
                    Some(address) => {
                        data.push(if address.is_ipv4() { b'4' } else { b'6' });
                        data.extend_from_slice(&address.port().to_be_bytes());
                        cstr(&mut data, &address.ip().to_string());
                    }
                    None => data.push(b'U'),
                }
            }
            Command::Helo(name) => cstr(&mut data, name),
            Command::Mail(args) | Command::Rcpt(args) => {
                for arg in *args {
                    cstr(&mut data, arg);
                }
            }
            Command::Header(name, value) => {
                cstr(&mut data, name);
                cstr(&mut data, value);
            }
            Command::Body(chunk) => data.extend_from_slice(chunk),
            Command::Data
            | Command::EndOfHeader
            | Command::EndOfMessage
            | Command::Abort
            | Command::Quit => {}
        }
        let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
        let mut packet = Vec::with_capacity(data.len() + 5);
        packet.extend_from_slice(&len.to_be_bytes());
        packet.push(self.code());
        packet.extend_from_slice(&data);
        packet
    }
}

/// What the milter answered to option negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Its protocol version.
    pub version: u32,
    /// The actions it asks for.
    pub actions: u32,
    /// The protocol steps it turns off or answers without a reply.
    pub steps: u32,
    /// The macros it asks for, by stage (`SMFIM_*`: 0 connect ... 6 end of header).
    pub macros: Vec<(u32, String)>,
}

/// A reply from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `O`: option negotiation.
    OptNeg(Negotiated),
    /// `a`: accept; no more from this milter for the message (or the session, at connect).
    Accept,
    /// `c`: continue.
    Continue,
    /// `r`: reject (550).
    Reject,
    /// `t`: temporary failure (451).
    Tempfail,
    /// `d`: accept and discard the message.
    Discard,
    /// `y`: reply with this SMTP code, enhanced code and text (as sent, still to check).
    ReplyCode(String),
    /// `s`: skip the rest of the body.
    Skip,
    /// `p`: still working, wait on.
    Progress,
    /// `h`: add a header field.
    AddHeader(String, String),
    /// `i`: insert a header field at an index.
    InsertHeader(u32, String, String),
    /// `m`: change the index-th field with this name (1-based); an empty value deletes it.
    ChangeHeader(u32, String, String),
    /// `e`: change the envelope sender (and its ESMTP arguments).
    ChangeFrom(String),
    /// `+` or `2`: add a recipient.
    AddRcpt(String),
    /// `-`: delete a recipient.
    DelRcpt(String),
    /// `b`: replace the body (never offered, so a protocol error if it comes).
    ReplaceBody,
    /// `q`: quarantine with this reason.
    Quarantine(String),
}

/// Writes one command.
pub async fn write<W: AsyncWrite + Unpin>(
    writer: &mut W,
    command: &Command<'_>,
) -> Result<(), CodecError> {
    writer.write_all(&command.encode()).await?;
    Ok(())
}

/// Reads and decodes one reply.
pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Reply, CodecError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(CodecError::Length(len));
    }
    let mut packet = vec![0u8; len];
    reader.read_exact(&mut packet).await?;
    decode(&packet)
}

/// Decodes one reply packet (code and data, without the length).
pub fn decode(packet: &[u8]) -> Result<Reply, CodecError> {
    let Some((&code, data)) = packet.split_first() else {
        return Err(CodecError::Length(0));
    };
    let command = char::from(code);
    let bad = |why| CodecError::Malformed { command, why };
    let mut fields = Fields { data, bad: &bad };
    let reply = match code {
        b'O' => {
            let version = fields.u32()?;
            let actions = fields.u32()?;
            let steps = fields.u32()?;
            let mut macros = Vec::new();
            while !fields.data.is_empty() {
                if macros.len() >= 16 {
                    return Err(bad("more than 16 macro lists"));
                }
                let stage = fields.u32()?;
                macros.push((stage, fields.string()?));
            }
            Reply::OptNeg(Negotiated {
                version,
                actions,
                steps,
                macros,
            })
        }
        b'a' => Reply::Accept,
        b'c' => Reply::Continue,
        b'r' => Reply::Reject,
        b't' => Reply::Tempfail,
        b'd' => Reply::Discard,
        b's' => Reply::Skip,
        b'p' => Reply::Progress,
        b'y' => Reply::ReplyCode(fields.string()?),
        b'h' => Reply::AddHeader(fields.string()?, fields.string()?),
        b'i' => Reply::InsertHeader(fields.u32()?, fields.string()?, fields.string()?),
        b'm' => Reply::ChangeHeader(fields.u32()?, fields.string()?, fields.string()?),
        b'e' => {
            // The sender, then optional ESMTP arguments: only the address is used.
            let from = fields.string()?;
            fields.data = &[];
            Reply::ChangeFrom(from)
        }
        b'+' => Reply::AddRcpt(fields.string()?),
        b'2' => {
            let rcpt = fields.string()?;
            fields.data = &[];
            Reply::AddRcpt(rcpt)
        }
        b'-' => Reply::DelRcpt(fields.string()?),
        b'b' => {
            fields.data = &[];
            Reply::ReplaceBody
        }
        b'q' => Reply::Quarantine(fields.string()?),
        other => return Err(CodecError::Unknown(char::from(other))),
    };
    // libmilter pads nothing: bytes left over mean the packet is not what it says.
    // (OPTNEG's macro lists consume the rest above.)
    if !fields.data.is_empty() && !matches!(reply, Reply::Continue | Reply::Accept) {
        return Err(bad("bytes after the last field"));
    }
    Ok(reply)
}

/// A cursor over a packet's data.
struct Fields<'a, 'b> {
    data: &'a [u8],
    bad: &'b dyn Fn(&'static str) -> CodecError,
}

impl Fields<'_, '_> {
    fn u32(&mut self) -> Result<u32, CodecError> {
        let Some((head, rest)) = self.data.split_first_chunk::<4>() else {
            return Err((self.bad)("a number is cut short"));
        };
        self.data = rest;
        Ok(u32::from_be_bytes(*head))
    }

    /// A NUL-terminated string; not UTF-8 is refused (what it feeds, header fields and
    /// addresses, is checked as text afterwards anyway).
    fn string(&mut self) -> Result<String, CodecError> {
        let Some(end) = self.data.iter().position(|&b| b == 0) else {
            return Err((self.bad)("a string has no terminating NUL"));
        };
        let text = std::str::from_utf8(&self.data[..end])
            .map_err(|_| (self.bad)("a string is not UTF-8"))?
            .to_owned();
        self.data = &self.data[end + 1..];
        Ok(text)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Reply::OptNeg(_) => "optneg",
            Reply::Accept => "accept",
            Reply::Continue => "continue",
            Reply::Reject => "reject",
            Reply::Tempfail => "tempfail",
            Reply::Discard => "discard",
            Reply::ReplyCode(_) => "replycode",
            Reply::Skip => "skip",
            Reply::Progress => "progress",
            Reply::AddHeader(..) => "addheader",
            Reply::InsertHeader(..) => "insheader",
            Reply::ChangeHeader(..) => "chgheader",
            Reply::ChangeFrom(_) => "chgfrom",
            Reply::AddRcpt(_) => "addrcpt",
            Reply::DelRcpt(_) => "delrcpt",
            Reply::ReplaceBody => "replbody",
            Reply::Quarantine(_) => "quarantine",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut out = (u32::try_from(data.len() + 1).unwrap())
            .to_be_bytes()
            .to_vec();
        out.push(code);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn commands_are_framed_with_their_length_and_nul_terminated_strings() {
        let optneg = Command::OptNeg {
            actions: action::OFFERED,
            steps: step::OFFERED,
        }
        .encode();
        assert_eq!(&optneg[..5], &[0, 0, 0, 13, b'O']);
        assert_eq!(&optneg[5..9], &6u32.to_be_bytes());
        let connect = Command::Connect {
            hostname: "mx.example",
            address: Some("192.0.2.1:2525".parse().unwrap()),
        }
        .encode();
        assert_eq!(
            connect,
            packet(b'C', b"mx.example\x004\x09\xdd192.0.2.1\x00")
        );
        let args = ["<a@b.example>".to_owned(), "SIZE=10".to_owned()];
        assert_eq!(
            Command::Mail(&args).encode(),
            packet(b'M', b"<a@b.example>\x00SIZE=10\x00")
        );
        let macros = [("i", "ABC".to_owned()), ("{rcpt_addr}", "x@y".to_owned())];
        assert_eq!(
            Command::Macros {
                for_command: b'R',
                macros: &macros
            }
            .encode(),
            packet(b'D', b"Ri\x00ABC\x00{rcpt_addr}\x00x@y\x00")
        );
        assert_eq!(
            Command::Header("Subject", "a\0b").encode(),
            packet(b'L', b"Subject\x00a\x00")
        );
        assert_eq!(Command::Quit.encode(), packet(b'Q', b""));
    }

    #[tokio::test]
    async fn replies_decode_with_their_fields() {
        let mut data = Vec::new();
        data.extend_from_slice(&6u32.to_be_bytes());
        data.extend_from_slice(&0x11u32.to_be_bytes());
        data.extend_from_slice(&0x80u32.to_be_bytes());
        data.extend_from_slice(&2u32.to_be_bytes());
        data.extend_from_slice(b"{rcpt_addr}\0");
        let mut wire = packet(b'O', &data);
        wire.extend(packet(b'y', b"550 5.7.1 Gtube pattern\0"));
        let mut change = 2u32.to_be_bytes().to_vec();
        change.extend_from_slice(b"X-Spam\0\0");
        wire.extend(packet(b'm', &change));
        wire.extend(packet(b'h', b"X-Spamd-Result\0default: False\0"));
        wire.extend(packet(b'2', b"<new@x.example>\0NOTIFY=NEVER\0"));
        wire.extend(packet(b'a', b""));
        let mut reader = &wire[..];
        assert_eq!(
            read(&mut reader).await.unwrap(),
            Reply::OptNeg(Negotiated {
                version: 6,
                actions: 0x11,
                steps: 0x80,
                macros: vec![(2, "{rcpt_addr}".into())],
            })
        );
        assert_eq!(
            read(&mut reader).await.unwrap(),
            Reply::ReplyCode("550 5.7.1 Gtube pattern".into())
        );
        assert_eq!(
            read(&mut reader).await.unwrap(),
            Reply::ChangeHeader(2, "X-Spam".into(), String::new())
        );
        assert_eq!(
            read(&mut reader).await.unwrap(),
            Reply::AddHeader("X-Spamd-Result".into(), "default: False".into())
        );
        assert_eq!(
            read(&mut reader).await.unwrap(),
            Reply::AddRcpt("<new@x.example>".into())
        );
        assert_eq!(read(&mut reader).await.unwrap(), Reply::Accept);
        assert!(matches!(read(&mut reader).await, Err(CodecError::Io(_))));
    }

    #[tokio::test]
    async fn truncated_oversized_and_unknown_packets_are_errors() {
        // Cut off in the middle of a packet.
        let whole = packet(b'h', b"X-A\0b\0");
        let mut reader = &whole[..whole.len() - 2];
        assert!(matches!(read(&mut reader).await, Err(CodecError::Io(_))));
        // A length that would have us allocate a gigabyte.
        let mut reader = &[0x40u8, 0, 0, 0, b'c'][..];
        assert!(matches!(
            read(&mut reader).await,
            Err(CodecError::Length(0x4000_0000))
        ));
        let mut reader = &[0u8, 0, 0, 0][..];
        assert!(matches!(
            read(&mut reader).await,
            Err(CodecError::Length(0))
        ));
        // Codes the protocol does not have.
        assert!(matches!(decode(b"Zxyz"), Err(CodecError::Unknown('Z'))));
        // Fields cut short or not terminated.
        assert!(matches!(
            decode(b"hX-A\0b"),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"m\0\0"),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"O\0\0\0\x06"),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"y550 x\0junk"),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"h\xff\0v\0"),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn no_packet_makes_the_decoder_panic() {
        // A cheap deterministic fuzz: every reply code with random (often NUL-heavy)
        // data of random length; decoding may fail but never panics or loops.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let codes = b"Oacrtdyspbhime+2-qZ\0";
        for _ in 0..50_000 {
            let len = (next() % 40) as usize;
            let mut packet = vec![codes[(next() % codes.len() as u64) as usize]];
            for _ in 0..len {
                let byte = next() as u8;
                packet.push(if byte < 64 { 0 } else { byte });
            }
            let _ = decode(&packet);
        }
    }
}
