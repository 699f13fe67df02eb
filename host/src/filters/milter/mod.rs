//! The milter client: one connection per SMTP session to a Sendmail/Postfix milter
//! (protocol version 6), and the mapping of its replies onto the chain's verdicts and
//! edits.
//!
//! The connection is opened at the session's first MAIL FROM (a session that never sends
//! mail costs the milter nothing); the connect and HELO steps, which the session has
//! passed by then, are sent first from what the session knows. A milter that rejects at
//! connect or HELO therefore refuses that MAIL FROM. Between transactions the milter is
//! told ABORT, at the session's end QUIT. Steps the milter turns off in negotiation
//! (`SMFIP_NO*`) are not sent, and steps it answers without a reply (`SMFIP_NR_*`) are
//! not waited for.
//!
//! Replies map as Postfix maps them: accept (nothing more from this milter for the
//! message, or the session if given at connect), continue, reject (550 5.7.1), tempfail
//! (451 4.7.1), discard, quarantine, and a reply code of the milter's own (4xx or 5xx,
//! checked). At end of message the modifications become edits: add and insert header
//! (both at the top: Tidegate adds header fields above the message's own), change header
//! by index (the nth field of that name; an empty value deletes it; when the name occurs
//! more than once the other fields of that name are kept in order but move to the top),
//! change sender, add and delete recipient. Replacing the body is not offered in
//! negotiation (edits leave the spooled body as it is), and a milter that does it anyway
//! is a failing milter.
//!
//! Everything read is bounded: packets by [`codec::MAX_PACKET`], modifications by
//! [`MAX_MODIFICATIONS`], each wait by `timeout_ms` and the whole stage by the chain's
//! stage deadline.

pub mod codec;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufStream};

use self::codec::{Command, Negotiated, Reply, action, step};
use super::{Facts, Io, carry_on, garbage, too_slow, unreachable};
use crate::config::MilterConfig;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, StageInput};
use crate::plugins::limits::CallError;
use tidegate_plugin_sdk::check::limits as bounds;

/// The most modifications taken at one end of message.
pub const MAX_MODIFICATIONS: usize = 256;
/// The most `progress` replies taken while waiting for one answer (the stage deadline
/// bounds the time anyway).
const MAX_PROGRESS: usize = 1000;

/// One configured milter.
#[derive(Debug)]
pub struct Milter {
    /// The configured name.
    pub name: Arc<str>,
    /// Its table.
    pub config: MilterConfig,
    /// The gateway's name (the `j` macro).
    pub hostname: String,
}

impl Milter {
    /// A milter from its table.
    pub fn new(config: MilterConfig, hostname: &str) -> Milter {
        Milter {
            name: Arc::from(config.name.as_str()),
            config,
            hostname: hostname.to_owned(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }
}

/// The stages a milter is called at: the transaction's (connect and HELO are sent at the
/// first MAIL FROM).
pub fn wants(hook: Hook) -> bool {
    matches!(hook, Hook::MailFrom | Hook::RcptTo | Hook::Data)
}

/// An open, negotiated connection.
struct Connection {
    stream: BufStream<Box<dyn Io>>,
    negotiated: Negotiated,
}

/// One session's milter state.
pub struct MilterSession {
    milter: Arc<Milter>,
    connection: Option<Connection>,
    /// The milter accepted the whole session (at connect or HELO).
    session_accepted: bool,
    /// A transaction was started with MAIL and not ended by end of message.
    in_transaction: bool,
    /// The milter accepted the current message: nothing more is sent for it.
    message_accepted: bool,
    /// The milter asked to discard the current message (honoured at DATA).
    discard: bool,
    /// The current transaction's MAIL FROM never reached the milter (an element before
    /// it in the chain decided): nothing of the transaction is sent to it.
    unseen: bool,
    /// A call was under way when it was abandoned (its stage's deadline passed): the
    /// connection's state is unknown and it must not be used again.
    busy: bool,
}

impl MilterSession {
    pub(super) fn new(milter: Arc<Milter>) -> MilterSession {
        MilterSession {
            milter,
            connection: None,
            session_accepted: false,
            in_transaction: false,
            message_accepted: false,
            discard: false,
            // Made at its first stage: a transaction whose MAIL FROM it did not see.
            unseen: true,
            busy: false,
        }
    }

    /// A transaction begins: until its MAIL FROM reaches the milter, nothing of it does.
    pub(super) fn new_transaction(&mut self) {
        self.unseen = true;
        self.message_accepted = false;
        self.discard = false;
    }

    fn milter(&self) -> &Milter {
        &self.milter
    }

    /// Runs one stage; any failure drops the connection (the next MAIL FROM opens another).
    pub async fn stage(
        &mut self,
        input: &StageInput,
        facts: &Facts<'_>,
    ) -> Result<w::Response, CallError> {
        if self.busy {
            self.connection = None;
            self.in_transaction = false;
        }
        self.busy = true;
        let result = self.run(input, facts).await;
        self.busy = false;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn run(
        &mut self,
        input: &StageInput,
        facts: &Facts<'_>,
    ) -> Result<w::Response, CallError> {
        if let StageInput::MailFrom(info) = input {
            return self.mail(info, facts).await;
        }
        if self.session_accepted || self.message_accepted || self.unseen {
            return Ok(carry_on(Vec::new()));
        }
        if !self.in_transaction || self.connection.is_none() {
            return Err(unreachable(
                "the milter connection was lost earlier in this transaction",
            ));
        }
        match input {
            StageInput::RcptTo(info) => self.rcpt(info).await,
            StageInput::Data(envelope, message) => {
                let result = self.data(envelope, message.raw(), facts).await;
                self.in_transaction = false;
                result
            }
            _ => Ok(carry_on(Vec::new())),
        }
    }

    async fn mail(
        &mut self,
        info: &w::MailFromInfo,
        facts: &Facts<'_>,
    ) -> Result<w::Response, CallError> {
        self.message_accepted = false;
        self.discard = false;
        self.unseen = false;
        if self.session_accepted {
            return Ok(carry_on(Vec::new()));
        }
        if self.connection.is_none() {
            self.in_transaction = false;
            if let Some(verdict) = self.open(facts).await? {
                return Ok(self.respond(verdict, Hook::MailFrom));
            }
            if self.session_accepted {
                return Ok(carry_on(Vec::new()));
            }
        }
        if self.in_transaction {
            self.send(&Command::Abort).await?;
        }
        self.in_transaction = true;
        let sender = format!("<{}>", info.sender.as_deref().unwrap_or(""));
        let mut macros = vec![("{mail_addr}", info.sender.clone().unwrap_or_default())];
        if let Some(identity) = &facts.session.auth_identity {
            macros.push(("{auth_authen}", identity.clone()));
        }
        let mut args = vec![sender];
        args.extend(info.params.iter().map(esmtp_arg));
        let reply = self
            .step(
                b'M',
                &macros,
                &Command::Mail(&args),
                step::NOMAIL,
                step::NR_MAIL,
            )
            .await?;
        Ok(self.respond(reply, Hook::MailFrom))
    }

    async fn rcpt(&mut self, info: &w::RcptToInfo) -> Result<w::Response, CallError> {
        let macros = [("{rcpt_addr}", info.recipient.clone())];
        let mut args = vec![format!("<{}>", info.recipient)];
        args.extend(info.params.iter().map(esmtp_arg));
        let reply = self
            .step(
                b'R',
                &macros,
                &Command::Rcpt(&args),
                step::NORCPT,
                step::NR_RCPT,
            )
            .await?;
        Ok(self.respond(reply, Hook::RcptTo))
    }

    async fn data(
        &mut self,
        envelope: &w::Envelope,
        raw: &[u8],
        facts: &Facts<'_>,
    ) -> Result<w::Response, CallError> {
        if self.discard {
            return Ok(discard("discarded by milter"));
        }
        let queue_id = facts.queue_id.unwrap_or("").to_owned();
        let macros = [("i", queue_id.clone())];
        let reply = self
            .step(b'T', &macros, &Command::Data, step::NODATA, step::NR_DATA)
            .await?;
        if let Some(done) = self.final_reply(reply)? {
            return Ok(done);
        }
        let (fields, body) = split_message(raw);
        for (name, value) in &fields {
            let reply = self
                .step(
                    b'L',
                    &[],
                    &Command::Header(name, value),
                    step::NOHDRS,
                    step::NR_HDR,
                )
                .await?;
            if let Some(done) = self.final_reply(reply)? {
                return Ok(done);
            }
        }
        let reply = self
            .step(b'N', &[], &Command::EndOfHeader, step::NOEOH, step::NR_EOH)
            .await?;
        if let Some(done) = self.final_reply(reply)? {
            return Ok(done);
        }
        for chunk in body.chunks(codec::CHUNK) {
            let reply = self
                .step(
                    b'B',
                    &[],
                    &Command::Body(chunk),
                    step::NOBODY,
                    step::NR_BODY,
                )
                .await?;
            if reply == Some(Reply::Skip) {
                break;
            }
            if let Some(done) = self.final_reply(reply)? {
                return Ok(done);
            }
        }
        self.send_macros(b'E', &[("i", queue_id)]).await?;
        self.send(&Command::EndOfMessage).await?;
        self.end_of_message(envelope, &fields).await
    }

    /// Reads the modifications and the final reply of end of message.
    async fn end_of_message(
        &mut self,
        envelope: &w::Envelope,
        fields: &[(String, String)],
    ) -> Result<w::Response, CallError> {
        let actions = self.connection.as_ref().map_or(0, |c| c.negotiated.actions);
        let mut headers = HeaderIndex::new(fields);
        let mut edits = Vec::new();
        let mut quarantine = None;
        let mut modifications = 0usize;
        loop {
            let reply = self.read().await?;
            let allowed = |flag: u32, what: &str| {
                if actions & flag == 0 {
                    Err(garbage(format!(
                        "milter sent {what} without negotiating the action"
                    )))
                } else {
                    Ok(())
                }
            };
            match reply {
                Reply::Accept | Reply::Continue => break,
                Reply::Reject | Reply::Tempfail | Reply::ReplyCode(_) | Reply::Discard => {
                    // A refusal drops what the milter asked to change.
                    return Ok(self.respond(Some(reply), Hook::Data));
                }
                Reply::Skip | Reply::Progress | Reply::OptNeg(_) => {
                    return Err(garbage(format!("milter sent `{reply}` at end of message")));
                }
                modification => {
                    modifications += 1;
                    if modifications > MAX_MODIFICATIONS {
                        return Err(garbage(format!(
                            "milter sent more than {MAX_MODIFICATIONS} modifications"
                        )));
                    }
                    match modification {
                        Reply::AddHeader(name, value) => {
                            allowed(action::ADDHDRS, "add header")?;
                            push_header(&mut edits, &mut headers, name, value);
                        }
                        Reply::InsertHeader(_, name, value) => {
                            allowed(action::ADDHDRS, "insert header")?;
                            push_header(&mut edits, &mut headers, name, value);
                        }
                        Reply::ChangeHeader(index, name, value) => {
                            allowed(action::CHGHDRS, "change header")?;
                            let value = unfold(&value);
                            if value.len() > bounds::MAX_HEADER_VALUE {
                                tracing::warn!(header = %tidegate_plugin_sdk::check::quoted(&name), bytes = value.len(), "milter header field is too long to write unfolded, left as it is");
                            } else {
                                headers.change(&mut edits, index, &name, &value);
                            }
                        }
                        Reply::ChangeFrom(from) => {
                            allowed(action::CHGFROM, "change sender")?;
                            let from = unbracket(&from);
                            edits.push(w::Edit::SetSender(
                                (!from.is_empty()).then(|| from.to_owned()),
                            ));
                        }
                        Reply::AddRcpt(rcpt) => {
                            allowed(action::ADDRCPT | action::ADDRCPT_PAR, "add recipient")?;
                            edits.push(w::Edit::AddRecipient(unbracket(&rcpt).to_owned()));
                        }
                        Reply::DelRcpt(rcpt) => {
                            allowed(action::DELRCPT, "delete recipient")?;
                            let rcpt = unbracket(&rcpt);
                            // Compare as the envelope spells it (the chain canonicalises).
                            let known = envelope
                                .recipients
                                .iter()
                                .find(|r| r.eq_ignore_ascii_case(rcpt))
                                .cloned()
                                .unwrap_or_else(|| rcpt.to_owned());
                            edits.push(w::Edit::RemoveRecipient(known));
                        }
                        Reply::Quarantine(reason) => {
                            allowed(action::QUARANTINE, "quarantine")?;
                            quarantine = Some(if reason.is_empty() {
                                "quarantined by milter".to_owned()
                            } else {
                                reason
                            });
                        }
                        Reply::ReplaceBody => {
                            return Err(garbage(
                                "milter replaced the body, which Tidegate does not offer",
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(match quarantine {
            Some(reason) => w::Response {
                verdict: w::Verdict::Quarantine(reason),
                edits,
            },
            None => carry_on(edits),
        })
    }

    /// Connects, negotiates and sends the connect and HELO steps; returns a refusal if
    /// the milter gave one.
    async fn open(&mut self, facts: &Facts<'_>) -> Result<Option<Option<Reply>>, CallError> {
        let milter = self.milter();
        let timeout = milter.timeout();
        let address = milter.config.address.clone();
        let hostname = milter.hostname.clone();
        let stream = super::connect(&address, timeout).await?;
        let mut stream = BufStream::new(stream);
        let offer = Command::OptNeg {
            actions: action::OFFERED,
            steps: step::OFFERED,
        };
        write_to(&mut stream, &offer, timeout).await?;
        let negotiated = match read_from(&mut stream, timeout).await? {
            Reply::OptNeg(negotiated) => negotiated,
            other => {
                return Err(garbage(format!(
                    "milter answered option negotiation with `{other}`"
                )));
            }
        };
        if negotiated.version < 2 || negotiated.version > codec::VERSION {
            return Err(garbage(format!(
                "milter speaks protocol version {}, not 2 to {}",
                negotiated.version,
                codec::VERSION
            )));
        }
        let negotiated = Negotiated {
            // What it asks for beyond the offer is not granted (and refused if used).
            actions: negotiated.actions & action::OFFERED,
            steps: negotiated.steps & step::OFFERED,
            ..negotiated
        };
        tracing::debug!(milter = %milter.name, actions = negotiated.actions, steps = negotiated.steps, "milter negotiated");
        self.connection = Some(Connection { stream, negotiated });
        let session = facts.session;
        let ip: Option<std::net::IpAddr> = session.client_ip.parse().ok();
        let client_name = session
            .reverse_dns
            .clone()
            .unwrap_or_else(|| format!("[{}]", session.client_ip));
        let mut macros = vec![
            ("j", hostname.clone()),
            ("{daemon_name}", session.listener.clone()),
            ("{client_addr}", session.client_ip.clone()),
            ("{client_port}", session.client_port.to_string()),
            ("{client_name}", client_name.clone()),
            ("_", format!("{client_name} [{}]", session.client_ip)),
            ("v", "Tidegate".to_owned()),
        ];
        if let Some(tls) = &session.tls {
            macros.push(("{tls_version}", tls.version.clone()));
            macros.push(("{cipher}", tls.cipher.clone()));
        }
        let connect = Command::Connect {
            hostname: &client_name,
            address: ip.map(|ip| std::net::SocketAddr::new(ip, session.client_port)),
        };
        let reply = self
            .step(b'C', &macros, &connect, step::NOCONNECT, step::NR_CONN)
            .await?;
        if let Some(early) = self.session_reply(reply) {
            return Ok(Some(early));
        }
        if self.session_accepted {
            return Ok(None);
        }
        let helo = session.helo.clone().unwrap_or_else(|| hostname.clone());
        let reply = self
            .step(
                b'H',
                &[],
                &Command::Helo(&helo),
                step::NOHELO,
                step::NR_HELO,
            )
            .await?;
        Ok(self.session_reply(reply))
    }

    /// What a connect or HELO reply means: accept ends the milter's part in the session,
    /// a refusal is returned (for the MAIL FROM that opened the connection).
    fn session_reply(&mut self, reply: Option<Reply>) -> Option<Option<Reply>> {
        match reply {
            None | Some(Reply::Continue) => None,
            Some(Reply::Accept) => {
                self.session_accepted = true;
                self.end();
                None
            }
            Some(refusal) => {
                // A milter that refuses the connection is asked again by the next MAIL.
                self.connection = None;
                Some(Some(refusal))
            }
        }
    }

    /// A reply during DATA that ends the message (`None`: go on sending it).
    fn final_reply(&mut self, reply: Option<Reply>) -> Result<Option<w::Response>, CallError> {
        match reply {
            None | Some(Reply::Continue) | Some(Reply::Skip) => Ok(None),
            Some(Reply::Accept) => {
                self.message_accepted = true;
                Ok(Some(carry_on(Vec::new())))
            }
            Some(
                other @ (Reply::Reject | Reply::Tempfail | Reply::ReplyCode(_) | Reply::Discard),
            ) => Ok(Some(self.respond(Some(other), Hook::Data))),
            Some(other) => Err(garbage(format!(
                "milter sent `{other}` before end of message"
            ))),
        }
    }

    /// A reply to MAIL, RCPT or a final one, as a response.
    fn respond(&mut self, reply: Option<Reply>, hook: Hook) -> w::Response {
        let refused = |code: u16, enhanced: &str, text: &str| w::Reply {
            code,
            enhanced: enhanced.to_owned(),
            text: text.to_owned(),
        };
        let verdict = match reply {
            None | Some(Reply::Continue) => w::Verdict::Continue,
            Some(Reply::Accept) => {
                self.message_accepted = true;
                w::Verdict::Continue
            }
            Some(Reply::Reject) => w::Verdict::Reject(refused(550, "5.7.1", "Command rejected")),
            Some(Reply::Tempfail) => w::Verdict::Tempfail(refused(
                451,
                "4.7.1",
                "Service unavailable - try again later",
            )),
            Some(Reply::ReplyCode(line)) => match super::verdict_from_reply(
                line.lines().last().unwrap_or(""),
                "Command rejected",
            ) {
                Some(verdict) => verdict,
                // Not 4xx or 5xx: what Postfix does too, a temporary failure.
                None => w::Verdict::Tempfail(refused(
                    451,
                    "4.3.0",
                    "Temporary policy failure, try again later",
                )),
            },
            Some(Reply::Discard) if hook == Hook::Data => {
                w::Verdict::Discard("discarded by milter".to_owned())
            }
            Some(Reply::Discard) => {
                // Discarding is a message's fate: remembered until DATA.
                self.discard = true;
                w::Verdict::Continue
            }
            Some(_) => w::Verdict::Continue,
        };
        w::Response {
            verdict,
            edits: Vec::new(),
        }
    }

    /// Sends a step's macros and command unless the milter turned the step off, and reads
    /// its reply unless it said it gives none.
    async fn step(
        &mut self,
        code: u8,
        macros: &[(&str, String)],
        command: &Command<'_>,
        off: u32,
        no_reply: u32,
    ) -> Result<Option<Reply>, CallError> {
        let steps = self.connection.as_ref().map_or(0, |c| c.negotiated.steps);
        if steps & off != 0 {
            return Ok(None);
        }
        if !macros.is_empty() {
            self.send_macros(code, macros).await?;
        }
        self.send(command).await?;
        if steps & no_reply != 0 {
            return Ok(None);
        }
        self.read().await.map(Some)
    }

    async fn send_macros(&mut self, code: u8, macros: &[(&str, String)]) -> Result<(), CallError> {
        self.send(&Command::Macros {
            for_command: code,
            macros,
        })
        .await
    }

    async fn send(&mut self, command: &Command<'_>) -> Result<(), CallError> {
        let timeout = self.milter().timeout();
        let Some(connection) = self.connection.as_mut() else {
            return Err(unreachable("no milter connection"));
        };
        write_to(&mut connection.stream, command, timeout).await
    }

    /// Reads one reply, waiting through `progress` replies.
    async fn read(&mut self) -> Result<Reply, CallError> {
        let timeout = self.milter().timeout();
        let Some(connection) = self.connection.as_mut() else {
            return Err(unreachable("no milter connection"));
        };
        for _ in 0..MAX_PROGRESS {
            match read_from(&mut connection.stream, timeout).await? {
                Reply::Progress => continue,
                reply => return Ok(reply),
            }
        }
        Err(garbage("milter sent only progress replies"))
    }

    /// Ends the session's use of the milter: QUIT, in the background.
    pub fn end(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        if self.busy {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = connection.stream.write_all(&Command::Quit.encode()).await;
                    let _ = connection.stream.flush().await;
                })
                .await;
            });
        }
    }
}

impl Drop for MilterSession {
    fn drop(&mut self) {
        self.end();
    }
}

async fn write_to(
    stream: &mut BufStream<Box<dyn Io>>,
    command: &Command<'_>,
    timeout: Duration,
) -> Result<(), CallError> {
    match tokio::time::timeout(timeout, codec::write(stream, command)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(too_slow(format!(
            "milter took no data within timeout_ms ({} ms)",
            timeout.as_millis()
        ))),
    }
}

async fn read_from(
    stream: &mut BufStream<Box<dyn Io>>,
    timeout: Duration,
) -> Result<Reply, CallError> {
    // What was written is buffered until a reply is wanted: flush it first.
    let reading = async {
        stream.flush().await?;
        codec::read(stream).await
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(codec::CodecError::Io(e))) => Err(unreachable(format!("milter connection: {e}"))),
        Ok(Err(e)) => Err(garbage(e.to_string())),
        Err(_) => Err(too_slow(format!(
            "no answer from the milter within timeout_ms ({} ms)",
            timeout.as_millis()
        ))),
    }
}

fn discard(why: &str) -> w::Response {
    w::Response {
        verdict: w::Verdict::Discard(why.to_owned()),
        edits: Vec::new(),
    }
}

fn esmtp_arg(param: &w::Param) -> String {
    match &param.value {
        Some(value) => format!("{}={value}", param.keyword),
        None => param.keyword.clone(),
    }
}

fn unbracket(address: &str) -> &str {
    let address = address.trim();
    address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address)
}

/// A header value as a milter writes it, unfolded: Tidegate writes edited fields on one
/// line (the chain refuses CR and LF in them).
fn unfold(value: &str) -> String {
    value.replace("\r\n", "").replace(['\r', '\n'], "")
}

/// Adds a header field, unless it is too long to write on one line (a warning then: one
/// over-long field is no reason to fail the milter's whole answer).
fn push_header(edits: &mut Vec<w::Edit>, headers: &mut HeaderIndex, name: String, value: String) {
    let value = unfold(&value);
    if value.len() > bounds::MAX_HEADER_VALUE {
        tracing::warn!(header = %tidegate_plugin_sdk::check::quoted(&name), bytes = value.len(), "milter header field is too long to add unfolded, left out");
        return;
    }
    headers.added(&name);
    edits.push(w::Edit::AddHeader((name, value)));
}

/// The message's header fields by name, to turn "change the nth field called X" into
/// Tidegate's edits (which work on every field of a name).
struct HeaderIndex {
    by_name: HashMap<String, Vec<String>>,
}

impl HeaderIndex {
    fn new(fields: &[(String, String)]) -> HeaderIndex {
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in fields {
            by_name
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(unfold(value));
        }
        HeaderIndex { by_name }
    }

    /// A field added above the others: it becomes the first of its name.
    fn added(&mut self, name: &str) {
        let _ = self
            .by_name
            .get_mut(&name.to_ascii_lowercase())
            .map(|v| v.insert(0, String::new()));
    }

    fn change(&mut self, edits: &mut Vec<w::Edit>, index: u32, name: &str, value: &str) {
        let index = usize::try_from(index.max(1)).unwrap_or(usize::MAX) - 1;
        let values = self.by_name.entry(name.to_ascii_lowercase()).or_default();
        if index >= values.len() {
            // No such field: sendmail adds one for a value, and deletes nothing.
            if !value.is_empty() {
                edits.push(w::Edit::AddHeader((name.to_owned(), value.to_owned())));
                values.insert(0, value.to_owned());
            }
            return;
        }
        if value.is_empty() {
            values.remove(index);
        } else {
            values[index] = value.to_owned();
        }
        if values.len() <= 1 && index == 0 {
            edits.push(match values.first() {
                Some(value) => w::Edit::ReplaceHeader((name.to_owned(), value.clone())),
                None => w::Edit::RemoveHeader(name.to_owned()),
            });
            return;
        }
        // Several fields of the name: remove them all and add back the ones kept, in
        // order (each add goes on top, so the last first).
        edits.push(w::Edit::RemoveHeader(name.to_owned()));
        for value in values.iter().rev() {
            edits.push(w::Edit::AddHeader((name.to_owned(), value.clone())));
        }
    }
}

/// The header fields (name, value without the space after the colon, continuation lines
/// kept with their line breaks) and the body of a raw message.
fn split_message(raw: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let end = memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |i| at + i + 1);
        let line = &raw[at..end];
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            return (fields, &raw[end..]);
        }
        let line = String::from_utf8_lossy(text);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str("\r\n");
                value.push_str(&line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((
                name.to_owned(),
                value.strip_prefix(' ').unwrap_or(value).to_owned(),
            ));
        } else {
            // Not a header field: the body starts here (as mail parsers see it).
            return (fields, &raw[at..]);
        }
        at = end;
    }
    (fields, &raw[raw.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_splits_into_fields_and_body() {
        let raw = b"Received: from a\r\n\tby b\r\nSubject: hi\r\n\r\nbody\r\n";
        let (fields, body) = split_message(raw);
        assert_eq!(
            fields,
            vec![
                ("Received".to_owned(), "from a\r\n\tby b".to_owned()),
                ("Subject".to_owned(), "hi".to_owned())
            ]
        );
        assert_eq!(body, b"body\r\n");
        let (fields, body) = split_message(b"Subject: x\r\n");
        assert_eq!(fields.len(), 1);
        assert!(body.is_empty());
    }

    #[test]
    fn changing_the_nth_field_keeps_the_others() {
        let fields = vec![
            ("X-Spam".to_owned(), "old".to_owned()),
            ("Subject".to_owned(), "s".to_owned()),
        ];
        let mut index = HeaderIndex::new(&fields);
        let mut edits = Vec::new();
        index.change(&mut edits, 1, "X-Spam", "");
        index.change(&mut edits, 3, "X-Missing", "");
        index.change(&mut edits, 1, "Subject", "new");
        assert_eq!(
            format!("{edits:?}"),
            format!(
                "{:?}",
                vec![
                    w::Edit::RemoveHeader("X-Spam".into()),
                    w::Edit::ReplaceHeader(("Subject".into(), "new".into())),
                ]
            )
        );
        let fields = vec![
            ("X-A".to_owned(), "1".to_owned()),
            ("X-A".to_owned(), "2".to_owned()),
            ("X-A".to_owned(), "3".to_owned()),
        ];
        let mut index = HeaderIndex::new(&fields);
        let mut edits = Vec::new();
        index.change(&mut edits, 2, "x-a", "");
        assert_eq!(
            format!("{edits:?}"),
            format!(
                "{:?}",
                vec![
                    w::Edit::RemoveHeader("x-a".into()),
                    w::Edit::AddHeader(("x-a".into(), "3".into())),
                    w::Edit::AddHeader(("x-a".into(), "1".into())),
                ]
            )
        );
    }

    #[test]
    fn folded_values_are_unfolded_and_addresses_unbracketed() {
        assert_eq!(unfold("a;\r\n\tb;\n c"), "a;\tb; c");
        assert_eq!(unbracket(" <a@b.example> "), "a@b.example");
        assert_eq!(unbracket("<>"), "");
    }

    /// A milter on loopback that negotiates, then answers the first command after the
    /// connect and HELO steps with `then` (nothing at all when empty).
    async fn hostile(then: Vec<u8>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut optneg = 6u32.to_be_bytes().to_vec();
            optneg.extend_from_slice(&action::ADDHDRS.to_be_bytes());
            // No connect or HELO step, no reply to MAIL's macros.
            optneg.extend_from_slice(&(step::NOCONNECT | step::NOHELO).to_be_bytes());
            let mut packet = u32::try_from(optneg.len() + 1)
                .unwrap()
                .to_be_bytes()
                .to_vec();
            packet.push(b'O');
            packet.extend_from_slice(&optneg);
            let mut buf = vec![0u8; 65536];
            let _ = c.read(&mut buf).await;
            c.write_all(&packet).await.unwrap();
            let _ = c.read(&mut buf).await;
            if !then.is_empty() {
                let _ = c.write_all(&then).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        address
    }

    fn session_for(address: std::net::SocketAddr) -> MilterSession {
        MilterSession::new(Arc::new(Milter::new(
            MilterConfig {
                name: "m".into(),
                address: crate::config::FilterAddress::Tcp(address),
                timeout_ms: 300,
                on_error: crate::config::OnError::Tempfail,
            },
            "gw.example",
        )))
    }

    async fn mail(session: &mut MilterSession) -> Result<w::Response, CallError> {
        let info = w::SessionInfo {
            client_ip: "192.0.2.1".into(),
            client_port: 1,
            listener: "mx".into(),
            reverse_dns: None,
            helo: Some("c.example".into()),
            tls: None,
            auth_identity: None,
        };
        let facts = Facts {
            session: &info,
            queue_id: None,
        };
        let input = StageInput::MailFrom(w::MailFromInfo {
            sender: Some("a@b.example".into()),
            params: Vec::new(),
        });
        session.stage(&input, &facts).await
    }

    #[tokio::test]
    async fn garbage_silence_and_oversized_packets_are_failures_never_hangs() {
        use crate::plugins::limits::Failure;
        let started = std::time::Instant::now();
        let mut s = session_for(hostile(b"\0\0\0\x05Zjunk".to_vec()).await);
        assert_eq!(mail(&mut s).await.unwrap_err().kind, Failure::Invalid);
        let mut s = session_for(hostile(vec![0x7f, 0, 0, 0, b'c']).await);
        assert_eq!(mail(&mut s).await.unwrap_err().kind, Failure::Invalid);
        let mut s = session_for(hostile(Vec::new()).await);
        assert_eq!(mail(&mut s).await.unwrap_err().kind, Failure::Time);
        // A reply code that is not 4xx or 5xx is a temporary failure, as in Postfix.
        let mut s = session_for(hostile(b"\0\0\0\x0ay250 fine\0".to_vec()).await);
        let response = mail(&mut s).await.unwrap();
        assert!(matches!(response.verdict, w::Verdict::Tempfail(_)));
        // Nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut s = session_for(closed);
        assert_eq!(mail(&mut s).await.unwrap_err().kind, Failure::Init);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// A scripted milter: negotiates every action, answers continue to each command, and
    /// at end of message sends `modifications` and then `last`. Returns the command codes
    /// it saw, in order.
    async fn scripted(
        modifications: Vec<Vec<u8>>,
        last: Vec<u8>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        fn packet(code: u8, data: &[u8]) -> Vec<u8> {
            let mut out = u32::try_from(data.len() + 1)
                .unwrap()
                .to_be_bytes()
                .to_vec();
            out.push(code);
            out.extend_from_slice(data);
            out
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            loop {
                let mut len = [0u8; 4];
                if c.read_exact(&mut len).await.is_err() {
                    return seen;
                }
                let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
                c.read_exact(&mut data).await.unwrap();
                let code = data[0];
                seen.push(code);
                match code {
                    b'O' => {
                        let mut reply = 6u32.to_be_bytes().to_vec();
                        reply.extend_from_slice(&action::OFFERED.to_be_bytes());
                        reply.extend_from_slice(&0u32.to_be_bytes());
                        c.write_all(&packet(b'O', &reply)).await.unwrap();
                    }
                    b'D' | b'A' => {}
                    b'Q' => return seen,
                    b'E' => {
                        for m in &modifications {
                            c.write_all(m).await.unwrap();
                        }
                        c.write_all(&last).await.unwrap();
                    }
                    _ => c.write_all(&packet(b'c', b"")).await.unwrap(),
                }
            }
        });
        (address, task)
    }

    fn reply_packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(data.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        out.push(code);
        out.extend_from_slice(data);
        out
    }

    async fn transaction(session: &mut MilterSession) -> w::Response {
        let info = w::SessionInfo {
            client_ip: "192.0.2.1".into(),
            client_port: 1,
            listener: "mx".into(),
            reverse_dns: None,
            helo: Some("c.example".into()),
            tls: None,
            auth_identity: None,
        };
        let facts = Facts {
            session: &info,
            queue_id: Some("Q1"),
        };
        let mail = StageInput::MailFrom(w::MailFromInfo {
            sender: Some("a@b.example".into()),
            params: Vec::new(),
        });
        let response = session.stage(&mail, &facts).await.unwrap();
        assert!(matches!(response.verdict, w::Verdict::Continue));
        let rcpt = StageInput::RcptTo(w::RcptToInfo {
            recipient: "r@c.example".into(),
            params: Vec::new(),
        });
        let response = session.stage(&rcpt, &facts).await.unwrap();
        assert!(matches!(response.verdict, w::Verdict::Continue));
        let message = Arc::new(tidegate_plugin_sdk::inspect::ParsedMessage::parse(
            b"Subject: hi\r\nX-Old: 1\r\n\r\nbody\r\n".to_vec(),
        ));
        let data = StageInput::Data(
            w::Envelope {
                sender: Some("a@b.example".into()),
                recipients: vec!["r@c.example".into()],
            },
            message,
        );
        session.stage(&data, &facts).await.unwrap()
    }

    #[tokio::test]
    async fn end_of_message_modifications_become_edits_and_quarantine() {
        let mut change = 1u32.to_be_bytes().to_vec();
        change.extend_from_slice(b"X-Old\0\0");
        let mut insert = 0u32.to_be_bytes().to_vec();
        insert.extend_from_slice(b"X-First\0top\0");
        let modifications = vec![
            reply_packet(b'h', b"X-Scanned\0yes,\r\n\tfolded\0"),
            reply_packet(b'i', &insert),
            reply_packet(b'm', &change),
            reply_packet(b'e', b"<new@b.example>\0"),
            reply_packet(b'+', b"<added@c.example>\0"),
            reply_packet(b'-', b"<R@c.example>\0"),
            reply_packet(b'q', b"suspicious\0"),
        ];
        let (address, task) = scripted(modifications, reply_packet(b'a', b"")).await;
        let mut session = session_for(address);
        let response = transaction(&mut session).await;
        assert!(
            matches!(&response.verdict, w::Verdict::Quarantine(why) if why == "suspicious"),
            "{:?}",
            response.verdict
        );
        assert_eq!(
            format!("{:?}", response.edits),
            format!(
                "{:?}",
                vec![
                    w::Edit::AddHeader(("X-Scanned".into(), "yes,\tfolded".into())),
                    w::Edit::AddHeader(("X-First".into(), "top".into())),
                    w::Edit::RemoveHeader("X-Old".into()),
                    w::Edit::SetSender(Some("new@b.example".into())),
                    w::Edit::AddRecipient("added@c.example".into()),
                    w::Edit::RemoveRecipient("r@c.example".into()),
                ]
            )
        );
        // Two more transactions on the same connection, the first abandoned after MAIL
        // (RSET): no ABORT after an end of message, one before the MAIL that follows an
        // abandoned transaction; the session's end says QUIT.
        let info = w::SessionInfo {
            client_ip: "192.0.2.1".into(),
            client_port: 1,
            listener: "mx".into(),
            reverse_dns: None,
            helo: Some("c.example".into()),
            tls: None,
            auth_identity: None,
        };
        let facts = Facts {
            session: &info,
            queue_id: None,
        };
        let mail = StageInput::MailFrom(w::MailFromInfo {
            sender: None,
            params: Vec::new(),
        });
        for _ in 0..2 {
            session.new_transaction();
            session.stage(&mail, &facts).await.unwrap();
        }
        session.end();
        let seen = task.await.unwrap();
        assert_eq!(
            String::from_utf8(seen).unwrap(),
            "ODCHDMDRDTLLNBDE".to_owned() + "DM" + "ADM" + "Q",
            "negotiate, connect, helo, mail, rcpt, data, two headers, eoh, body, eom; \
             mail; abort, mail; quit"
        );
    }

    #[tokio::test]
    async fn a_body_replacement_or_an_unnegotiated_action_fails_the_milter() {
        let (address, _task) = scripted(
            vec![reply_packet(b'b', b"new body")],
            reply_packet(b'c', b""),
        )
        .await;
        let mut session = session_for(address);
        let info = w::SessionInfo {
            client_ip: "192.0.2.1".into(),
            client_port: 1,
            listener: "mx".into(),
            reverse_dns: None,
            helo: Some("c.example".into()),
            tls: None,
            auth_identity: None,
        };
        let facts = Facts {
            session: &info,
            queue_id: None,
        };
        let mail = StageInput::MailFrom(w::MailFromInfo {
            sender: None,
            params: Vec::new(),
        });
        session.stage(&mail, &facts).await.unwrap();
        let message = Arc::new(tidegate_plugin_sdk::inspect::ParsedMessage::parse(
            b"Subject: x\r\n\r\nx\r\n".to_vec(),
        ));
        let data = StageInput::Data(
            w::Envelope {
                sender: None,
                recipients: vec![],
            },
            message,
        );
        let error = session.stage(&data, &facts).await.unwrap_err();
        assert_eq!(error.kind, crate::plugins::limits::Failure::Invalid);
        assert!(error.why.contains("replaced the body"), "{error}");
    }
}
