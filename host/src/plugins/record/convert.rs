//! Between the contract's types (as wasmtime generates them) and the SDK's plain types, in
//! which the record format is written: both ways, since a replay hands recorded values
//! back to a plugin.

use tidegate_plugin_sdk as sdk;
use tidegate_plugin_sdk::record::{AuthRecord, HttpAnswer};

use crate::plugins::bindings::tidegate::plugin::types as w;

fn params_to(params: &[w::Param]) -> Vec<sdk::Param> {
    params
        .iter()
        .map(|p| sdk::Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect()
}

fn params_from(params: &[sdk::Param]) -> Vec<w::Param> {
    params
        .iter()
        .map(|p| w::Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect()
}

pub fn connect_to(i: &w::ConnectInfo) -> sdk::ConnectInfo {
    sdk::ConnectInfo {
        client_ip: i.client_ip.clone(),
        client_port: i.client_port,
        listener: i.listener.clone(),
        tls: i.tls,
        reverse_dns: i.reverse_dns.clone(),
    }
}

pub fn connect_from(i: &sdk::ConnectInfo) -> w::ConnectInfo {
    w::ConnectInfo {
        client_ip: i.client_ip.clone(),
        client_port: i.client_port,
        listener: i.listener.clone(),
        tls: i.tls,
        reverse_dns: i.reverse_dns.clone(),
    }
}

pub fn helo_to(i: &w::HeloInfo) -> sdk::HeloInfo {
    sdk::HeloInfo {
        name: i.name.clone(),
        extended: i.extended,
    }
}

pub fn helo_from(i: &sdk::HeloInfo) -> w::HeloInfo {
    w::HeloInfo {
        name: i.name.clone(),
        extended: i.extended,
    }
}

/// The password is left out: a record holds no secret.
pub fn auth_to(i: &w::AuthInfo) -> AuthRecord {
    AuthRecord {
        mechanism: i.mechanism.clone(),
        username: i.username.clone(),
        users_file_verdict: i.users_file_verdict,
    }
}

/// A replayed on-auth has an empty password.
pub fn auth_from(i: &AuthRecord) -> w::AuthInfo {
    w::AuthInfo {
        mechanism: i.mechanism.clone(),
        username: i.username.clone(),
        password: String::new(),
        users_file_verdict: i.users_file_verdict,
    }
}

pub fn mail_from_to(i: &w::MailFromInfo) -> sdk::MailFromInfo {
    sdk::MailFromInfo {
        sender: i.sender.clone(),
        params: params_to(&i.params),
    }
}

pub fn mail_from_from(i: &sdk::MailFromInfo) -> w::MailFromInfo {
    w::MailFromInfo {
        sender: i.sender.clone(),
        params: params_from(&i.params),
    }
}

pub fn rcpt_to_to(i: &w::RcptToInfo) -> sdk::RcptToInfo {
    sdk::RcptToInfo {
        recipient: i.recipient.clone(),
        params: params_to(&i.params),
    }
}

pub fn rcpt_to_from(i: &sdk::RcptToInfo) -> w::RcptToInfo {
    w::RcptToInfo {
        recipient: i.recipient.clone(),
        params: params_from(&i.params),
    }
}

pub fn envelope_to(e: &w::Envelope) -> sdk::Envelope {
    sdk::Envelope {
        sender: e.sender.clone(),
        recipients: e.recipients.clone(),
    }
}

pub fn envelope_from(e: &sdk::Envelope) -> w::Envelope {
    w::Envelope {
        sender: e.sender.clone(),
        recipients: e.recipients.clone(),
    }
}

pub fn session_to(s: &w::SessionInfo) -> sdk::SessionInfo {
    sdk::SessionInfo {
        client_ip: s.client_ip.clone(),
        client_port: s.client_port,
        listener: s.listener.clone(),
        reverse_dns: s.reverse_dns.clone(),
        helo: s.helo.clone(),
        tls: s.tls.as_ref().map(|t| sdk::TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            sni: t.sni.clone(),
        }),
        auth_identity: s.auth_identity.clone(),
    }
}

pub fn session_from(s: &sdk::SessionInfo) -> w::SessionInfo {
    w::SessionInfo {
        client_ip: s.client_ip.clone(),
        client_port: s.client_port,
        listener: s.listener.clone(),
        reverse_dns: s.reverse_dns.clone(),
        helo: s.helo.clone(),
        tls: s.tls.as_ref().map(|t| w::TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            sni: t.sni.clone(),
        }),
        auth_identity: s.auth_identity.clone(),
    }
}

pub fn auth_result_to(r: &w::AuthResult) -> sdk::AuthResult {
    sdk::AuthResult {
        method: match r.method {
            w::AuthMethod::Spf => sdk::AuthMethod::Spf,
            w::AuthMethod::SpfHelo => sdk::AuthMethod::SpfHelo,
            w::AuthMethod::Dkim => sdk::AuthMethod::Dkim,
            w::AuthMethod::Dmarc => sdk::AuthMethod::Dmarc,
            w::AuthMethod::Arc => sdk::AuthMethod::Arc,
        },
        verdict: match r.verdict {
            w::AuthVerdict::Pass => sdk::AuthVerdict::Pass,
            w::AuthVerdict::Fail => sdk::AuthVerdict::Fail,
            w::AuthVerdict::Softfail => sdk::AuthVerdict::SoftFail,
            w::AuthVerdict::Neutral => sdk::AuthVerdict::Neutral,
            w::AuthVerdict::None => sdk::AuthVerdict::None,
            w::AuthVerdict::Temperror => sdk::AuthVerdict::TempError,
            w::AuthVerdict::Permerror => sdk::AuthVerdict::PermError,
            w::AuthVerdict::Policy => sdk::AuthVerdict::Policy,
        },
        domain: r.domain.clone(),
        selector: r.selector.clone(),
        reason: r.reason.clone(),
        policy: r.policy.clone(),
    }
}

pub fn auth_result_from(r: &sdk::AuthResult) -> w::AuthResult {
    w::AuthResult {
        method: match r.method {
            sdk::AuthMethod::Spf => w::AuthMethod::Spf,
            sdk::AuthMethod::SpfHelo => w::AuthMethod::SpfHelo,
            sdk::AuthMethod::Dkim => w::AuthMethod::Dkim,
            sdk::AuthMethod::Dmarc => w::AuthMethod::Dmarc,
            sdk::AuthMethod::Arc => w::AuthMethod::Arc,
        },
        verdict: match r.verdict {
            sdk::AuthVerdict::Pass => w::AuthVerdict::Pass,
            sdk::AuthVerdict::Fail => w::AuthVerdict::Fail,
            sdk::AuthVerdict::SoftFail => w::AuthVerdict::Softfail,
            sdk::AuthVerdict::Neutral => w::AuthVerdict::Neutral,
            sdk::AuthVerdict::None => w::AuthVerdict::None,
            sdk::AuthVerdict::TempError => w::AuthVerdict::Temperror,
            sdk::AuthVerdict::PermError => w::AuthVerdict::Permerror,
            sdk::AuthVerdict::Policy => w::AuthVerdict::Policy,
        },
        domain: r.domain.clone(),
        selector: r.selector.clone(),
        reason: r.reason.clone(),
        policy: r.policy.clone(),
    }
}

fn reply_to(r: &w::Reply) -> sdk::Reply {
    sdk::Reply {
        code: r.code,
        enhanced: r.enhanced.clone(),
        text: r.text.clone(),
    }
}

pub fn response_to(r: &w::Response) -> sdk::Response {
    let verdict = match &r.verdict {
        w::Verdict::Continue => sdk::Verdict::Continue,
        w::Verdict::Accept => sdk::Verdict::Accept,
        w::Verdict::Reject(reply) => sdk::Verdict::Reject(reply_to(reply)),
        w::Verdict::Tempfail(reply) => sdk::Verdict::Tempfail(reply_to(reply)),
        w::Verdict::Disconnect(reply) => sdk::Verdict::Disconnect(reply_to(reply)),
        w::Verdict::Discard(why) => sdk::Verdict::Discard(why.clone()),
        w::Verdict::Quarantine(why) => sdk::Verdict::Quarantine(why.clone()),
    };
    let edits = r
        .edits
        .iter()
        .map(|e| match e {
            w::Edit::AddHeader((n, v)) => sdk::Edit::AddHeader(n.clone(), v.clone()),
            w::Edit::RemoveHeader(n) => sdk::Edit::RemoveHeader(n.clone()),
            w::Edit::ReplaceHeader((n, v)) => sdk::Edit::ReplaceHeader(n.clone(), v.clone()),
            w::Edit::SetSender(s) => sdk::Edit::SetSender(s.clone()),
            w::Edit::AddRecipient(a) => sdk::Edit::AddRecipient(a.clone()),
            w::Edit::RemoveRecipient(a) => sdk::Edit::RemoveRecipient(a.clone()),
            w::Edit::RewriteRecipient((a, b)) => sdk::Edit::RewriteRecipient(a.clone(), b.clone()),
            w::Edit::SetTag((k, v)) => sdk::Edit::SetTag(k.clone(), v.clone()),
        })
        .collect();
    sdk::Response { verdict, edits }
}

pub fn record_type_to(kind: w::RecordType) -> sdk::RecordType {
    match kind {
        w::RecordType::A => sdk::RecordType::A,
        w::RecordType::Aaaa => sdk::RecordType::Aaaa,
        w::RecordType::Mx => sdk::RecordType::Mx,
        w::RecordType::Txt => sdk::RecordType::Txt,
        w::RecordType::Ptr => sdk::RecordType::Ptr,
    }
}

pub fn dns_to(r: &Result<Vec<String>, w::DnsError>) -> Result<Vec<String>, sdk::DnsError> {
    r.clone().map_err(|e| match e {
        w::DnsError::NotFound => sdk::DnsError::NotFound,
        w::DnsError::NoRecords => sdk::DnsError::NoRecords,
        w::DnsError::Temporary(why) => sdk::DnsError::Temporary(why),
        w::DnsError::Invalid(why) => sdk::DnsError::Invalid(why),
    })
}

pub fn dns_from(r: Result<Vec<String>, sdk::DnsError>) -> Result<Vec<String>, w::DnsError> {
    r.map_err(|e| match e {
        sdk::DnsError::NotFound => w::DnsError::NotFound,
        sdk::DnsError::NoRecords => w::DnsError::NoRecords,
        sdk::DnsError::Temporary(why) => w::DnsError::Temporary(why),
        sdk::DnsError::Invalid(why) => w::DnsError::Invalid(why),
    })
}

pub fn kv_error_to(e: &w::KvError) -> sdk::KvError {
    match e {
        w::KvError::TooLarge(why) => sdk::KvError::TooLarge(why.clone()),
        w::KvError::Quota(why) => sdk::KvError::Quota(why.clone()),
    }
}

pub fn kv_error_from(e: sdk::KvError) -> w::KvError {
    match e {
        sdk::KvError::TooLarge(why) => w::KvError::TooLarge(why),
        sdk::KvError::Quota(why) => w::KvError::Quota(why),
    }
}

pub fn method_name(m: w::HttpMethod) -> &'static str {
    match m {
        w::HttpMethod::Get => "GET",
        w::HttpMethod::Head => "HEAD",
        w::HttpMethod::Post => "POST",
        w::HttpMethod::Put => "PUT",
        w::HttpMethod::Delete => "DELETE",
        w::HttpMethod::Patch => "PATCH",
    }
}

pub fn http_to(r: &Result<w::HttpResponse, w::HttpError>) -> Result<HttpAnswer, (String, String)> {
    match r {
        Ok(response) => Ok(HttpAnswer {
            status: response.status,
            headers: response.headers.clone(),
            body: sdk::record::Bytes(response.body.clone()),
        }),
        Err(e) => Err(match e {
            w::HttpError::NotAllowed(why) => ("not-allowed".into(), why.clone()),
            w::HttpError::Invalid(why) => ("invalid".into(), why.clone()),
            w::HttpError::Timeout => ("timeout".into(), String::new()),
            w::HttpError::TooLarge(why) => ("too-large".into(), why.clone()),
            w::HttpError::Budget(why) => ("budget".into(), why.clone()),
            w::HttpError::Failed(why) => ("failed".into(), why.clone()),
        }),
    }
}

pub fn http_from(r: Result<HttpAnswer, (String, String)>) -> Result<w::HttpResponse, w::HttpError> {
    match r {
        Ok(answer) => Ok(w::HttpResponse {
            status: answer.status,
            headers: answer.headers,
            body: answer.body.0,
        }),
        Err((kind, why)) => Err(match kind.as_str() {
            "not-allowed" => w::HttpError::NotAllowed(why),
            "invalid" => w::HttpError::Invalid(why),
            "timeout" => w::HttpError::Timeout,
            "too-large" => w::HttpError::TooLarge(why),
            "budget" => w::HttpError::Budget(why),
            _ => w::HttpError::Failed(why),
        }),
    }
}
