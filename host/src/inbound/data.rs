//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): receiving the message into the spool.
//!
//! Both stream what arrives through a decoder from `body.rs` into a spool
//! [`MessageWriter`], so memory stays bounded whatever the message size. A message that
//! breaks a rule (too big, bare line endings, over-long lines) is drained to its end and
//! then refused; nothing of it stays on disk. A good one is committed durably before the
//! 250 reply is queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tidegate_plugin_sdk::inspect::ParsedMessage;

use super::body::{ChunkScanner, DotReader, Violations};
use super::connection::FillEvent;
use super::hops::HopCounter;
use super::policy;
use super::received::Trace;
use super::reply::{Reply, codes};
use super::session::{Flow, Helo, Session, State, Transaction};
use crate::metrics::ListenerLabels;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Decision, Hook, StageInput};
use crate::spool::MessageWriter;
use crate::spool::envelope::{self, ClientInfo, Envelope, HeaderEdit};

/// RFC 5321 §4.5.3.1.6: a text line is at most 998 octets without its CRLF.
const MAX_TEXT_LINE: usize = 998;
/// Messages up to this size are parsed for on-data on the session's own task.
const INLINE_PARSE_LIMIT: usize = 128 * 1024;

/// A message arriving in BDAT chunks.
#[derive(Debug)]
pub struct ChunkedMessage {
    /// `None` once the message is known to be refused (too big, or a spool failure).
    writer: Option<MessageWriter>,
    scanner: ChunkScanner,
    spool_failed: bool,
    /// `Received:` fields seen so far in the client's data.
    hops: HopCounter,
    /// When the whole transfer must be over (`max_data_time_secs` after the first chunk).
    deadline: tokio::time::Instant,
}

/// Why reading the data stopped early.
enum Interrupted {
    Closed,
    TimedOut,
    /// The whole message took longer than `max_data_time_secs` (a trickle).
    TooSlow,
}

/// What on-data decided for a message that passed the built-in checks.
enum DataPolicy {
    Store,
    Refuse(Reply),
    Discard(String),
}

/// How a message stands once all its data has been read.
struct Outcome {
    violations: Violations,
    octets: u64,
    spool_failed: bool,
    /// `Received:` fields the message arrived with (ours not counted).
    hops: u32,
}

impl Session {
    /// Handles DATA: 354, then the data up to `CRLF.CRLF`, then the verdict.
    pub(super) async fn data(&mut self) -> Flow {
        if let Some(refusal) = self.refuse_data_now(false) {
            self.respond(refusal);
            return Flow::Continue;
        }
        let State::Transaction(helo, tx) = std::mem::replace(&mut self.state, State::AwaitingHelo)
        else {
            return Flow::Continue;
        };
        self.io
            .queue(&Reply::bare(354, "End data with <CR><LF>.<CR><LF>"));
        let mut writer = Some(self.start_message(&helo, &tx));
        let policy = self.live.config.smtp.bare_line_endings;
        let mut reader = DotReader::new(policy, MAX_TEXT_LINE);
        let mut spool_failed = false;
        let mut hops = HopCounter::new();
        let timeout = self.data_timeout();
        let deadline = tokio::time::Instant::now() + self.max_data_time();
        loop {
            if self.io.buffered().is_empty()
                && let Err(why) = self.fill_before(timeout, deadline).await
            {
                return self.interrupted(why);
            }
            // What this feed adds to the spool buffer is the decoded message: the hop
            // counter reads it there (our own trace header, written first, is not in it).
            let stored_before = writer.as_mut().map_or(0, |w| w.buffer().len());
            let fed = reader.feed(self.io.buffered(), writer.as_mut().map(|w| w.buffer()));
            if let Some(w) = writer.as_mut() {
                hops.feed(w.buffer().get(stored_before..).unwrap_or_default());
            }
            self.io.consume(fed.consumed);
            if reader.octets() > self.live.config.limits.max_message_size {
                writer = None;
            }
            if fed.complete {
                break;
            }
            if let Some(w) = writer.as_mut()
                && let Err(e) = w.flush_if_full().await
            {
                tracing::error!(error = %e, "spool write failed");
                writer = None;
                spool_failed = true;
            }
        }
        let outcome = Outcome {
            violations: reader.violations(),
            octets: reader.octets(),
            spool_failed,
            hops: hops.count(),
        };
        let reply = self.finish_message(&helo, tx, writer, outcome).await;
        self.state = State::Ready(helo);
        self.respond(reply);
        Flow::Continue
    }

    /// Handles `BDAT size [LAST]`. The chunk is always read, even when the command is
    /// refused, so that its bytes are never taken for commands.
    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Flow {
        let refusal = self.refuse_data_now(true);
        let timeout = self.data_timeout();
        let max_size = self.live.config.limits.max_message_size;
        let policy = self.live.config.smtp.bare_line_endings;
        let mut chunk = None;
        if refusal.is_none() {
            let existing = match &mut self.state {
                State::Transaction(_, tx) => tx.chunks.take(),
                _ => None,
            };
            chunk = match (existing, &self.state) {
                (Some(existing), _) => Some(existing),
                (None, State::Transaction(helo, tx)) => Some(Box::new(ChunkedMessage {
                    writer: Some(self.start_message(helo, tx)),
                    scanner: ChunkScanner::new(policy, MAX_TEXT_LINE),
                    spool_failed: false,
                    hops: HopCounter::new(),
                    deadline: tokio::time::Instant::now() + self.max_data_time(),
                })),
                (None, _) => None,
            };
        }
        // The limit covers the whole transfer, across chunks and the commands between
        // them: a client sending one small chunk at a time, each just inside the command
        // timeout, must not hold the session (and a spool file) forever.
        let deadline = chunk.as_ref().map_or_else(
            || tokio::time::Instant::now() + self.max_data_time(),
            |c| c.deadline,
        );
        if tokio::time::Instant::now() >= deadline {
            return self.interrupted(Interrupted::TooSlow);
        }
        let mut remaining = size;
        while remaining > 0 {
            if self.io.buffered().is_empty()
                && let Err(why) = self.fill_before(timeout, deadline).await
            {
                return self.interrupted(why);
            }
            let available = self.io.buffered();
            let take = available
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            if let Some(chunk) = chunk.as_mut() {
                let stored_before = chunk.writer.as_mut().map_or(0, |w| w.buffer().len());
                let out = chunk.writer.as_mut().map(|w| w.buffer());
                chunk.scanner.feed(&available[..take], out);
                if let Some(w) = chunk.writer.as_mut() {
                    chunk
                        .hops
                        .feed(w.buffer().get(stored_before..).unwrap_or_default());
                }
                if chunk.scanner.octets() > max_size {
                    chunk.writer = None;
                }
                if let Some(w) = chunk.writer.as_mut()
                    && let Err(e) = w.flush_if_full().await
                {
                    tracing::error!(error = %e, "spool write failed");
                    chunk.writer = None;
                    chunk.spool_failed = true;
                }
            }
            self.io.consume(take);
            remaining -= take as u64;
        }
        if let Some(refusal) = refusal {
            self.respond(refusal);
            return Flow::Continue;
        }
        let Some(mut chunk) = chunk else {
            return Flow::Continue;
        };
        if last {
            chunk
                .scanner
                .finish(chunk.writer.as_mut().map(|w| w.buffer()));
        }
        let outcome = Outcome {
            violations: chunk.scanner.violations(),
            octets: chunk.scanner.octets(),
            spool_failed: chunk.spool_failed,
            hops: chunk.hops.count(),
        };
        // A chunk that already dooms the message is refused at once (RFC 3030 §2: the
        // client must then stop sending chunks); pipelined chunks after it find no
        // transaction and are drained.
        let doomed = self.refusal_for(&outcome).is_some();
        if !last && !doomed {
            if let State::Transaction(_, tx) = &mut self.state {
                tx.chunks = Some(chunk);
            }
            self.respond(Reply::new(
                250,
                codes::OK,
                format!("Ok: {size} octets received"),
            ));
            return Flow::Continue;
        }
        let State::Transaction(helo, tx) = std::mem::replace(&mut self.state, State::AwaitingHelo)
        else {
            return Flow::Continue;
        };
        let reply = self.finish_message(&helo, tx, chunk.writer, outcome).await;
        self.state = State::Ready(helo);
        self.respond(reply);
        Flow::Continue
    }

    /// The refusal for DATA or BDAT in the current state, if any.
    fn refuse_data_now(&self, bdat: bool) -> Option<Reply> {
        match &self.state {
            State::AwaitingHelo | State::Ready(_) => Some(Reply::new(
                503,
                codes::INVALID_COMMAND,
                "Need MAIL and RCPT first",
            )),
            State::Transaction(_, tx) if tx.recipients.is_empty() => Some(Reply::new(
                554,
                codes::INVALID_COMMAND,
                "No valid recipients",
            )),
            State::Transaction(_, tx) if tx.chunks.is_some() && !bdat => Some(Reply::new(
                503,
                codes::INVALID_COMMAND,
                "DATA during a BDAT transfer",
            )),
            State::Transaction(..) => None,
        }
    }

    /// Opens a spool message and writes the `Received:` header at its top.
    fn start_message(&self, helo: &Helo, tx: &Transaction) -> MessageWriter {
        let mut writer = self.ctx.spool.new_message();
        let id = writer.id().to_string();
        let single = match tx.recipients.as_slice() {
            [(only, _)] => Some(only.as_str()),
            _ => None,
        };
        let hostname = self.live.config.hostname.to_string();
        let tls = self.io.stream().tls_summary();
        let trace = Trace {
            helo: &helo.name,
            client: self.peer,
            hostname: &hostname,
            protocol: protocol_keyword(helo, tx, tls.is_some(), self.authenticated.is_some()),
            tls: tls.as_deref(),
            id: &id,
            single_recipient: single,
            time: SystemTime::now(),
        };
        trace.write_to(writer.buffer());
        writer
    }

    /// The reply that refuses a fully read message, if it must be refused.
    fn refusal_for(&self, outcome: &Outcome) -> Option<Reply> {
        if outcome.octets > self.live.config.limits.max_message_size {
            Some(Reply::new(
                552,
                codes::TOO_BIG,
                "Message size exceeds fixed maximum message size",
            ))
        } else if outcome.violations.bare_line_ending {
            Some(Reply::new(
                550,
                codes::SYNTAX_ERROR,
                "Message contains bare CR or LF line endings, refused (see RFC 5321 section 2.3.8)",
            ))
        } else if outcome.violations.line_too_long {
            Some(Reply::new(
                500,
                codes::SYNTAX_ERROR,
                "Message line longer than 998 octets",
            ))
        } else if outcome.hops >= self.live.config.limits.max_hops {
            // With our own trace field the message would carry more than `max_hops`:
            // it is most likely circulating in a mail loop (RFC 5321 §6.3).
            Some(Reply::new(554, codes::ROUTING_LOOP, "Too many hops"))
        } else if outcome.spool_failed {
            Some(Reply::new(
                451,
                codes::SYSTEM_TEMPORARY,
                "Temporary local problem, try again later",
            ))
        } else {
            None
        }
    }

    /// Refuses or commits a fully read message and returns the final reply.
    async fn finish_message(
        &mut self,
        helo: &Helo,
        tx: Transaction,
        writer: Option<MessageWriter>,
        outcome: Outcome,
    ) -> Reply {
        let labels = ListenerLabels {
            listener: self.listener.to_string(),
        };
        if let Some(refusal) = self.refusal_for(&outcome) {
            tracing::info!(peer = %self.peer, reply = %refusal, plugins = %self.plugins.take_verdicts(), "message refused");
            self.ctx.events.emit(crate::events::Event::refused(
                crate::events::Stage::Data,
                &refusal,
                self.peer.ip(),
                Some(&tx.sender.to_string()),
                None,
            ));
            self.ctx
                .metrics
                .messages_refused
                .get_or_create(&labels)
                .inc();
            return refusal;
        }
        let Some(mut writer) = writer else {
            return Reply::new(
                451,
                codes::SYSTEM_TEMPORARY,
                "Temporary local problem, try again later",
            );
        };
        let id = writer.id();
        let mut envelope = Envelope {
            version: envelope::ENVELOPE_VERSION,
            id: id.to_string(),
            received_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sender: match &tx.sender {
                super::address::ReversePath::Null => None,
                super::address::ReversePath::Mailbox(mailbox) => Some(mailbox.to_string()),
            },
            mail_params: tx.mail_params.iter().map(to_envelope_param).collect(),
            recipients: tx
                .recipients
                .iter()
                .map(|(address, params)| envelope::Recipient {
                    address: address.clone(),
                    params: params.iter().map(to_envelope_param).collect(),
                })
                .collect(),
            body: tx.body,
            smtputf8: tx.smtputf8,
            client: ClientInfo {
                address: self.peer,
                helo: helo.name.clone(),
                listener: self.listener.to_string(),
                protocol: protocol_keyword(
                    helo,
                    &tx,
                    self.io.stream().is_tls(),
                    self.authenticated.is_some(),
                )
                .to_owned(),
                tls: self.io.stream().tls_summary(),
                authenticated: self.authenticated.clone(),
            },
            size: writer.size(),
            header_edits: Vec::new(),
            tags: BTreeMap::new(),
            quarantine: None,
        };
        let authenticating = self.checks.any()
            || !self.live.sender_auth.signer.is_empty()
            || self.live.sender_auth.sealer.is_some();
        let raw = if authenticating {
            match writer.contents().await {
                Ok(raw) => Some(raw),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the message back for sender authentication");
                    return Reply::new(
                        451,
                        codes::SYSTEM_TEMPORARY,
                        "Temporary local problem, try again later",
                    );
                }
            }
        } else {
            None
        };
        self.drop_forged_results(&mut envelope);
        if let Some(raw) = &raw {
            self.verify_message(raw, tx.spf.as_deref(), &mut envelope)
                .await;
        }
        if self.plugins.wants(Hook::Data) {
            match self.on_data(&mut writer, &mut envelope).await {
                DataPolicy::Store => {}
                DataPolicy::Refuse(reply) => {
                    tracing::info!(peer = %self.peer, reply = %reply, plugins = %self.plugins.take_verdicts(), "message refused by a plugin");
                    self.ctx.events.emit(crate::events::Event::refused(
                        crate::events::Stage::Data,
                        &reply,
                        self.peer.ip(),
                        envelope.sender.as_deref(),
                        None,
                    ));
                    self.ctx
                        .metrics
                        .messages_refused
                        .get_or_create(&labels)
                        .inc();
                    return reply;
                }
                DataPolicy::Discard(why) => {
                    tracing::info!(queue_id = %id, peer = %self.peer, reason = %why, "message discarded by policy");
                    return Reply::new(250, codes::OK, format!("Ok: queued as {id}"));
                }
            }
        }
        if let Some(raw) = &raw {
            // After every edit, on the bytes that will leave: the ARC seal, then the DKIM
            // signature over it all.
            self.seal_message(raw, tx.spf.as_deref(), &mut envelope)
                .await;
            self.sign_message(raw, &mut envelope).await;
        }
        envelope.tags.clone_from(&self.tags);
        // The start of the message for the `received` event's Message-ID, when events
        // are on and the message was not read back anyway.
        let head = match (&raw, self.ctx.events.is_enabled()) {
            (None, true) => writer.head(64 * 1024).await.ok(),
            _ => None,
        };
        let committed = writer.commit(&envelope).await;
        if let Ok(id) = &committed {
            let message_len = envelope.size;
            self.ctx.queue.enqueue(crate::spool::StoredMessage {
                id: *id,
                envelope: envelope.clone(),
                message_len,
            });
        }
        if let Ok(id) = &committed
            && self.ctx.events.is_enabled()
        {
            self.ctx.events.emit(received_event(
                *id,
                &envelope,
                raw.as_deref().or(head.as_deref()),
            ));
        }
        match committed {
            Ok(id) => {
                self.accepted += 1;
                // Mail moved: the NOOPs and RSETs around it were not junk.
                self.junk = 0;
                self.ctx
                    .metrics
                    .messages_accepted
                    .get_or_create(&labels)
                    .inc();
                tracing::info!(
                    queue_id = %id,
                    peer = %self.peer,
                    from = envelope.sender.as_deref().unwrap_or("<>"),
                    recipients = envelope.recipients.len(),
                    size = envelope.size,
                    plugins = %self.plugins.take_verdicts(),
                    "message accepted"
                );
                Reply::new(250, codes::OK, format!("Ok: queued as {id}"))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool commit failed");
                Reply::new(
                    451,
                    codes::SYSTEM_TEMPORARY,
                    "Temporary local problem, try again later",
                )
            }
        }
    }

    /// Runs on-data over the complete message and applies the chain's edits to the
    /// envelope.
    async fn on_data(&mut self, writer: &mut MessageWriter, envelope: &mut Envelope) -> DataPolicy {
        let raw = match writer.contents().await {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the message back for on-data");
                return DataPolicy::Refuse(Reply::new(
                    451,
                    codes::SYSTEM_TEMPORARY,
                    "Temporary local problem, try again later",
                ));
            }
        };
        // Parsing a typical message takes microseconds: handing it to the blocking pool
        // would cost more (two thread wake-ups) than it saves. Only a large message,
        // which could hold a worker for milliseconds, is parsed off the runtime.
        let message = if raw.len() <= INLINE_PARSE_LIMIT {
            Arc::new(ParsedMessage::parse(raw))
        } else {
            match tokio::task::spawn_blocking(move || ParsedMessage::parse(raw)).await {
                Ok(message) => Arc::new(message),
                Err(_) => {
                    return DataPolicy::Refuse(Reply::new(
                        451,
                        codes::SYSTEM_TEMPORARY,
                        "Temporary local problem, try again later",
                    ));
                }
            }
        };
        let input = StageInput::Data(
            w::Envelope {
                sender: envelope.sender.clone(),
                recipients: envelope
                    .recipients
                    .iter()
                    .map(|r| r.address.clone())
                    .collect(),
            },
            message,
        );
        self.plugins.set_queue_id(Some(envelope.id.clone()));
        let outcome = self.run_stage(input).await;
        self.plugins.set_queue_id(None);
        if let Some(refusal) = policy::refusal(&outcome.decision) {
            return DataPolicy::Refuse(refusal);
        }
        for edit in outcome.edits {
            match edit {
                w::Edit::AddHeader((name, value)) => {
                    envelope.header_edits.push(HeaderEdit::Add { name, value });
                }
                w::Edit::RemoveHeader(name) => {
                    envelope.header_edits.push(HeaderEdit::Remove { name })
                }
                w::Edit::ReplaceHeader((name, value)) => {
                    envelope
                        .header_edits
                        .push(HeaderEdit::Replace { name, value });
                }
                w::Edit::SetSender(sender) => envelope.sender = sender,
                // Recipients chosen by plugins are held to the client's rules: relay
                // control and the recipient limit.
                w::Edit::AddRecipient(address) => {
                    let known = envelope.recipients.iter().any(|r| r.address == address);
                    if !known && self.plugin_recipient_allowed(&address) {
                        if envelope.recipients.len() >= self.live.config.limits.max_recipients {
                            tracing::warn!(recipient = %address, "recipient added by a plugin is over max_recipients, dropped");
                        } else {
                            envelope.recipients.push(envelope::Recipient {
                                address,
                                params: Vec::new(),
                            });
                        }
                    }
                }
                w::Edit::RemoveRecipient(address) => {
                    envelope.recipients.retain(|r| r.address != address)
                }
                w::Edit::RewriteRecipient((from, to)) => {
                    if self.plugin_recipient_allowed(&to) {
                        for r in &mut envelope.recipients {
                            if r.address == from {
                                r.address.clone_from(&to);
                            }
                        }
                    } else {
                        envelope.recipients.retain(|r| r.address != from);
                    }
                }
                w::Edit::SetTag(_) => {}
            }
        }
        match outcome.decision {
            Decision::Discard(why) => DataPolicy::Discard(why),
            _ if envelope.recipients.is_empty() => {
                DataPolicy::Discard("plugins removed every recipient".into())
            }
            Decision::Quarantine(why) => {
                envelope.quarantine = Some(why);
                DataPolicy::Store
            }
            _ => DataPolicy::Store,
        }
    }

    /// The longest a whole message transfer may take.
    fn max_data_time(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.live.config.limits.max_data_time_secs)
    }

    /// Reads more message data, waiting at most `timeout`, and never past `deadline`.
    async fn fill_before(
        &mut self,
        timeout: std::time::Duration,
        deadline: tokio::time::Instant,
    ) -> Result<(), Interrupted> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(Interrupted::TooSlow);
        }
        match self.io.fill(timeout.min(left)).await {
            Ok(FillEvent::Filled) => Ok(()),
            Ok(FillEvent::Closed) | Err(_) => Err(Interrupted::Closed),
            Ok(FillEvent::TimedOut) if left <= timeout => Err(Interrupted::TooSlow),
            Ok(FillEvent::TimedOut) => Err(Interrupted::TimedOut),
        }
    }

    /// The client vanished or stalled in the middle of the data: the message is dropped
    /// (its writer removes the partial file) and nothing was acknowledged.
    fn interrupted(&mut self, why: Interrupted) -> Flow {
        self.state = State::AwaitingHelo;
        match why {
            Interrupted::Closed => {
                tracing::info!(peer = %self.peer, "connection lost during message data");
                Flow::Close
            }
            Interrupted::TimedOut => self.close_with(Reply::new(
                421,
                codes::TIMEOUT,
                format!("{} Error: timeout exceeded", self.live.config.hostname),
            )),
            Interrupted::TooSlow => {
                self.close_reason = Some("timeout");
                tracing::info!(peer = %self.peer, limit_secs = self.live.config.limits.max_data_time_secs, "message data took too long, closing");
                self.close_with(Reply::new(
                    421,
                    codes::TIMEOUT,
                    format!(
                        "{} Error: message data took too long, closing",
                        self.live.config.hostname
                    ),
                ))
            }
        }
    }
}

fn to_envelope_param(param: &super::address::Param) -> envelope::Param {
    envelope::Param {
        keyword: param.keyword.clone(),
        value: param.value.clone(),
    }
}

/// The `with` keyword of RFC 3848 / RFC 6531 for the `Received:` header.
/// (RFC 3848 adds S for TLS and A for AUTH: ESMTPS, ESMTPA, ESMTPSA, and the UTF8SMTP
/// forms likewise.)
fn protocol_keyword(helo: &Helo, tx: &Transaction, tls: bool, auth: bool) -> &'static str {
    match (helo.extended, tx.smtputf8, tls, auth) {
        (false, ..) => "SMTP",
        (true, false, false, false) => "ESMTP",
        (true, false, true, false) => "ESMTPS",
        (true, false, false, true) => "ESMTPA",
        (true, false, true, true) => "ESMTPSA",
        (true, true, false, false) => "UTF8SMTP",
        (true, true, true, false) => "UTF8SMTPS",
        (true, true, false, true) => "UTF8SMTPA",
        (true, true, true, true) => "UTF8SMTPSA",
    }
}

/// The `received` event of a message just committed; its `Message-ID:` is read from the
/// message's header when the message was read back anyway (`raw`).
fn received_event(
    id: crate::spool::QueueId,
    envelope: &crate::spool::Envelope,
    raw: Option<&[u8]>,
) -> crate::events::Event {
    let message_id = raw.and_then(|raw| {
        let header = &raw[..crate::spool::envelope::find_header_end(raw)];
        String::from_utf8_lossy(header)
            .split("\r\n")
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("message-id")
                    .then(|| value.trim().chars().take(998).collect::<String>())
            })
    });
    crate::events::Event::received(
        id,
        crate::events::Received {
            client_ip: envelope.client.address.ip(),
            helo: Some(envelope.client.helo.clone()),
            sender: envelope.sender.clone().unwrap_or_default(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            size: envelope.size,
            message_id,
            tags: envelope
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            listener: envelope.client.listener.clone(),
            tls: envelope.client.tls.is_some(),
            auth: envelope.client.authenticated.clone(),
        },
    )
}
