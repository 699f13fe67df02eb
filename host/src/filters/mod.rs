//! External filters as elements of a listener's chain: milters ([`milter`], the
//! Sendmail/Postfix milter protocol) and Postfix policy services ([`policy`], the SMTPD
//! policy delegation protocol).
//!
//! A filter takes its place in a listener's `plugins = [...]` list by name, like a plugin,
//! and answers what a plugin would: a [`w::Response`] (verdict and edits) that the chain
//! validates exactly as it validates a plugin's, so a filter's reply codes, header fields
//! and addresses are held to the same rules. What a filter that is down, slow or speaks
//! garbage means is its `on_error`, applied by the chain like a failing plugin's.
//!
//! Each SMTP session gets its own [`FilterSession`] per filter: a milter connection of
//! its own (opened at the session's first MAIL FROM, aborted between transactions, told
//! QUIT at the end), or the transaction state of a policy service whose connections are
//! pooled across sessions.

pub mod milter;
pub mod policy;

use std::sync::Arc;

use crate::config::{FilterAddress, MilterConfig, OnError, PolicyServiceConfig};
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, StageInput};
use crate::plugins::limits::{CallError, Failure};

/// One configured external filter.
#[derive(Debug)]
pub enum Filter {
    /// A `[[milter]]`.
    Milter(Arc<milter::Milter>),
    /// A `[[policy_service]]`.
    Policy(Arc<policy::PolicyService>),
}

impl Filter {
    /// A milter from its table; `hostname` is the gateway's (the `j` macro).
    pub fn milter(config: &MilterConfig, hostname: &str) -> Filter {
        Filter::Milter(Arc::new(milter::Milter::new(config.clone(), hostname)))
    }

    /// A policy service from its table.
    pub fn policy(config: &PolicyServiceConfig) -> Filter {
        Filter::Policy(Arc::new(policy::PolicyService::new(config.clone())))
    }

    /// The configured name.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Filter::Milter(m) => &m.name,
            Filter::Policy(p) => &p.name,
        }
    }

    /// `milter` or `policy_service`, as in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Filter::Milter(_) => "milter",
            Filter::Policy(_) => "policy_service",
        }
    }

    /// Where it listens.
    pub fn address(&self) -> &FilterAddress {
        match self {
            Filter::Milter(m) => &m.config.address,
            Filter::Policy(p) => &p.config.address,
        }
    }

    /// Its failure policy.
    pub fn on_error(&self) -> OnError {
        match self {
            Filter::Milter(m) => m.config.on_error,
            Filter::Policy(p) => p.config.on_error,
        }
    }

    /// Whether it is called at `hook`.
    pub fn wants(&self, hook: Hook) -> bool {
        match self {
            Filter::Milter(_) => milter::wants(hook),
            Filter::Policy(p) => p.wants(hook),
        }
    }

    /// Whether `other` was built from the same settings (a reload keeps this one then, and
    /// with it a policy service's open connections).
    pub fn same_settings(&self, other: &Filter) -> bool {
        match (self, other) {
            (Filter::Milter(a), Filter::Milter(b)) => {
                a.config == b.config && a.hostname == b.hostname
            }
            (Filter::Policy(a), Filter::Policy(b)) => a.config == b.config,
            _ => false,
        }
    }

    /// The state of one SMTP session with this filter.
    pub fn session(&self) -> FilterSession {
        match self {
            Filter::Milter(m) => FilterSession::Milter(milter::MilterSession::new(Arc::clone(m))),
            Filter::Policy(p) => FilterSession::Policy(policy::PolicySession::new(Arc::clone(p))),
        }
    }
}

/// What a filter learns of the session besides the stage's own input.
pub struct Facts<'a> {
    /// The session as the `session` host function describes it.
    pub session: &'a w::SessionInfo,
    /// The message's queue id, once it has one (at DATA).
    pub queue_id: Option<&'a str>,
}

/// One session's state with one filter.
pub enum FilterSession {
    /// A milter connection and its transaction.
    Milter(milter::MilterSession),
    /// A policy service's transaction state.
    Policy(policy::PolicySession),
}

impl FilterSession {
    /// Asks the filter about one stage. The caller bounds the whole call by the stage's
    /// deadline; each wait inside is bounded by the filter's `timeout_ms`.
    pub async fn stage(
        &mut self,
        input: &StageInput,
        facts: &Facts<'_>,
    ) -> Result<w::Response, CallError> {
        match self {
            FilterSession::Milter(m) => m.stage(input, facts).await,
            FilterSession::Policy(p) => p.stage(input, facts).await,
        }
    }

    /// A new transaction begins (MAIL FROM), whether or not the chain reaches this
    /// filter in it: what the last one collected must not leak into it.
    pub fn new_transaction(&mut self) {
        match self {
            FilterSession::Milter(m) => m.new_transaction(),
            FilterSession::Policy(p) => p.new_transaction(),
        }
    }

    /// The session is over: a milter is told QUIT (in the background, never holding up
    /// the session's end).
    pub fn end(&mut self) {
        if let FilterSession::Milter(m) = self {
            m.end();
        }
    }
}

/// A filter's answer that lets the stage go on.
pub(crate) fn carry_on(edits: Vec<w::Edit>) -> w::Response {
    w::Response {
        verdict: w::Verdict::Continue,
        edits,
    }
}

/// A filter that could not be reached or did not answer in time.
pub(crate) fn unreachable(why: impl Into<String>) -> CallError {
    CallError::new(Failure::Init, why)
}

/// A filter that took too long.
pub(crate) fn too_slow(why: impl Into<String>) -> CallError {
    CallError::new(Failure::Time, why)
}

/// A filter that answered what the protocol or Tidegate does not take.
pub(crate) fn garbage(why: impl Into<String>) -> CallError {
    CallError::new(Failure::Invalid, why)
}

/// A stream to a filter, TCP or Unix.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connects to `address` within `timeout`.
pub(crate) async fn connect(
    address: &FilterAddress,
    timeout: std::time::Duration,
) -> Result<Box<dyn Io>, CallError> {
    let connecting = async {
        match address {
            FilterAddress::Tcp(address) => tokio::net::TcpStream::connect(address).await.map(|s| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Io>
            }),
            FilterAddress::Unix(path) => tokio::net::UnixStream::connect(path)
                .await
                .map(|s| Box::new(s) as Box<dyn Io>),
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(unreachable(format!("cannot connect to {address}: {e}"))),
        Err(_) => Err(too_slow(format!(
            "no connection to {address} within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// A reply from `NNN [x.y.z] text`, as a verdict: 4xx tempfails, 5xx rejects; anything
/// else is `None`. The enhanced code defaults to `default_detail` under the reply's class
/// (`4.7.1`, `5.7.1`); the chain checks the result like a plugin's reply.
pub(crate) fn verdict_from_reply(line: &str, default_text: &str) -> Option<w::Verdict> {
    let line = line.trim();
    let (code, rest) = line.split_at_checked(3)?;
    let code: u16 = code.parse().ok()?;
    if !(400..600).contains(&code) || !(rest.is_empty() || rest.starts_with([' ', '-'])) {
        return None;
    }
    let rest = rest.get(1..).unwrap_or("").trim_start();
    let class = code / 100;
    let (enhanced, text) = match rest.split_once(' ').unwrap_or((rest, "")) {
        (first, text)
            if first.split('.').count() == 3
                && first.starts_with(char::from_digit(u32::from(class), 10)?) =>
        {
            (first.to_owned(), text.trim())
        }
        _ => (format!("{class}.7.1"), rest),
    };
    let text = if text.is_empty() { default_text } else { text };
    let reply = w::Reply {
        code,
        enhanced,
        text: text.to_owned(),
    };
    Some(if class == 4 {
        w::Verdict::Tempfail(reply)
    } else {
        w::Verdict::Reject(reply)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_become_verdicts_of_their_class() {
        let Some(w::Verdict::Reject(r)) = verdict_from_reply("554 5.7.1 Gtube pattern", "x") else {
            panic!("not a reject")
        };
        assert_eq!(
            (r.code, r.enhanced.as_str(), r.text.as_str()),
            (554, "5.7.1", "Gtube pattern")
        );
        let Some(w::Verdict::Tempfail(r)) = verdict_from_reply("450 Greylisted, come back", "x")
        else {
            panic!("not a tempfail")
        };
        assert_eq!(
            (r.code, r.enhanced.as_str(), r.text.as_str()),
            (450, "4.7.1", "Greylisted, come back")
        );
        let Some(w::Verdict::Reject(r)) = verdict_from_reply("550", "Denied") else {
            panic!("not a reject")
        };
        assert_eq!(r.text, "Denied");
        // A mismatched enhanced code is text, which the chain then sees as it is.
        let Some(w::Verdict::Tempfail(r)) = verdict_from_reply("451 5.7.1 odd", "x") else {
            panic!("not a tempfail")
        };
        assert_eq!(r.enhanced, "4.7.1");
        assert!(verdict_from_reply("250 ok", "x").is_none());
        assert!(verdict_from_reply("55", "x").is_none());
        assert!(verdict_from_reply("550x", "x").is_none());
        assert!(verdict_from_reply("abc def", "x").is_none());
    }
}
