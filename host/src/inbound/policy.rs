//! Where sessions meet the plugin chain: building each stage's input and turning the
//! chain's decision into a reply.

use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::Decision;

use super::reply::{EnhancedCode, Reply};

/// The reply a refusing decision asks for; `None` when the stage goes on.
pub(super) fn refusal(decision: &Decision) -> Option<Reply> {
    match decision {
        Decision::Reject(reply) | Decision::Tempfail(reply) => Some(to_reply(reply)),
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
