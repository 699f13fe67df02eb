//! Plugins built against the previous version of the contract (`tidegate:plugin@0.1.0`)
//! keep loading and working: the host links that version's `host` and `message`
//! interfaces beside the current ones, over the same logic, and converts its hooks' inputs
//! and answers to and from the current types. What 0.1.0 cannot express, it never sees: a
//! KV write over the quota traps (0.1.0's `kv-set` has no error to return), and the hooks
//! added since are not called.

use tidegate_plugin_sdk::Message as _;
use wasmtime::component::Resource;

use super::bindings::tidegate::plugin::types as w;
use super::bindings::v1::tidegate::plugin::{host as v1_host, message as v1_message, types as v1};
use super::services::{MessageHandle, PluginState, host_message};

impl v1::Host for PluginState {}

host_message!(v1_message, v1);

impl v1_host::Host for PluginState {
    async fn log(
        &mut self,
        level: v1::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.write_log_line(level_from(level), &message, &fields);
        Ok(())
    }

    async fn resolve(
        &mut self,
        name: String,
        kind: v1::RecordType,
    ) -> wasmtime::Result<Result<Vec<String>, v1::DnsError>> {
        let kind = match kind {
            v1::RecordType::A => w::RecordType::A,
            v1::RecordType::Aaaa => w::RecordType::Aaaa,
            v1::RecordType::Mx => w::RecordType::Mx,
            v1::RecordType::Txt => w::RecordType::Txt,
            v1::RecordType::Ptr => w::RecordType::Ptr,
        };
        Ok(self.lookup(&name, kind).await.map_err(|e| match e {
            w::DnsError::NotFound => v1::DnsError::NotFound,
            w::DnsError::NoRecords => v1::DnsError::NoRecords,
            w::DnsError::Temporary(why) => v1::DnsError::Temporary(why),
            w::DnsError::Invalid(why) => v1::DnsError::Invalid(why),
        }))
    }

    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.kv_read(&key).await
    }

    async fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<()> {
        self.kv_write(&key, &value, ttl_ms)
            .await
            .map_err(super::services::kv_failure)
    }

    async fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<i64> {
        self.kv_add(&key, delta, ttl_ms)
            .await
            .map_err(super::services::kv_failure)
    }

    async fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.kv_remove(&key).await
    }

    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.now())
    }

    async fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        self.add_to_counter(name, delta)
    }

    async fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.config_text())
    }

    async fn tag(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.tag_value(&key))
    }
}

fn level_from(level: v1::Level) -> w::Level {
    match level {
        v1::Level::Trace => w::Level::Trace,
        v1::Level::Debug => w::Level::Debug,
        v1::Level::Info => w::Level::Info,
        v1::Level::Warn => w::Level::Warn,
        v1::Level::Error => w::Level::Error,
    }
}

/// The hooks a 0.1.0 plugin declared, as the current flags (it has none of the new ones).
pub fn hooks_from(hooks: v1::Hooks) -> w::Hooks {
    let pairs = [
        (v1::Hooks::CONNECT, w::Hooks::CONNECT),
        (v1::Hooks::HELO, w::Hooks::HELO),
        (v1::Hooks::AUTH, w::Hooks::AUTH),
        (v1::Hooks::MAIL_FROM, w::Hooks::MAIL_FROM),
        (v1::Hooks::RCPT_TO, w::Hooks::RCPT_TO),
        (v1::Hooks::DATA, w::Hooks::DATA),
        (v1::Hooks::ROUTE, w::Hooks::ROUTE),
        (v1::Hooks::DELIVERY, w::Hooks::DELIVERY),
    ];
    pairs
        .into_iter()
        .filter(|(old, _)| hooks.contains(*old))
        .fold(w::Hooks::empty(), |all, (_, new)| all | new)
}

fn reply_from(reply: v1::Reply) -> w::Reply {
    w::Reply {
        code: reply.code,
        enhanced: reply.enhanced,
        text: reply.text,
    }
}

/// A 0.1.0 answer as the current type.
pub fn response_from(response: v1::Response) -> w::Response {
    let verdict = match response.verdict {
        v1::Verdict::Continue => w::Verdict::Continue,
        v1::Verdict::Accept => w::Verdict::Accept,
        v1::Verdict::Reject(reply) => w::Verdict::Reject(reply_from(reply)),
        v1::Verdict::Tempfail(reply) => w::Verdict::Tempfail(reply_from(reply)),
        v1::Verdict::Discard(why) => w::Verdict::Discard(why),
        v1::Verdict::Quarantine(why) => w::Verdict::Quarantine(why),
    };
    let edits = response
        .edits
        .into_iter()
        .map(|edit| match edit {
            v1::Edit::AddHeader(field) => w::Edit::AddHeader(field),
            v1::Edit::RemoveHeader(name) => w::Edit::RemoveHeader(name),
            v1::Edit::ReplaceHeader(field) => w::Edit::ReplaceHeader(field),
            v1::Edit::SetSender(sender) => w::Edit::SetSender(sender),
            v1::Edit::AddRecipient(address) => w::Edit::AddRecipient(address),
            v1::Edit::RemoveRecipient(address) => w::Edit::RemoveRecipient(address),
            v1::Edit::RewriteRecipient(pair) => w::Edit::RewriteRecipient(pair),
            v1::Edit::SetTag(pair) => w::Edit::SetTag(pair),
        })
        .collect();
    w::Response { verdict, edits }
}

/// A 0.1.0 route as the current type.
pub fn route_from(route: v1::Route) -> w::Route {
    match route {
        v1::Route::Mx => w::Route::Mx,
        v1::Route::Named(name) => w::Route::Named(name),
        v1::Route::Local => w::Route::Local,
        v1::Route::Discard => w::Route::Discard,
    }
}

fn params_to(params: &[w::Param]) -> Vec<v1::Param> {
    params
        .iter()
        .map(|p| v1::Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect()
}

/// The inputs of the session hooks in 0.1.0's types.
pub fn connect_to(info: &w::ConnectInfo) -> v1::ConnectInfo {
    v1::ConnectInfo {
        client_ip: info.client_ip.clone(),
        client_port: info.client_port,
        listener: info.listener.clone(),
        tls: info.tls,
        reverse_dns: info.reverse_dns.clone(),
    }
}

/// on-helo's input.
pub fn helo_to(info: &w::HeloInfo) -> v1::HeloInfo {
    v1::HeloInfo {
        name: info.name.clone(),
        extended: info.extended,
    }
}

/// on-auth's input.
pub fn auth_to(info: &w::AuthInfo) -> v1::AuthInfo {
    v1::AuthInfo {
        mechanism: info.mechanism.clone(),
        username: info.username.clone(),
        password: info.password.clone(),
        users_file_verdict: info.users_file_verdict,
    }
}

/// on-mail-from's input.
pub fn mail_from_to(info: &w::MailFromInfo) -> v1::MailFromInfo {
    v1::MailFromInfo {
        sender: info.sender.clone(),
        params: params_to(&info.params),
    }
}

/// on-rcpt-to's input.
pub fn rcpt_to_to(info: &w::RcptToInfo) -> v1::RcptToInfo {
    v1::RcptToInfo {
        recipient: info.recipient.clone(),
        params: params_to(&info.params),
    }
}

/// on-data's envelope.
pub fn envelope_to(envelope: &w::Envelope) -> v1::Envelope {
    v1::Envelope {
        sender: envelope.sender.clone(),
        recipients: envelope.recipients.clone(),
    }
}

/// on-delivery's input.
pub fn delivery_to(info: &w::DeliveryInfo) -> v1::DeliveryInfo {
    v1::DeliveryInfo {
        queue_id: info.queue_id.clone(),
        recipient: info.recipient.clone(),
        status: match info.status {
            w::DeliveryStatus::Delivered => v1::DeliveryStatus::Delivered,
            w::DeliveryStatus::Deferred => v1::DeliveryStatus::Deferred,
            w::DeliveryStatus::Bounced => v1::DeliveryStatus::Bounced,
        },
        reply: info.reply.clone(),
        attempt: info.attempt,
    }
}
