//! The WebAssembly side: bindings generated from the WIT contract, and the adapter that
//! turns them into calls on a [`Plugin`].

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::http::{HttpError, HttpRequest, HttpResponse, Method};
use crate::types as t;
use crate::{Host, Message, Plugin};

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "tidegate_plugin_sdk::guest::bindings",
        runtime_path: "tidegate_plugin_sdk::guest::wit_bindgen::rt",
        bitflags_path: "tidegate_plugin_sdk::guest::wit_bindgen::rt::bitflags",
    });
}

#[doc(hidden)]
pub use wit_bindgen;

use bindings::exports::tidegate::plugin::hooks as wit;
use bindings::tidegate::plugin::{host, message, types as w};

thread_local! {
    /// The plugin value of this instance (one instance serves one session).
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Connects the generated `hooks` interface to a [`Plugin`] type.
pub struct Adapter<P>(PhantomData<P>);

fn with_plugin<P: Plugin, R>(default: R, f: impl FnOnce(&mut P) -> R) -> R {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        match state.as_mut().and_then(|b| b.downcast_mut::<P>()) {
            Some(plugin) => f(plugin),
            None => default,
        }
    })
}

fn not_initialised() -> w::Response {
    // The host always calls init first; answering with a tempfail-free "continue" would
    // hide a host bug, so say so loudly instead.
    w::Response {
        verdict: w::Verdict::Tempfail(w::Reply {
            code: 451,
            enhanced: "4.3.0".into(),
            text: "plugin not initialised".into(),
        }),
        edits: Vec::new(),
    }
}

impl<P: Plugin> wit::Guest for Adapter<P> {
    fn init() -> Result<w::Hooks, String> {
        // The host calls init at the start of every session; the first builds the value,
        // the later ones let it reset itself for the next session.
        let reused = STATE.with(|state| {
            let mut state = state.borrow_mut();
            let plugin = state.as_mut().and_then(|b| b.downcast_mut::<P>())?;
            Some(
                plugin
                    .new_session(&GuestHost)
                    .map(|()| to_hooks(plugin.hooks())),
            )
        });
        if let Some(hooks) = reused {
            if hooks.is_err() {
                // Do not leave a half-reset value behind for a later call.
                STATE.with(|state| *state.borrow_mut() = None);
            }
            return hooks;
        }
        let plugin = P::init(&GuestHost)?;
        let hooks = to_hooks(plugin.hooks());
        STATE.with(|state| *state.borrow_mut() = Some(Box::new(plugin)));
        Ok(hooks)
    }

    fn on_connect(info: w::ConnectInfo) -> w::Response {
        let info = t::ConnectInfo {
            client_ip: info.client_ip,
            client_port: info.client_port,
            listener: info.listener,
            tls: info.tls,
            reverse_dns: info.reverse_dns,
        };
        with_plugin::<P, _>(not_initialised(), |p| {
            to_response(p.on_connect(&GuestHost, &info))
        })
    }

    fn on_helo(info: w::HeloInfo) -> w::Response {
        let info = t::HeloInfo {
            name: info.name,
            extended: info.extended,
        };
        with_plugin::<P, _>(not_initialised(), |p| {
            to_response(p.on_helo(&GuestHost, &info))
        })
    }

    fn on_auth(info: w::AuthInfo) -> w::Response {
        let info = t::AuthInfo {
            mechanism: info.mechanism,
            username: info.username,
            password: info.password,
            users_file_verdict: info.users_file_verdict,
        };
        with_plugin::<P, _>(not_initialised(), |p| {
            to_response(p.on_auth(&GuestHost, &info))
        })
    }

    fn on_mail_from(info: w::MailFromInfo) -> w::Response {
        let info = t::MailFromInfo {
            sender: info.sender,
            params: info.params.into_iter().map(from_param).collect(),
        };
        with_plugin::<P, _>(not_initialised(), |p| {
            to_response(p.on_mail_from(&GuestHost, &info))
        })
    }

    fn on_rcpt_to(info: w::RcptToInfo) -> w::Response {
        let info = t::RcptToInfo {
            recipient: info.recipient,
            params: info.params.into_iter().map(from_param).collect(),
        };
        with_plugin::<P, _>(not_initialised(), |p| {
            to_response(p.on_rcpt_to(&GuestHost, &info))
        })
    }

    fn on_data(envelope: w::Envelope, message: &message::Message) -> w::Response {
        let envelope = t::Envelope {
            sender: envelope.sender,
            recipients: envelope.recipients,
        };
        let message = GuestMessage(message);
        with_plugin::<P, _>(not_initialised(), |p| {
            to_response(p.on_data(&GuestHost, &envelope, &message))
        })
    }

    fn on_route(recipient: String) -> Option<w::Route> {
        with_plugin::<P, _>(None, |p| p.on_route(&GuestHost, &recipient)).map(|route| match route {
            t::Route::Mx => w::Route::Mx,
            t::Route::Named(name) => w::Route::Named(name),
            t::Route::Local => w::Route::Local,
            t::Route::Discard => w::Route::Discard,
        })
    }

    fn on_delivery(info: w::DeliveryInfo) {
        let info = t::DeliveryInfo {
            queue_id: info.queue_id,
            recipient: info.recipient,
            status: match info.status {
                w::DeliveryStatus::Delivered => t::DeliveryStatus::Delivered,
                w::DeliveryStatus::Deferred => t::DeliveryStatus::Deferred,
                w::DeliveryStatus::Bounced => t::DeliveryStatus::Bounced,
            },
            reply: info.reply,
            attempt: info.attempt,
        };
        with_plugin::<P, _>((), |p| p.on_delivery(&GuestHost, &info));
    }

    fn on_disconnect(summary: w::SessionSummary) {
        let summary = t::SessionSummary {
            transactions: summary.transactions,
            accepted: summary.accepted,
            duration_ms: summary.duration_ms,
            reason: summary.reason,
        };
        with_plugin::<P, _>((), |p| p.on_disconnect(&GuestHost, &summary));
    }
}

fn from_param(param: w::Param) -> t::Param {
    t::Param {
        keyword: param.keyword,
        value: param.value,
    }
}

fn to_hooks(hooks: t::Hooks) -> w::Hooks {
    let mut set = w::Hooks::empty();
    for (on, flag) in [
        (hooks.connect, w::Hooks::CONNECT),
        (hooks.helo, w::Hooks::HELO),
        (hooks.auth, w::Hooks::AUTH),
        (hooks.mail_from, w::Hooks::MAIL_FROM),
        (hooks.rcpt_to, w::Hooks::RCPT_TO),
        (hooks.data, w::Hooks::DATA),
        (hooks.route, w::Hooks::ROUTE),
        (hooks.delivery, w::Hooks::DELIVERY),
        (hooks.disconnect, w::Hooks::DISCONNECT),
    ] {
        if on {
            set |= flag;
        }
    }
    set
}

fn to_reply(reply: t::Reply) -> w::Reply {
    w::Reply {
        code: reply.code,
        enhanced: reply.enhanced,
        text: reply.text,
    }
}

fn to_response(response: t::Response) -> w::Response {
    let verdict = match response.verdict {
        t::Verdict::Continue => w::Verdict::Continue,
        t::Verdict::Accept => w::Verdict::Accept,
        t::Verdict::Reject(reply) => w::Verdict::Reject(to_reply(reply)),
        t::Verdict::Tempfail(reply) => w::Verdict::Tempfail(to_reply(reply)),
        t::Verdict::Discard(why) => w::Verdict::Discard(why),
        t::Verdict::Quarantine(why) => w::Verdict::Quarantine(why),
        t::Verdict::Disconnect(reply) => w::Verdict::Disconnect(to_reply(reply)),
    };
    let edits = response
        .edits
        .into_iter()
        .map(|edit| match edit {
            t::Edit::AddHeader(n, v) => w::Edit::AddHeader((n, v)),
            t::Edit::RemoveHeader(n) => w::Edit::RemoveHeader(n),
            t::Edit::ReplaceHeader(n, v) => w::Edit::ReplaceHeader((n, v)),
            t::Edit::SetSender(s) => w::Edit::SetSender(s),
            t::Edit::AddRecipient(r) => w::Edit::AddRecipient(r),
            t::Edit::RemoveRecipient(r) => w::Edit::RemoveRecipient(r),
            t::Edit::RewriteRecipient(a, b) => w::Edit::RewriteRecipient((a, b)),
            t::Edit::SetTag(k, v) => w::Edit::SetTag((k, v)),
        })
        .collect();
    w::Response { verdict, edits }
}

/// The host, reached through the imported `host` interface.
struct GuestHost;

impl Host for GuestHost {
    fn log(&self, level: t::Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            t::Level::Trace => w::Level::Trace,
            t::Level::Debug => w::Level::Debug,
            t::Level::Info => w::Level::Info,
            t::Level::Warn => w::Level::Warn,
            t::Level::Error => w::Level::Error,
        };
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        host::log(level, message, &fields);
    }

    fn resolve(&self, name: &str, kind: t::RecordType) -> Result<Vec<String>, t::DnsError> {
        host::resolve(name, to_record_type(kind)).map_err(from_dns_error)
    }

    fn resolve_many(
        &self,
        queries: &[(&str, t::RecordType)],
    ) -> Vec<Result<Vec<String>, t::DnsError>> {
        let queries: Vec<(String, w::RecordType)> = queries
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), to_record_type(*kind)))
            .collect();
        host::resolve_many(&queries)
            .into_iter()
            .map(|answer| answer.map_err(from_dns_error))
            .collect()
    }

    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), t::KvError> {
        host::kv_set(key, value, ttl_ms).map_err(from_kv_error)
    }

    fn kv_incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, t::KvError> {
        host::kv_incr(key, delta, ttl_ms).map_err(from_kv_error)
    }

    fn auth_results(&self) -> Vec<t::AuthResult> {
        host::auth_results()
            .into_iter()
            .map(|r| t::AuthResult {
                method: match r.method {
                    w::AuthMethod::Spf => t::AuthMethod::Spf,
                    w::AuthMethod::SpfHelo => t::AuthMethod::SpfHelo,
                    w::AuthMethod::Dkim => t::AuthMethod::Dkim,
                    w::AuthMethod::Dmarc => t::AuthMethod::Dmarc,
                    w::AuthMethod::Arc => t::AuthMethod::Arc,
                },
                verdict: match r.verdict {
                    w::AuthVerdict::Pass => t::AuthVerdict::Pass,
                    w::AuthVerdict::Fail => t::AuthVerdict::Fail,
                    w::AuthVerdict::Softfail => t::AuthVerdict::SoftFail,
                    w::AuthVerdict::Neutral => t::AuthVerdict::Neutral,
                    w::AuthVerdict::None => t::AuthVerdict::None,
                    w::AuthVerdict::Temperror => t::AuthVerdict::TempError,
                    w::AuthVerdict::Permerror => t::AuthVerdict::PermError,
                    w::AuthVerdict::Policy => t::AuthVerdict::Policy,
                },
                domain: r.domain,
                selector: r.selector,
                reason: r.reason,
                policy: r.policy,
            })
            .collect()
    }

    fn delivery_facts(&self) -> Option<t::OutcomeFacts> {
        host::delivery_facts().map(|f| t::OutcomeFacts {
            failure_class: f.failure_class,
            enhanced: f.enhanced,
            destination: f.destination,
            policy: f.policy,
            closed: f.closed,
            rate_percent: f.rate_percent,
        })
    }

    fn suspend_destination(&self, seconds: u32, reason: &str) -> bool {
        host::suspend_destination(seconds, reason)
    }

    fn choose_egress(&self, pool: &str) -> bool {
        host::choose_egress(pool)
    }

    fn session(&self) -> t::SessionInfo {
        let info = host::session();
        t::SessionInfo {
            client_ip: info.client_ip,
            client_port: info.client_port,
            listener: info.listener,
            reverse_dns: info.reverse_dns,
            helo: info.helo,
            tls: info.tls.map(|tls| t::TlsInfo {
                version: tls.version,
                cipher: tls.cipher,
                sni: tls.sni,
            }),
            auth_identity: info.auth_identity,
        }
    }

    fn kv_delete(&self, key: &str) {
        host::kv_delete(key)
    }

    fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    fn counter_add(&self, name: &str, delta: u64) {
        host::counter_add(name, delta)
    }

    fn config_json(&self) -> String {
        host::config()
    }

    fn tag(&self, key: &str) -> Option<String> {
        host::tag(key)
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = w::HttpRequest {
            method: match request.method {
                Method::Get => w::HttpMethod::Get,
                Method::Head => w::HttpMethod::Head,
                Method::Post => w::HttpMethod::Post,
                Method::Put => w::HttpMethod::Put,
                Method::Delete => w::HttpMethod::Delete,
                Method::Patch => w::HttpMethod::Patch,
            },
            url: request.url.clone(),
            headers: request.headers.clone(),
            body: request.body.clone(),
        };
        match host::http_call(&request) {
            Ok(response) => Ok(HttpResponse {
                status: response.status,
                headers: response.headers,
                body: response.body,
            }),
            Err(error) => Err(match error {
                w::HttpError::NotAllowed(why) => HttpError::NotAllowed(why),
                w::HttpError::Invalid(why) => HttpError::Invalid(why),
                w::HttpError::Timeout => HttpError::Timeout,
                w::HttpError::TooLarge(why) => HttpError::TooLarge(why),
                w::HttpError::Budget(why) => HttpError::Budget(why),
                w::HttpError::Failed(why) => HttpError::Failed(why),
            }),
        }
    }
}

fn to_record_type(kind: t::RecordType) -> w::RecordType {
    match kind {
        t::RecordType::A => w::RecordType::A,
        t::RecordType::Aaaa => w::RecordType::Aaaa,
        t::RecordType::Mx => w::RecordType::Mx,
        t::RecordType::Txt => w::RecordType::Txt,
        t::RecordType::Ptr => w::RecordType::Ptr,
    }
}

fn from_dns_error(error: w::DnsError) -> t::DnsError {
    match error {
        w::DnsError::NotFound => t::DnsError::NotFound,
        w::DnsError::NoRecords => t::DnsError::NoRecords,
        w::DnsError::Temporary(why) => t::DnsError::Temporary(why),
        w::DnsError::Invalid(why) => t::DnsError::Invalid(why),
    }
}

fn from_kv_error(error: w::KvError) -> t::KvError {
    match error {
        w::KvError::TooLarge(why) => t::KvError::TooLarge(why),
        w::KvError::Quota(why) => t::KvError::Quota(why),
    }
}

/// The message resource, borrowed for one on-data call.
struct GuestMessage<'a>(&'a message::Message);

impl Message for GuestMessage<'_> {
    fn raw_size(&self) -> u64 {
        self.0.raw_size()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.0.header(name)
    }

    fn headers(&self, name: &str) -> Vec<String> {
        self.0.headers(name)
    }

    fn header_names(&self) -> Vec<String> {
        self.0.header_names()
    }

    fn text_parts(&self, max_bytes: u32) -> Vec<String> {
        self.0.text_parts(max_bytes)
    }

    fn attachments(&self) -> Vec<t::Attachment> {
        self.0
            .attachments()
            .into_iter()
            .map(|a| t::Attachment {
                name: a.name,
                content_type: a.content_type,
                size: a.size,
            })
            .collect()
    }

    fn raw_range(&self, offset: u64, len: u32) -> Vec<u8> {
        self.0.raw_range(offset, len)
    }
}
