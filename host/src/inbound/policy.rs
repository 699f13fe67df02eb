//! Where sessions meet the plugin chain: building each stage's input and turning the
//! chain's decision into a reply.

use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Decision, StageInput, StageOutcome};

use super::reply::{EnhancedCode, Reply};
use super::session::{Session, State};

impl Session {
    /// Runs the chain for one stage with the session's facts as they are now (what the
    /// `session` host function answers), and notes a plugin's wish to disconnect.
    pub(super) async fn run_stage(&mut self, input: StageInput) -> StageOutcome {
        let info = self.session_info();
        self.plugins.set_session(info);
        let outcome = self.plugins.run(input, &mut self.tags).await;
        if matches!(outcome.decision, Decision::Disconnect(_)) {
            self.disconnect_asked = true;
        }
        outcome
    }

    fn session_info(&self) -> w::SessionInfo {
        let helo = match &self.state {
            State::Ready(helo) | State::Transaction(helo, _) => Some(helo.name.clone()),
            State::AwaitingHelo => None,
        };
        w::SessionInfo {
            client_ip: self.peer.ip().to_canonical().to_string(),
            client_port: self.peer.port(),
            listener: self.listener.to_string(),
            reverse_dns: self.reverse_dns.clone(),
            helo,
            tls: self
                .io
                .stream()
                .tls_facts()
                .map(|(version, cipher, sni)| w::TlsInfo {
                    version,
                    cipher,
                    sni,
                }),
            auth_identity: self.authenticated.clone(),
        }
    }
}

/// The reply a refusing decision asks for; `None` when the stage goes on.
pub(super) fn refusal(decision: &Decision) -> Option<Reply> {
    match decision {
        Decision::Reject(reply) | Decision::Tempfail(reply) | Decision::Disconnect(reply) => {
            Some(to_reply(reply))
        }
        Decision::Continue | Decision::Accept | Decision::Discard(_) | Decision::Quarantine(_) => {
            None
        }
    }
}

/// Converts a plugin's reply (already validated by the chain) into a session reply.
fn to_reply(reply: &w::Reply) -> Reply {
    let mut parts = reply
        .enhanced
        .split('.')
        .map(|p| p.parse::<u16>().unwrap_or(0));
    let class = u8::try_from(reply.code / 100).unwrap_or(4);
    let _ = parts.next();
    let enhanced = EnhancedCode::new(class, parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Reply::new(reply.code, enhanced, reply.text.clone())
}

/// ESMTP parameters for a stage input.
pub(super) fn params(params: &[super::address::Param]) -> Vec<w::Param> {
    params
        .iter()
        .map(|p| w::Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect()
}
