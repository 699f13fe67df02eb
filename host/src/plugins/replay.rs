//! Re-running recorded plugin calls against a plugin version, offline: the replay host.
//!
//! Each recorded session gets a session of its own with the one plugin in its chain; each
//! recorded call of that plugin is made again with the recorded input, session facts,
//! authentication results and tags, and with its host answers (DNS, KV, clock, HTTP) taken
//! from the recording in order ([`tidegate_plugin_sdk::record::Tape`]), so nothing leaves
//! the machine and the same plugin gives the same answers. The outcome goes through the
//! gateway's own validation and is compared with the recorded one.

use std::sync::Arc;

use tidegate_plugin_sdk::inspect::ParsedMessage;
use tidegate_plugin_sdk::record::{Outcome, Recording, Report, StageRecord, Tape};

use super::chain::{Chain, LoadedPlugin, SessionPlugins, StageInput};
use super::engine::PluginEngine;
use super::record::{SessionRecorder, convert};
use super::services::HostServices;

/// Replays every call of `plugin` (loaded under its recorded name) in `recording`.
pub async fn replay(
    plugin: Arc<LoadedPlugin>,
    engine: &Arc<PluginEngine>,
    services: &Arc<HostServices>,
    recording: &Recording,
) -> Report {
    let mut report = Report::default();
    let chain = Arc::new(Chain::of_plugins(vec![Arc::clone(&plugin)]));
    let mut current: Option<SessionPlugins> = None;
    let mut previous = None;
    for (place, session) in &recording.sessions {
        let continued = session.continues(previous);
        previous = Some(session);
        let calls: Vec<_> = session
            .calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.plugin == *plugin.name)
            .collect();
        if calls.is_empty() {
            continue;
        }
        // The parts of one session run in one plugin session, as they did.
        let plugins = match current.as_mut() {
            Some(plugins) if continued => plugins,
            _ => {
                if let Some(mut done) = current.take() {
                    report.misses += done.recorder_mut().map_or(0, |r| r.misses);
                    done.release();
                }
                report.sessions += 1;
                let mut plugins = SessionPlugins::new(
                    Arc::clone(&chain),
                    Arc::clone(engine),
                    Arc::clone(services),
                );
                plugins.set_recorder(SessionRecorder::new(&session.listener, None, u64::MAX));
                current.insert(plugins)
            }
        };
        for (index, call) in calls {
            plugins.set_session(convert::session_from(&call.session));
            plugins.set_auth_results(
                call.auth_results
                    .iter()
                    .map(convert::auth_result_from)
                    .collect(),
            );
            plugins.set_replay_tape(Tape::new(&call.answers, session.started_ms));
            let mut tags = call.tags.clone();
            plugins.run(stage_input(&call.input), &mut tags).await;
            // Each replayed call is read back at once (one chain element: at most one).
            let replayed = plugins
                .recorder_mut()
                .and_then(SessionRecorder::take_last)
                .unwrap_or(Outcome::NotCalled);
            report.compare(place, index, call, replayed);
        }
    }
    if let Some(mut done) = current {
        report.misses += done.recorder_mut().map_or(0, |r| r.misses);
        done.release();
    }
    report
}

/// A recorded stage's input as the chain takes it.
fn stage_input(input: &StageRecord) -> StageInput {
    match input {
        StageRecord::Connect(i) => StageInput::Connect(convert::connect_from(i)),
        StageRecord::Helo(i) => StageInput::Helo(convert::helo_from(i)),
        StageRecord::Auth(i) => StageInput::Auth(convert::auth_from(i)),
        StageRecord::MailFrom(i) => StageInput::MailFrom(convert::mail_from_from(i)),
        StageRecord::RcptTo(i) => StageInput::RcptTo(convert::rcpt_to_from(i)),
        StageRecord::Data(data) => StageInput::Data(
            convert::envelope_from(&data.envelope),
            Arc::new(ParsedMessage::parse(data.message.0.clone()).with_size(data.size)),
        ),
    }
}
