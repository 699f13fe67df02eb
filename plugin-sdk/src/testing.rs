//! A native test harness: run a [`Plugin`] against an in-memory host with plain
//! `cargo test`, no WebAssembly needed.
//!
//! ```ignore
//! use tidegate_plugin_sdk::testing::{Harness, TestHost};
//!
//! let host = TestHost::new().with_config(serde_json::json!({ "deny": ["x@example.test"] }));
//! let mut session = Harness::<MyPlugin>::new(host).unwrap();
//! let response = session.rcpt_to("x@example.test");
//! assert!(matches!(response.verdict, Verdict::Reject(_)));
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::check::{self, Stage};
use crate::http::{HttpError, HttpRequest, HttpResponse, Method};
use crate::inspect::ParsedMessage;
use crate::types::*;
use crate::{Host, Plugin};

/// A key/value entry: the value and when it expires (ms on the test clock).
type KvEntry = (Vec<u8>, Option<u64>);
/// A canned DNS answer.
type DnsAnswer = Result<Vec<String>, DnsError>;
/// A canned HTTP answer.
type HttpAnswer = Result<HttpResponse, HttpError>;

/// An in-memory [`Host`]: configuration, DNS answers and a clock are set by the test; the
/// key/value store, counters, tags and log lines can be inspected afterwards.
#[derive(Debug)]
pub struct TestHost {
    config: String,
    dns: HashMap<(String, RecordType), DnsAnswer>,
    now_ms: Cell<u64>,
    kv: RefCell<HashMap<String, KvEntry>>,
    counters: RefCell<HashMap<String, u64>>,
    tags: RefCell<HashMap<String, String>>,
    logs: RefCell<Vec<(Level, String)>>,
    session: SessionInfo,
    kv_max_keys: Option<usize>,
    auth_results: Vec<AuthResult>,
    http: HashMap<(Method, String), HttpAnswer>,
    http_requests: RefCell<Vec<HttpRequest>>,
    delivery_facts: Option<OutcomeFacts>,
    suspensions: RefCell<Vec<(u32, String)>>,
    egress_choices: RefCell<Vec<String>>,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

impl TestHost {
    /// An empty host with `{}` as configuration and the clock at 1,000,000,000,000 ms.
    pub fn new() -> TestHost {
        TestHost {
            config: "{}".to_owned(),
            dns: HashMap::new(),
            now_ms: Cell::new(1_000_000_000_000),
            kv: RefCell::new(HashMap::new()),
            counters: RefCell::new(HashMap::new()),
            tags: RefCell::new(HashMap::new()),
            logs: RefCell::new(Vec::new()),
            session: SessionInfo {
                client_ip: "192.0.2.1".into(),
                client_port: 40000,
                listener: "mx".into(),
                ..SessionInfo::default()
            },
            kv_max_keys: None,
            auth_results: Vec::new(),
            http: HashMap::new(),
            http_requests: RefCell::new(Vec::new()),
            delivery_facts: None,
            suspensions: RefCell::new(Vec::new()),
            egress_choices: RefCell::new(Vec::new()),
        }
    }

    /// Sets what `delivery_facts` answers (for on-delivery tests).
    pub fn with_delivery_facts(mut self, facts: OutcomeFacts) -> TestHost {
        self.delivery_facts = Some(facts);
        self
    }

    /// Changes what `delivery_facts` answers from now on (`None`: outside on-delivery).
    pub fn set_delivery_facts(&mut self, facts: Option<OutcomeFacts>) {
        self.delivery_facts = facts;
    }

    /// The egress pools the plugin chose in on-route, in order.
    pub fn egress_choices(&self) -> Vec<String> {
        self.egress_choices.borrow().clone()
    }

    /// The destinations' suspensions the plugin asked for: (seconds, reason).
    pub fn suspensions(&self) -> Vec<(u32, String)> {
        self.suspensions.borrow().clone()
    }

    /// Answers `method url` (the exact URL) with `answer`. A request the test has not
    /// answered gets `NotAllowed`, as a gateway answers a URL outside the plugin's
    /// `http_allow`.
    pub fn with_http(mut self, method: Method, url: &str, answer: HttpAnswer) -> TestHost {
        self.http.insert((method, url.to_owned()), answer);
        self
    }

    /// The HTTP requests the plugin made so far, in order (refused ones too).
    pub fn http_requests(&self) -> Vec<HttpRequest> {
        self.http_requests.borrow().clone()
    }

    /// Sets what `auth_results` answers (the gateway's SPF, DKIM, DMARC, ARC results).
    pub fn with_auth_results(mut self, results: Vec<AuthResult>) -> TestHost {
        self.auth_results = results;
        self
    }

    /// Sets what `session` answers (TLS facts, the authenticated identity, ...).
    pub fn with_session(mut self, session: SessionInfo) -> TestHost {
        self.session = session;
        self
    }

    /// Gives the key/value store a quota of `keys` keys, so a test can see what the plugin
    /// does when a write fails at the quota.
    pub fn with_kv_quota(mut self, keys: usize) -> TestHost {
        self.kv_max_keys = Some(keys);
        self
    }

    fn room_for(&self, key: &str) -> Result<(), KvError> {
        let kv = self.kv.borrow();
        match self.kv_max_keys {
            Some(max) if !kv.contains_key(key) && kv.len() >= max => Err(KvError::Quota(format!(
                "kv quota reached: {} keys (kv_max_keys {max})",
                kv.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Sets the plugin configuration (what `[plugin.config]` would hold).
    pub fn with_config(mut self, config: serde_json::Value) -> TestHost {
        self.config = config.to_string();
        self
    }

    /// Answers a DNS query. Queries without an answer get `NotFound`.
    pub fn with_dns(
        mut self,
        name: &str,
        kind: RecordType,
        answer: Result<Vec<&str>, DnsError>,
    ) -> TestHost {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), kind);
        self.dns.insert(
            key,
            answer.map(|a| a.into_iter().map(str::to_owned).collect()),
        );
        self
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
    }

    /// The log lines written so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }

    /// A counter's value.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }

    /// Sets a transaction tag, as an earlier stage would.
    pub fn set_tag(&self, key: &str, value: &str) {
        self.tags
            .borrow_mut()
            .insert(key.to_owned(), value.to_owned());
    }

    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now_ms.get();
        let mut kv = self.kv.borrow_mut();
        match kv.get(key) {
            Some((_, Some(expires))) if *expires <= now => {
                kv.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }
}

impl Host for TestHost {
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let mut line = message.to_owned();
        for (k, v) in fields {
            line.push_str(&format!(" {k}={v}"));
        }
        self.logs.borrow_mut().push((level, line));
    }

    fn resolve(&self, name: &str, kind: RecordType) -> Result<Vec<String>, DnsError> {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), kind);
        self.dns
            .get(&key)
            .cloned()
            .unwrap_or(Err(DnsError::NotFound))
    }

    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.live(key)
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        if key.len() > 1024 || value.len() > 64 * 1024 {
            return Err(KvError::TooLarge(
                "kv key or value over its size limit".into(),
            ));
        }
        self.room_for(key)?;
        let expires = ttl_ms.map(|ttl| self.now_ms.get() + ttl);
        self.kv
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), expires));
        Ok(())
    }

    fn kv_incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        if key.len() > 1024 {
            return Err(KvError::TooLarge("kv key over its size limit".into()));
        }
        self.room_for(key)?;
        let current = self.live(key);
        let value = current
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            .saturating_add(delta);
        let mut kv = self.kv.borrow_mut();
        let expires = match kv.get(key) {
            Some((_, expires)) if current.is_some() => *expires,
            _ => ttl_ms.map(|ttl| self.now_ms.get() + ttl),
        };
        kv.insert(key.to_owned(), (value.to_string().into_bytes(), expires));
        Ok(value)
    }

    fn kv_delete(&self, key: &str) {
        self.kv.borrow_mut().remove(key);
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    fn counter_add(&self, name: &str, delta: u64) {
        *self
            .counters
            .borrow_mut()
            .entry(name.to_owned())
            .or_insert(0) += delta;
    }

    fn config_json(&self) -> String {
        self.config.clone()
    }

    fn tag(&self, key: &str) -> Option<String> {
        self.tags.borrow().get(key).cloned()
    }

    fn delivery_facts(&self) -> Option<OutcomeFacts> {
        self.delivery_facts.clone()
    }

    fn choose_egress(&self, pool: &str) -> bool {
        self.egress_choices.borrow_mut().push(pool.to_owned());
        true
    }

    fn suspend_destination(&self, seconds: u32, reason: &str) -> bool {
        if self.delivery_facts.is_none() {
            return false;
        }
        self.suspensions
            .borrow_mut()
            .push((seconds.min(86_400), reason.to_owned()));
        true
    }

    fn session(&self) -> SessionInfo {
        self.session.clone()
    }

    fn auth_results(&self) -> Vec<AuthResult> {
        self.auth_results.clone()
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.http_requests.borrow_mut().push(request.clone());
        // The gateway's own checks first, so a request it would refuse is refused here.
        crate::http::check_request(request)?;
        self.http
            .get(&(request.method, request.url.clone()))
            .cloned()
            .unwrap_or_else(|| {
                Err(HttpError::NotAllowed(format!(
                    "{} {} is not answered by this test host",
                    request.method.as_str(),
                    request.url
                )))
            })
    }
}

/// One plugin value driven through a session's stages, as the host would drive it.
/// `set-tag` edits are applied to the host's tags, so later stages see them.
pub struct Harness<P: Plugin> {
    /// The host the plugin talks to.
    pub host: TestHost,
    /// The plugin value (one session's worth of state).
    pub plugin: P,
}

impl<P: Plugin> Harness<P> {
    /// Initialises the plugin against `host`, as the host does when it creates an instance.
    pub fn new(host: TestHost) -> Result<Harness<P>, String> {
        let plugin = P::init(&host)?;
        Ok(Harness { host, plugin })
    }

    /// Ends the session and starts the next one on the same value, as the host does when
    /// it reuses an instance: tags are cleared and [`Plugin::new_session`] is called.
    pub fn next_session(&mut self) -> Result<(), String> {
        self.host.tags.borrow_mut().clear();
        self.plugin.new_session(&self.host)
    }

    /// Checks the response as the gateway would (panicking with the gateway's reason, so
    /// the test fails where the gateway would apply the plugin's failure policy), then
    /// applies its tags.
    fn applied(&self, stage: Stage, response: Response) -> Response {
        if let Err(why) = check::response(stage, &response) {
            panic!("the gateway would refuse this response at {stage:?}: {why}\n{response:?}");
        }
        let new_tags = response
            .edits
            .iter()
            .filter(|e| matches!(e, Edit::SetTag(k, _) if !self.host.tags.borrow().contains_key(k)))
            .count();
        let tags = self.host.tags.borrow().len() + new_tags;
        assert!(
            tags <= check::limits::MAX_TAGS,
            "the gateway would refuse this response: the transaction would carry {tags} tags, at most {}",
            check::limits::MAX_TAGS
        );
        for edit in &response.edits {
            if let Edit::SetTag(key, value) = edit {
                self.host.set_tag(key, value);
            }
        }
        response
    }

    /// on-connect from `ip:port` on listener `mx`, without TLS.
    pub fn connect(&mut self, ip: &str, port: u16) -> Response {
        let info = ConnectInfo {
            client_ip: ip.to_owned(),
            client_port: port,
            listener: "mx".to_owned(),
            tls: false,
            reverse_dns: None,
        };
        let response = self.plugin.on_connect(&self.host, &info);
        self.applied(Stage::Connect, response)
    }

    /// on-helo (EHLO).
    pub fn helo(&mut self, name: &str) -> Response {
        let info = HeloInfo {
            name: name.to_owned(),
            extended: true,
        };
        let response = self.plugin.on_helo(&self.host, &info);
        self.applied(Stage::Helo, response)
    }

    /// on-mail-from; `""` is the null sender.
    pub fn mail_from(&mut self, sender: &str) -> Response {
        let info = MailFromInfo {
            sender: (!sender.is_empty()).then(|| sender.to_owned()),
            params: Vec::new(),
        };
        let response = self.plugin.on_mail_from(&self.host, &info);
        self.applied(Stage::MailFrom, response)
    }

    /// on-rcpt-to.
    pub fn rcpt_to(&mut self, recipient: &str) -> Response {
        let info = RcptToInfo {
            recipient: recipient.to_owned(),
            params: Vec::new(),
        };
        let response = self.plugin.on_rcpt_to(&self.host, &info);
        self.applied(Stage::RcptTo, response)
    }

    /// on-data with a raw RFC 5322 message, parsed exactly as the host parses it.
    pub fn data(&mut self, sender: Option<&str>, recipients: &[&str], raw: &[u8]) -> Response {
        let envelope = Envelope {
            sender: sender.map(str::to_owned),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        };
        let message = ParsedMessage::parse(raw.to_vec());
        let response = self.plugin.on_data(&self.host, &envelope, &message);
        self.applied(Stage::Data, response)
    }

    /// on-route.
    pub fn route(&mut self, recipient: &str) -> Option<Route> {
        self.plugin.on_route(&self.host, recipient)
    }

    /// on-auth with the users file's verdict.
    pub fn auth(&mut self, username: &str, password: &str, users_file_verdict: bool) -> Response {
        let info = AuthInfo {
            mechanism: "PLAIN".to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            users_file_verdict,
        };
        let response = self.plugin.on_auth(&self.host, &info);
        self.applied(Stage::Auth, response)
    }

    /// on-disconnect, with a summary of a session that quit after `accepted` messages.
    pub fn disconnect(&mut self, accepted: u32) {
        let summary = SessionSummary {
            transactions: accepted,
            accepted,
            duration_ms: 10,
            reason: "quit".to_owned(),
        };
        self.plugin.on_disconnect(&self.host, &summary);
    }
}

pub use crate::record::Recording;
use crate::record::{CallRecord, Outcome, Report, StageRecord, Tape};

/// The host of a replayed session: configuration from the test, everything else from the
/// recorded call being replayed.
struct ReplayHost {
    config: String,
    call: RefCell<Option<CallRecord>>,
    tape: RefCell<Tape>,
    tags: RefCell<std::collections::BTreeMap<String, String>>,
}

impl ReplayHost {
    fn with_call<T>(&self, f: impl FnOnce(&CallRecord) -> T, default: T) -> T {
        self.call.borrow().as_ref().map_or(default, f)
    }
}

impl Host for ReplayHost {
    fn log(&self, _level: Level, _message: &str, _fields: &[(&str, &str)]) {}

    fn resolve(&self, name: &str, kind: RecordType) -> Result<Vec<String>, DnsError> {
        self.tape.borrow_mut().resolve(name, kind)
    }

    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        // A backend failure failed the recorded call; natively it reads as a miss.
        self.tape.borrow_mut().kv_get(key).ok().flatten()
    }

    fn kv_set(&self, key: &str, _value: &[u8], _ttl_ms: Option<u64>) -> Result<(), KvError> {
        self.tape.borrow_mut().kv_set(key).unwrap_or(Ok(()))
    }

    fn kv_incr(&self, key: &str, delta: i64, _ttl_ms: Option<u64>) -> Result<i64, KvError> {
        self.tape
            .borrow_mut()
            .kv_incr(key, delta)
            .unwrap_or(Ok(delta))
    }

    fn kv_delete(&self, key: &str) {
        let _ = self.tape.borrow_mut().kv_delete(key);
    }

    fn now_ms(&self) -> u64 {
        self.tape.borrow_mut().now_ms()
    }

    fn counter_add(&self, _name: &str, _delta: u64) {}

    fn config_json(&self) -> String {
        self.config.clone()
    }

    fn tag(&self, key: &str) -> Option<String> {
        self.tags.borrow().get(key).cloned()
    }

    fn session(&self) -> SessionInfo {
        self.with_call(|c| c.session.clone(), SessionInfo::default())
    }

    fn auth_results(&self) -> Vec<AuthResult> {
        self.with_call(|c| c.auth_results.clone(), Vec::new())
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        match self
            .tape
            .borrow_mut()
            .http(request.method.as_str(), &request.url)
        {
            Ok(answer) => Ok(HttpResponse {
                status: answer.status,
                headers: answer.headers,
                body: answer.body.0,
            }),
            Err((_, why)) => Err(HttpError::Failed(why)),
        }
    }
}

impl Recording {
    /// Replays every recorded call of the plugin named `name` against a fresh `P` (one
    /// value per recorded session, as a gateway instance serves one session at a time),
    /// with the recorded host answers and `config` as its configuration, and compares each
    /// verdict and its edits with what was recorded: the same report as `tidegate replay`.
    ///
    /// ```ignore
    /// let recording = Recording::load("tests/fixtures/recorded.jsonl").unwrap();
    /// let report = recording.replay::<MyPlugin>("my-plugin", serde_json::json!({})).unwrap();
    /// assert!(report.is_identical(), "{}", report.render());
    /// ```
    pub fn replay<P: Plugin>(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<Report, String> {
        let mut report = Report::default();
        let host = ReplayHost {
            config: config.to_string(),
            call: RefCell::new(None),
            tape: RefCell::new(Tape::default()),
            tags: RefCell::new(Default::default()),
        };
        let mut plugin: Option<P> = None;
        let mut previous = None;
        for (place, session) in &self.sessions {
            let continued = session.continues(previous);
            previous = Some(session);
            let calls: Vec<(usize, &CallRecord)> = session
                .calls
                .iter()
                .enumerate()
                .filter(|(_, c)| c.plugin == name)
                .collect();
            if calls.is_empty() {
                continue;
            }
            // A fresh value per session, as a gateway instance starts each session anew;
            // the parts of one session share it.
            let plugin = match plugin.as_mut() {
                Some(plugin) if continued => plugin,
                _ => {
                    report.sessions += 1;
                    *host.call.borrow_mut() = None;
                    plugin.insert(P::init(&host)?)
                }
            };
            for (index, call) in calls {
                *host.tape.borrow_mut() = Tape::new(&call.answers, session.started_ms);
                host.tags.borrow_mut().clone_from(&call.tags);
                *host.call.borrow_mut() = Some(call.clone());
                let replayed = replay_call(plugin, &host, &call.input);
                report.misses += host.tape.borrow().misses();
                report.compare(place, index, call, replayed);
            }
        }
        Ok(report)
    }
}

/// Calls the plugin's hook for one recorded stage, checked as the gateway checks it.
fn replay_call<P: Plugin>(plugin: &mut P, host: &ReplayHost, input: &StageRecord) -> Outcome {
    let hooks = plugin.hooks();
    let (stage, response) = match input {
        StageRecord::Connect(info) => (Stage::Connect, {
            hooks.connect.then(|| plugin.on_connect(host, info))
        }),
        StageRecord::Helo(info) => (Stage::Helo, {
            hooks.helo.then(|| plugin.on_helo(host, info))
        }),
        StageRecord::Auth(auth) => {
            let info = AuthInfo {
                mechanism: auth.mechanism.clone(),
                username: auth.username.clone(),
                password: String::new(),
                users_file_verdict: auth.users_file_verdict,
            };
            (Stage::Auth, {
                hooks.auth.then(|| plugin.on_auth(host, &info))
            })
        }
        StageRecord::MailFrom(info) => (Stage::MailFrom, {
            hooks.mail_from.then(|| plugin.on_mail_from(host, info))
        }),
        StageRecord::RcptTo(info) => (Stage::RcptTo, {
            hooks.rcpt_to.then(|| plugin.on_rcpt_to(host, info))
        }),
        StageRecord::Data(data) => {
            let message = ParsedMessage::parse(data.message.0.clone()).with_size(data.size);
            (Stage::Data, {
                hooks
                    .data
                    .then(|| plugin.on_data(host, &data.envelope, &message))
            })
        }
    };
    match response {
        None => Outcome::NotCalled,
        Some(response) => match check::response(stage, &response) {
            Ok(()) => Outcome::Answer(response),
            Err(_) => Outcome::Failed("invalid".into()),
        },
    }
}
