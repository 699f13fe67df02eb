//! The record format of `record = { ... }` listeners, shared by the gateway (which writes
//! it and replays it with `tidegate replay`) and the native test harness (which replays it
//! against a plugin value, see [`crate::testing::Recording`]). One source of truth, so the
//! two replays never disagree on what a recording means.
//!
//! # Format, version 1
//!
//! JSON lines: one line per SMTP session, a [`SessionRecord`]:
//!
//! ```json
//! {"version":1,"listener":"mx","started_ms":1764600000000,"calls":[
//!   {"plugin":"dnsbl","input":{"connect":{"client_ip":"192.0.2.7","client_port":40000,
//!    "listener":"mx","tls":false,"reverse_dns":null}},
//!    "session":{"client_ip":"192.0.2.7", ...},"auth_results":[],"tags":{},
//!    "answers":[{"call":"resolve","name":"7.2.0.192.zen.example","kind":"a",
//!                "result":{"Ok":["127.0.0.2"]}}],
//!    "outcome":{"answer":{"verdict":{"reject":{"code":554,...}},"edits":[]}}}]}
//! ```
//!
//! - A session with more than [`MAX_CALLS_PER_LINE`] calls (many messages in one
//!   connection) continues on later lines with the same `id` and the next `part`; a
//!   replay runs the parts of a session in one plugin instance.
//! - `calls` are the plugin calls of the session's stages (on-connect to on-data), in the
//!   order they ran: the plugin, the stage's input, what `session()`, `auth-results()` and
//!   `tag()` answered during the call, every answer the host gave the call (DNS, KV reads
//!   and the results of KV writes, the clock, HTTP responses) in order, and the outcome:
//!   the plugin's validated verdict and edits, or its failure's kind (`trap`, `time`,
//!   `invalid`, ...).
//! - Bytes (a message, a KV value, an HTTP body) are a JSON string when they are UTF-8,
//!   otherwise `{"base64": "..."}`.
//! - on-auth records the mechanism, the user name and the users file's verdict, never the
//!   password; a replay hands the plugin an empty password.
//! - on-data records the envelope and the message's first `body_bytes` octets after its
//!   header (`truncated` says when more existed; `size` is the real size).
//! - What is not secret is still the operator's data: message headers and bodies, KV
//!   values and HTTP answers are in the file, so keep a records directory as private as
//!   the spool.
//!
//! A reader refuses a line whose `version` it does not know; fields added within a version
//! are optional.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::*;

/// The format version this SDK writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One SMTP session's plugin calls (or a part of them: a long session is written in
/// parts of at most [`MAX_CALLS_PER_LINE`] calls, consecutive lines with the same `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The session's id, the same in each of its parts.
    #[serde(default)]
    pub id: u64,
    /// Which part of the session this line is (from 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
    /// The listener the session came in on.
    pub listener: String,
    /// When the session started, ms since the Unix epoch.
    pub started_ms: u64,
    /// The plugin calls, in order.
    pub calls: Vec<CallRecord>,
}

/// The most calls one line holds; a longer session continues on the next line.
pub const MAX_CALLS_PER_LINE: usize = 256;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SessionRecord {
    /// Whether this line continues the session of `previous` (a replay keeps one plugin
    /// instance over a session's parts, as the gateway did).
    pub fn continues(&self, previous: Option<&SessionRecord>) -> bool {
        self.part > 0
            && previous.is_some_and(|p| p.id == self.id && p.part.checked_add(1) == Some(self.part))
    }
}

/// One call of one plugin at one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The plugin's configured name.
    pub plugin: String,
    /// What the stage handed the plugin.
    pub input: StageRecord,
    /// What `session()` answered during the call.
    pub session: SessionInfo,
    /// What `auth-results()` answered during the call.
    #[serde(default)]
    pub auth_results: Vec<AuthResult>,
    /// The transaction's tags as the call began (what `tag()` answered).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The host's answers to the call, in order.
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// What came of the call.
    pub outcome: Outcome,
}

/// A stage's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageRecord {
    /// on-connect
    Connect(ConnectInfo),
    /// on-helo
    Helo(HeloInfo),
    /// on-auth (without the password)
    Auth(AuthRecord),
    /// on-mail-from
    MailFrom(MailFromInfo),
    /// on-rcpt-to
    RcptTo(RcptToInfo),
    /// on-data
    Data(DataRecord),
}

impl StageRecord {
    /// The hook's name in the contract.
    pub fn stage(&self) -> &'static str {
        match self {
            StageRecord::Connect(_) => "on-connect",
            StageRecord::Helo(_) => "on-helo",
            StageRecord::Auth(_) => "on-auth",
            StageRecord::MailFrom(_) => "on-mail-from",
            StageRecord::RcptTo(_) => "on-rcpt-to",
            StageRecord::Data(_) => "on-data",
        }
    }
}

/// on-auth's input, without the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRecord {
    /// The SASL mechanism.
    pub mechanism: String,
    /// The user name the client gave.
    pub username: String,
    /// Whether the users file accepted the password.
    pub users_file_verdict: bool,
}

/// on-data's input: the envelope and the message (cut to the configured size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The envelope.
    pub envelope: Envelope,
    /// The message's real size in octets.
    pub size: u64,
    /// The header and the first `body_bytes` of the body.
    pub message: Bytes,
    /// Whether `message` is shorter than the message was.
    #[serde(default)]
    pub truncated: bool,
}

/// What came of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The plugin's answer, as the gateway validated it (addresses canonical).
    Answer(Response),
    /// The call failed: its kind (`trap`, `time`, `cpu`, `memory`, `invalid`, ...).
    Failed(String),
    /// (In a replay only) the plugin was not called: it does not subscribe to the stage.
    NotCalled,
}

impl Outcome {
    /// A short description: the verdict with its reply, or the failure.
    pub fn verdict_text(&self) -> String {
        match self {
            Outcome::Answer(response) => match &response.verdict {
                Verdict::Continue => "continue".into(),
                Verdict::Accept => "accept".into(),
                Verdict::Reject(r) => format!("reject {} {} {}", r.code, r.enhanced, r.text),
                Verdict::Tempfail(r) => format!("tempfail {} {} {}", r.code, r.enhanced, r.text),
                Verdict::Disconnect(r) => {
                    format!("disconnect {} {} {}", r.code, r.enhanced, r.text)
                }
                Verdict::Discard(why) => format!("discard {why}"),
                Verdict::Quarantine(why) => format!("quarantine {why}"),
            },
            Outcome::Failed(kind) => format!("failed ({kind})"),
            Outcome::NotCalled => "not called".into(),
        }
    }

    /// The edits, empty unless the plugin answered.
    pub fn edits(&self) -> &[Edit] {
        match self {
            Outcome::Answer(response) => &response.edits,
            _ => &[],
        }
    }
}

/// One answer the host gave a plugin's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum Answer {
    /// `resolve` (and each query of `resolve-many`).
    Resolve {
        /// The name asked for.
        name: String,
        /// The record type.
        kind: RecordType,
        /// The answer.
        result: Result<Vec<String>, DnsError>,
    },
    /// `kv-get`; `Err` is a backend failure (the call failed).
    KvGet {
        /// The key.
        key: String,
        /// The value, if any.
        result: Result<Option<Bytes>, String>,
    },
    /// `kv-set`; the outer `Err` is a backend failure.
    KvSet {
        /// The key.
        key: String,
        /// What the write came to.
        result: Result<Result<(), KvError>, String>,
    },
    /// `kv-incr`; the outer `Err` is a backend failure.
    KvIncr {
        /// The key.
        key: String,
        /// What was added.
        delta: i64,
        /// The new value.
        result: Result<Result<i64, KvError>, String>,
    },
    /// `kv-delete`; `Err` is a backend failure.
    KvDelete {
        /// The key.
        key: String,
        /// Whether it was done.
        result: Result<(), String>,
    },
    /// `now-ms`.
    NowMs {
        /// The clock.
        ms: u64,
    },
    /// `http-call`.
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The response, or the failure's kind and text.
        result: Result<HttpAnswer, (String, String)>,
    },
}

/// An HTTP response as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The key answers are matched by in a replay: the same question, in order.
    fn key(&self) -> String {
        match self {
            Answer::Resolve { name, kind, .. } => resolve_key(name, *kind),
            Answer::KvGet { key, .. } => format!("kv-get {key}"),
            Answer::KvSet { key, .. } => format!("kv-set {key}"),
            Answer::KvIncr { key, .. } => format!("kv-incr {key}"),
            Answer::KvDelete { key, .. } => format!("kv-delete {key}"),
            Answer::NowMs { .. } => "now-ms".into(),
            Answer::Http { method, url, .. } => format!("http {method} {url}"),
        }
    }
}

fn resolve_key(name: &str, kind: RecordType) -> String {
    format!(
        "resolve {} {kind:?}",
        name.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// Octets: a JSON string when they are UTF-8, `{"base64": "..."}` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BytesRepr {
    Text(String),
    Base64 { base64: String },
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        match std::str::from_utf8(&self.0) {
            Ok(text) => BytesRepr::Text(text.to_owned()),
            Err(_) => BytesRepr::Base64 {
                base64: base64::engine::general_purpose::STANDARD.encode(&self.0),
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        match BytesRepr::deserialize(deserializer)? {
            BytesRepr::Text(text) => Ok(Bytes(text.into_bytes())),
            BytesRepr::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(Bytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Answers a replayed call from its recorded answers: each question gets the next recorded
/// answer to the same question; one the recording lacks gets the recorded-miss answer (a
/// temporary DNS error, a KV miss, a refused HTTP call, the session's start as the clock)
/// and is counted.
#[derive(Debug, Default)]
pub struct Tape {
    queues: HashMap<String, VecDeque<Answer>>,
    now: u64,
    misses: u32,
}

/// The reason a recorded-miss answer gives.
pub const MISS: &str = "not in the recording";

impl Tape {
    /// A tape of `answers`; `now` is what the clock says when the recording has no
    /// reading left (the last one recorded, or the session's start).
    pub fn new(answers: &[Answer], now: u64) -> Tape {
        let mut queues: HashMap<String, VecDeque<Answer>> = HashMap::new();
        for answer in answers {
            queues
                .entry(answer.key())
                .or_default()
                .push_back(answer.clone());
        }
        Tape {
            queues,
            now,
            misses: 0,
        }
    }

    /// Questions the recording had no answer for.
    pub fn misses(&self) -> u32 {
        self.misses
    }

    fn next(&mut self, key: &str) -> Option<Answer> {
        let answer = self.queues.get_mut(key).and_then(VecDeque::pop_front);
        if answer.is_none() {
            self.misses += 1;
        }
        answer
    }

    /// `resolve`.
    pub fn resolve(&mut self, name: &str, kind: RecordType) -> Result<Vec<String>, DnsError> {
        match self.next(&resolve_key(name, kind)) {
            Some(Answer::Resolve { result, .. }) => result,
            _ => Err(DnsError::Temporary(MISS.into())),
        }
    }

    /// `kv-get`; `Err` is a backend failure.
    pub fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.next(&format!("kv-get {key}")) {
            Some(Answer::KvGet { result, .. }) => result.map(|v| v.map(|b| b.0)),
            _ => Ok(None),
        }
    }

    /// `kv-set`.
    pub fn kv_set(&mut self, key: &str) -> Result<Result<(), KvError>, String> {
        match self.next(&format!("kv-set {key}")) {
            Some(Answer::KvSet { result, .. }) => result,
            _ => Ok(Ok(())),
        }
    }

    /// `kv-incr` (a miss counts from zero).
    pub fn kv_incr(&mut self, key: &str, delta: i64) -> Result<Result<i64, KvError>, String> {
        match self.next(&format!("kv-incr {key}")) {
            Some(Answer::KvIncr { result, .. }) => result,
            _ => Ok(Ok(delta)),
        }
    }

    /// `kv-delete`.
    pub fn kv_delete(&mut self, key: &str) -> Result<(), String> {
        match self.next(&format!("kv-delete {key}")) {
            Some(Answer::KvDelete { result, .. }) => result,
            _ => Ok(()),
        }
    }

    /// `now-ms`.
    pub fn now_ms(&mut self) -> u64 {
        if let Some(Answer::NowMs { ms }) = self.next("now-ms") {
            self.now = ms;
        }
        self.now
    }

    /// `http-call`: the response, or the failure's kind and text.
    pub fn http(&mut self, method: &str, url: &str) -> Result<HttpAnswer, (String, String)> {
        match self.next(&format!("http {method} {url}")) {
            Some(Answer::Http { result, .. }) => result,
            _ => Err(("not-allowed".into(), MISS.into())),
        }
    }
}

/// Records read from a file or a records directory.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Each session with where it came from (`file:line`).
    pub sessions: Vec<(String, SessionRecord)>,
}

/// Why a recording could not be read.
#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

impl Recording {
    /// Reads a records file, or every `*.jsonl` file of a records directory (oldest
    /// first). A line that is not a session record of a known version is an error naming
    /// its file and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Recording, LoadError> {
        let path = path.as_ref();
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| LoadError(format!("{}: {e}", path.display())))?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            // File names carry the time they were started, so name order is age order.
            files.sort();
            files
        } else {
            vec![path.to_owned()]
        };
        let mut recording = Recording::default();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| LoadError(format!("{}: {e}", file.display())))?;
            recording.add_lines(&file.display().to_string(), &text)?;
        }
        Ok(recording)
    }

    /// Reads records from text (JSON lines); `source` names it in places and errors.
    pub fn from_lines(source: &str, text: &str) -> Result<Recording, LoadError> {
        let mut recording = Recording::default();
        recording.add_lines(source, text)?;
        Ok(recording)
    }

    fn add_lines(&mut self, source: &str, text: &str) -> Result<(), LoadError> {
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let place = format!("{source}:{}", number + 1);
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| LoadError(format!("{place}: not JSON: {e}")))?;
            let version = value.get("version").and_then(serde_json::Value::as_u64);
            if version != Some(u64::from(FORMAT_VERSION)) {
                return Err(LoadError(format!(
                    "{place}: record version {version:?}, this reader knows {FORMAT_VERSION}"
                )));
            }
            let session: SessionRecord =
                serde_json::from_value(value).map_err(|e| LoadError(format!("{place}: {e}")))?;
            self.sessions.push((place, session));
        }
        Ok(())
    }

    /// The calls of `plugin` in the recording.
    pub fn calls(&self, plugin: &str) -> usize {
        self.sessions
            .iter()
            .flat_map(|(_, s)| &s.calls)
            .filter(|c| c.plugin == plugin)
            .count()
    }
}

/// One call whose replay came out otherwise than the recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// Where the session is (`file:line`).
    pub session: String,
    /// The call's place among the session's calls (from 0).
    pub call: usize,
    /// The stage.
    pub stage: &'static str,
    /// What happened.
    pub recorded: Outcome,
    /// What the replay gave.
    pub replayed: Outcome,
}

/// What a replay came to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Sessions that had a call of the plugin.
    pub sessions: usize,
    /// Calls replayed.
    pub calls: usize,
    /// Calls whose verdict and edits were the same.
    pub same: usize,
    /// Questions of the plugin the recording had no answer for.
    pub misses: u32,
    /// The calls that differed.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Whether every replayed call gave what was recorded.
    pub fn is_identical(&self) -> bool {
        self.differences.is_empty()
    }

    /// Compares one call and counts it.
    pub fn compare(&mut self, session: &str, index: usize, call: &CallRecord, replayed: Outcome) {
        self.calls += 1;
        if replayed == call.outcome {
            self.same += 1;
        } else {
            self.differences.push(Difference {
                session: session.to_owned(),
                call: index,
                stage: call.input.stage(),
                recorded: call.outcome.clone(),
                replayed,
            });
        }
    }

    /// The diff as text: one block per differing call, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.differences {
            out.push_str(&format!(
                "{} call {} {}:\n  - recorded: {}\n  + replayed: {}\n",
                d.session,
                d.call,
                d.stage,
                d.recorded.verdict_text(),
                d.replayed.verdict_text()
            ));
            if d.recorded.edits() != d.replayed.edits() {
                out.push_str(&format!(
                    "  - recorded edits: {:?}\n  + replayed edits: {:?}\n",
                    d.recorded.edits(),
                    d.replayed.edits()
                ));
            }
        }
        out.push_str(&format!(
            "{} sessions, {} calls replayed: {} same, {} different, {} answers not in the recording\n",
            self.sessions,
            self.calls,
            self.same,
            self.differences.len(),
            self.misses
        ));
        out
    }
}
