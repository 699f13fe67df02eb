//! The Postfix SMTPD policy delegation client: `name=value` requests to a policy server
//! (postgrey, policyd-spf, ...) at the protocol states it is configured for, and its
//! `action=` replies as verdicts.
//!
//! Connections are pooled per service and reused across requests and sessions, as
//! Postfix does (a server that closes after each answer costs a reconnect, nothing
//! more); a reused connection that turns out dead is replaced once. Replies map as
//! Postfix maps them:
//! - `OK` and `DUNNO`: the stage goes on (in Postfix both just end this one restriction;
//!   Tidegate's own checks have run before the chain, so OK grants nothing more);
//! - `REJECT [text]`: 550 5.7.1; `DEFER`, `DEFER_IF_PERMIT` and `DEFER_IF_REJECT`
//!   `[text]`: 450 4.7.1 (there is no later restriction for the `_IF_` forms to wait
//!   for); `NNN [x.y.z] text` with a 4xx or 5xx code: that reply;
//! - `PREPEND name: value`: the header field is added to the message (kept until the
//!   message is in, since header edits are an end-of-message thing);
//! - `HOLD [text]`: the message is quarantined; `DISCARD [text]`: it is dropped;
//! - `WARN text`: logged; `REDIRECT`, `FILTER` and `BCC` (which need Postfix's
//!   transports): refused with a logged warning, the stage goes on;
//! - anything else, or no `action=`, is a failing server: its `on_error` applies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
use tokio::sync::Semaphore;

use super::{Facts, Io, carry_on, garbage, too_slow, unreachable};
use crate::config::{PolicyServiceConfig, PolicyStage};
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, StageInput};
use crate::plugins::limits::CallError;
use tidegate_plugin_sdk::check;

/// The longest reply line taken (Postfix's own limit is 2048 bytes by default).
const MAX_LINE: usize = 4096;
/// The most attribute lines in one reply.
const MAX_ATTRIBUTES: usize = 32;
/// The most PREPENDed header fields one transaction collects.
const MAX_PREPENDS: usize = 16;

/// One configured policy service and its pool of open connections.
pub struct PolicyService {
    /// The configured name.
    pub name: Arc<str>,
    /// Its table.
    pub config: PolicyServiceConfig,
    idle: Mutex<Vec<BufStream<Box<dyn Io>>>>,
    in_use: Semaphore,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("name", &self.name)
            .field("address", &self.config.address)
            .finish_non_exhaustive()
    }
}

impl PolicyService {
    /// A service from its table.
    pub fn new(config: PolicyServiceConfig) -> PolicyService {
        PolicyService {
            name: Arc::from(config.name.as_str()),
            in_use: Semaphore::new(config.max_connections),
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn asks_at(&self, stage: PolicyStage) -> bool {
        self.config.stages.contains(&stage)
    }

    /// Whether it is called at `hook`: at its stages, and always at MAIL FROM (a new
    /// transaction), at HELO (EHLO or HELO is `protocol_name`) and at the end of the
    /// message (where what it asked to prepend, hold or discard is applied).
    pub fn wants(&self, hook: Hook) -> bool {
        match hook {
            Hook::Connect => self.asks_at(PolicyStage::Connect),
            // Always at HELO too: whether the client said EHLO is `protocol_name`.
            Hook::Helo => true,
            Hook::Auth => false,
            Hook::MailFrom | Hook::Data => true,
            Hook::RcptTo => self.asks_at(PolicyStage::Rcpt),
        }
    }

    /// Sends one request and returns the reply's `action=` value.
    async fn ask(&self, request: &str) -> Result<String, CallError> {
        let timeout = self.timeout();
        let _permit = tokio::time::timeout(timeout, self.in_use.acquire())
            .await
            .map_err(|_| too_slow("every connection to the policy service stayed busy"))?
            .map_err(|_| unreachable("the policy service is shut down"))?;
        let pooled = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => BufStream::new(super::connect(&self.config.address, timeout).await?),
        };
        let answer = match exchange(&mut stream, request, timeout).await {
            Err(error) if reused && error.kind != crate::plugins::limits::Failure::Invalid => {
                // The server may have closed an idle connection: one fresh try.
                stream = BufStream::new(super::connect(&self.config.address, timeout).await?);
                exchange(&mut stream, request, timeout).await
            }
            other => other,
        }?;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.config.max_connections
        {
            idle.push(stream);
        }
        Ok(answer)
    }
}

/// Writes a request and reads the reply's attributes up to the empty line.
async fn exchange(
    stream: &mut BufStream<Box<dyn Io>>,
    request: &str,
    timeout: Duration,
) -> Result<String, CallError> {
    let talk = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| unreachable(format!("policy service connection: {e}")))?;
        stream
            .flush()
            .await
            .map_err(|e| unreachable(format!("policy service connection: {e}")))?;
        let mut action = None;
        for _ in 0..=MAX_ATTRIBUTES {
            let line = read_line(stream).await?;
            if line.is_empty() {
                return action
                    .ok_or_else(|| garbage("the policy service answered without an action"));
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(garbage(format!(
                    "policy service sent `{}`, not name=value",
                    check::quoted(&line)
                )));
            };
            if name == "action" {
                action = Some(value.to_owned());
            }
        }
        Err(garbage(format!(
            "policy service sent more than {MAX_ATTRIBUTES} attributes"
        )))
    };
    tokio::time::timeout(timeout, talk).await.map_err(|_| {
        too_slow(format!(
            "no answer from the policy service within timeout_ms ({} ms)",
            timeout.as_millis()
        ))
    })?
}

/// One reply line without its line end, at most [`MAX_LINE`] bytes.
async fn read_line(stream: &mut BufStream<Box<dyn Io>>) -> Result<String, CallError> {
    let mut line = Vec::new();
    loop {
        let buffer = stream
            .fill_buf()
            .await
            .map_err(|e| unreachable(format!("policy service connection: {e}")))?;
        if buffer.is_empty() {
            return Err(unreachable("the policy service closed the connection"));
        }
        let (taken, done) = match memchr::memchr(b'\n', buffer) {
            Some(i) => (i + 1, true),
            None => (buffer.len(), false),
        };
        line.extend_from_slice(&buffer[..taken]);
        stream.consume(taken);
        if line.len() > MAX_LINE + 1 {
            return Err(garbage(format!(
                "policy service sent a line over {MAX_LINE} bytes"
            )));
        }
        if done {
            break;
        }
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| garbage("policy service sent a line that is not UTF-8"))
}

/// One session's state with a policy service: the transaction's instance id and what
/// the server asked to do to the message.
pub struct PolicySession {
    service: Arc<PolicyService>,
    instance: String,
    sender: Option<String>,
    /// The client said EHLO (what a session without a HELO yet is taken to say too).
    extended: bool,
    size: Option<String>,
    prepends: Vec<(String, String)>,
    hold: Option<String>,
    discard: Option<String>,
}

impl PolicySession {
    pub(super) fn new(service: Arc<PolicyService>) -> PolicySession {
        let mut session = PolicySession {
            service,
            instance: String::new(),
            sender: None,
            extended: true,
            size: None,
            prepends: Vec::new(),
            hold: None,
            discard: None,
        };
        session.new_transaction();
        session
    }

    /// Asks the service about one stage (when configured for it).
    pub async fn stage(
        &mut self,
        input: &StageInput,
        facts: &Facts<'_>,
    ) -> Result<w::Response, CallError> {
        let (state, recipient) = match input {
            StageInput::Connect(_) => (PolicyStage::Connect, None),
            StageInput::Helo(info) => {
                self.extended = info.extended;
                (PolicyStage::Helo, None)
            }
            StageInput::MailFrom(info) => {
                self.begin_transaction(info);
                (PolicyStage::Mail, None)
            }
            StageInput::RcptTo(info) => (PolicyStage::Rcpt, Some(info.recipient.as_str())),
            StageInput::Data(..) => (PolicyStage::EndOfMessage, None),
            StageInput::Auth(_) => return Ok(carry_on(Vec::new())),
        };
        if self.service.asks_at(state) {
            let (recipients, size) = match input {
                StageInput::Data(envelope, message) => (
                    envelope.recipients.len(),
                    Some(message.raw().len().to_string()),
                ),
                _ => (0, None),
            };
            let request = self.request(state, recipient, recipients, size, facts);
            let action = self.service.ask(&request).await?;
            let verdict = self.act(&action)?;
            if !matches!(verdict, w::Verdict::Continue) {
                return Ok(w::Response {
                    verdict,
                    edits: Vec::new(),
                });
            }
        }
        if state == PolicyStage::EndOfMessage {
            return Ok(self.end_of_message());
        }
        Ok(carry_on(Vec::new()))
    }

    /// A transaction begins: a new instance id, and nothing collected for the last one.
    pub(super) fn new_transaction(&mut self) {
        // Unique per transaction, as Postfix's is, so a server can tie RCPTs together:
        // a process-wide count, with the process id and the time for restarts.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.instance = format!(
            "{:x}.{:x}.{n:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        self.sender = None;
        self.size = None;
        self.prepends.clear();
        self.hold = None;
        self.discard = None;
    }

    /// The transaction's MAIL FROM, for the requests that follow.
    fn begin_transaction(&mut self, info: &w::MailFromInfo) {
        self.sender = info.sender.clone();
        self.size = info
            .params
            .iter()
            .find(|p| p.keyword.eq_ignore_ascii_case("SIZE"))
            .and_then(|p| p.value.clone());
    }

    /// What was collected for the message, as the end-of-message response.
    fn end_of_message(&mut self) -> w::Response {
        let edits = self.prepends.drain(..).map(w::Edit::AddHeader).collect();
        let verdict = if let Some(why) = self.discard.take() {
            w::Verdict::Discard(why)
        } else if let Some(why) = self.hold.take() {
            w::Verdict::Quarantine(why)
        } else {
            w::Verdict::Continue
        };
        w::Response { verdict, edits }
    }

    /// The request: Postfix's attribute set, one `name=value` line each, an empty line
    /// at the end. Values are single-line (control characters become `?`).
    fn request(
        &self,
        state: PolicyStage,
        recipient: Option<&str>,
        recipients: usize,
        size: Option<String>,
        facts: &Facts<'_>,
    ) -> String {
        let session = facts.session;
        let state_name = match state {
            PolicyStage::Connect => "CONNECT",
            PolicyStage::Helo => "HELO",
            PolicyStage::Mail => "MAIL",
            PolicyStage::Rcpt => "RCPT",
            PolicyStage::EndOfMessage => "END-OF-MESSAGE",
        };
        let in_transaction = !matches!(state, PolicyStage::Connect | PolicyStage::Helo);
        let tls = session.tls.as_ref();
        let client_name = session
            .reverse_dns
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let attributes: [(&str, String); 23] = [
            ("request", "smtpd_access_policy".into()),
            ("protocol_state", state_name.into()),
            (
                "protocol_name",
                if self.extended { "ESMTP" } else { "SMTP" }.into(),
            ),
            ("helo_name", session.helo.clone().unwrap_or_default()),
            ("queue_id", facts.queue_id.unwrap_or("").into()),
            (
                "sender",
                if in_transaction {
                    self.sender.clone().unwrap_or_default()
                } else {
                    String::new()
                },
            ),
            ("recipient", recipient.unwrap_or("").into()),
            ("recipient_count", recipients.to_string()),
            ("client_address", session.client_ip.clone()),
            ("client_port", session.client_port.to_string()),
            ("client_name", client_name.clone()),
            ("reverse_client_name", client_name),
            (
                "instance",
                if in_transaction {
                    self.instance.clone()
                } else {
                    String::new()
                },
            ),
            // The mechanism is not among the session's facts.
            ("sasl_method", String::new()),
            (
                "sasl_username",
                session.auth_identity.clone().unwrap_or_default(),
            ),
            ("sasl_sender", String::new()),
            (
                "size",
                size.or_else(|| in_transaction.then(|| self.size.clone()).flatten())
                    .unwrap_or_else(|| "0".into()),
            ),
            ("ccert_subject", String::new()),
            ("ccert_issuer", String::new()),
            ("ccert_fingerprint", String::new()),
            (
                "encryption_protocol",
                tls.map(|t| t.version.clone()).unwrap_or_default(),
            ),
            (
                "encryption_cipher",
                tls.map(|t| t.cipher.clone()).unwrap_or_default(),
            ),
            ("server_address", String::new()),
        ];
        let mut request = String::with_capacity(512);
        for (name, value) in attributes {
            request.push_str(name);
            request.push('=');
            request.extend(value.chars().map(|c| if c.is_control() { '?' } else { c }));
            request.push('\n');
        }
        request.push('\n');
        request
    }

    /// Maps an `action=` value onto a verdict, collecting what applies at end of message.
    fn act(&mut self, action: &str) -> Result<w::Verdict, CallError> {
        let (word, text) = action
            .trim()
            .split_once(char::is_whitespace)
            .map_or((action.trim(), ""), |(w, t)| (w, t.trim()));
        let name = &self.service.name;
        let reply = |code, enhanced: &str, default: &str| w::Reply {
            code,
            enhanced: enhanced.to_owned(),
            text: if text.is_empty() { default } else { text }.to_owned(),
        };
        Ok(match word.to_ascii_uppercase().as_str() {
            "OK" | "DUNNO" => w::Verdict::Continue,
            "REJECT" => w::Verdict::Reject(reply(550, "5.7.1", "Access denied")),
            "DEFER" | "DEFER_IF_PERMIT" | "DEFER_IF_REJECT" => {
                w::Verdict::Tempfail(reply(450, "4.7.1", "Try again later"))
            }
            "PREPEND" => {
                let Some((field, value)) = text.split_once(':') else {
                    return Err(garbage("PREPEND without `name: value`"));
                };
                let (field, value) = (field.trim(), value.trim());
                check::header(field, value).map_err(garbage)?;
                if self.prepends.len() >= MAX_PREPENDS {
                    return Err(garbage(format!(
                        "more than {MAX_PREPENDS} PREPENDs in one transaction"
                    )));
                }
                self.prepends.push((field.to_owned(), value.to_owned()));
                w::Verdict::Continue
            }
            "HOLD" => {
                self.hold = Some(
                    if text.is_empty() {
                        "held by policy service"
                    } else {
                        text
                    }
                    .to_owned(),
                );
                w::Verdict::Continue
            }
            "DISCARD" => {
                self.discard = Some(
                    if text.is_empty() {
                        "discarded by policy service"
                    } else {
                        text
                    }
                    .to_owned(),
                );
                w::Verdict::Continue
            }
            "WARN" => {
                tracing::warn!(policy_service = %name, warning = %check::quoted(text), "policy service warning");
                w::Verdict::Continue
            }
            "REDIRECT" | "FILTER" | "BCC" => {
                tracing::warn!(policy_service = %name, action = word, "policy service action not supported by Tidegate, ignored");
                w::Verdict::Continue
            }
            _ => match super::verdict_from_reply(action, "Access denied") {
                Some(verdict) => verdict,
                None => {
                    return Err(garbage(format!(
                        "policy service answered unknown action `{}`",
                        check::quoted(action)
                    )));
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FilterAddress, OnError};

    fn session(stages: Vec<PolicyStage>, address: FilterAddress) -> PolicySession {
        PolicySession::new(Arc::new(PolicyService::new(PolicyServiceConfig {
            name: "p".into(),
            address,
            stages,
            timeout_ms: 500,
            on_error: OnError::Tempfail,
            max_connections: 2,
        })))
    }

    fn info() -> w::SessionInfo {
        w::SessionInfo {
            client_ip: "192.0.2.7".into(),
            client_port: 4000,
            listener: "mx".into(),
            reverse_dns: None,
            helo: Some("client.example".into()),
            tls: None,
            auth_identity: None,
        }
    }

    #[test]
    fn actions_map_as_postfix_maps_them() {
        let mut s = session(
            vec![PolicyStage::Rcpt],
            FilterAddress::Unix("/nonexistent".into()),
        );
        assert!(matches!(s.act("DUNNO"), Ok(w::Verdict::Continue)));
        assert!(matches!(s.act("ok"), Ok(w::Verdict::Continue)));
        let Ok(w::Verdict::Tempfail(r)) = s.act("DEFER_IF_PERMIT Greylisted, see http://x/") else {
            panic!("not deferred")
        };
        assert_eq!(
            (r.code, r.enhanced.as_str(), r.text.as_str()),
            (450, "4.7.1", "Greylisted, see http://x/")
        );
        let Ok(w::Verdict::Reject(r)) = s.act("REJECT") else {
            panic!("not rejected")
        };
        assert_eq!((r.code, r.text.as_str()), (550, "Access denied"));
        let Ok(w::Verdict::Reject(r)) = s.act("554 5.7.2 No") else {
            panic!("not rejected")
        };
        assert_eq!((r.code, r.enhanced.as_str()), (554, "5.7.2"));
        assert!(matches!(
            s.act("PREPEND X-Greylist: delayed 5 seconds"),
            Ok(w::Verdict::Continue)
        ));
        assert!(s.act("PREPEND no colon here").is_err());
        assert!(s.act("PREPEND Bad Name: x").is_err());
        assert!(s.act("HOLD").is_ok());
        assert!(s.act("FROBNICATE").is_err());
        assert!(s.act("250 fine").is_err());
        let done = s.end_of_message();
        assert!(matches!(done.verdict, w::Verdict::Quarantine(_)));
        assert_eq!(done.edits.len(), 1);
    }

    #[test]
    fn the_request_carries_postfix_attributes_on_single_lines() {
        let mut s = session(
            vec![PolicyStage::Rcpt],
            FilterAddress::Unix("/nonexistent".into()),
        );
        let session_info = info();
        let facts = Facts {
            session: &session_info,
            queue_id: None,
        };
        let instance = s.instance.clone();
        s.new_transaction();
        assert_ne!(s.instance, instance);
        s.begin_transaction(&w::MailFromInfo {
            sender: Some("a@b.example".into()),
            params: vec![],
        });
        let request = s.request(PolicyStage::Rcpt, Some("r@c.example\nx=y"), 0, None, &facts);
        assert!(request.starts_with("request=smtpd_access_policy\nprotocol_state=RCPT\n"));
        assert!(request.contains("\nsender=a@b.example\n"));
        assert!(request.contains("\nrecipient=r@c.example?x=y\n"));
        assert!(request.contains("\nclient_address=192.0.2.7\n"));
        assert!(request.contains(&format!("\ninstance={}\n", s.instance)));
        assert!(request.ends_with("\n\n"));
        assert_eq!(request.matches("\n\n").count(), 1);
    }

    #[tokio::test]
    async fn replies_are_bounded_and_a_dead_server_is_an_error() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection: a proper reply, then one with an over-long line.
            let (mut c, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = c.read(&mut buf).await;
            c.write_all(b"action=DUNNO\n\n").await.unwrap();
            let _ = c.read(&mut buf).await;
            c.write_all(format!("action={}\n\n", "x".repeat(10_000)).as_bytes())
                .await
                .unwrap();
            let _ = c.read(&mut buf).await;
            c.write_all(b"garbage line\n\n").await.unwrap();
        });
        let service = PolicyService::new(PolicyServiceConfig {
            name: "p".into(),
            address: FilterAddress::Tcp(address),
            stages: vec![PolicyStage::Rcpt],
            timeout_ms: 1000,
            on_error: OnError::Tempfail,
            max_connections: 1,
        });
        assert_eq!(service.ask("request=x\n\n").await.unwrap(), "DUNNO");
        assert_eq!(
            service.ask("request=x\n\n").await.unwrap_err().kind,
            crate::plugins::limits::Failure::Invalid
        );
        // Nothing listens any more: a prompt error, not a hang.
        let dead = PolicyService::new(PolicyServiceConfig {
            name: "p".into(),
            address: FilterAddress::Unix("/nonexistent/socket".into()),
            stages: vec![PolicyStage::Rcpt],
            timeout_ms: 1000,
            on_error: OnError::Tempfail,
            max_connections: 1,
        });
        assert!(dead.ask("request=x\n\n").await.is_err());
    }
}
