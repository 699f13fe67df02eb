//! A starting point for a Tidegate plugin.
//!
//! It does two small things so every part of a plugin is shown once:
//! - at RCPT TO it refuses recipients whose local part is in `refuse_local_parts`;
//! - at DATA it adds a header naming the plugin and counting the session's recipients.
//!
//! In a crate made by `tidegate plugin new` (a copy of this template): test with
//! `cargo test` (natively, no Wasm needed), build with
//! `cargo build --release --target wasm32-wasip2`, and check the component with
//! `tidegate plugin check target/wasm32-wasip2/release/plugin_template.wasm` before pointing
//! a `[[plugin]]` at it. (In the Tidegate repository, `scripts/build-plugins` builds it.)

use serde::Deserialize;
use tidegate_plugin_sdk::prelude::*;

/// `[plugin.config]` in the gateway's configuration, handed over as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Local parts to refuse, e.g. `["noreply"]`.
    #[serde(default)]
    pub refuse_local_parts: Vec<String>,
    /// The header to add at DATA.
    #[serde(default = "default_header")]
    pub header: String,
}

fn default_header() -> String {
    "X-Plugin-Template".to_owned()
}

/// One value of this type serves one SMTP session at a time: `recipients_seen` is session
/// state, reset by `new_session`.
pub struct Template {
    config: Config,
    recipients_seen: u32,
}

impl Plugin for Template {
    fn init(host: &dyn Host) -> Result<Self, String> {
        // A configuration error here refuses the plugin at load time and, on a reload,
        // keeps the previous version running.
        let config: Config = host.config()?;
        Ok(Template {
            config,
            recipients_seen: 0,
        })
    }

    /// Called before every session after the first that this value serves: keep the
    /// configuration (parsed once), reset what belongs to one session. Leaving this out is
    /// also correct: the default builds a fresh value with `init`.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        self.recipients_seen = 0;
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            rcpt_to: true,
            data: true,
            ..Hooks::default()
        }
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, info: &RcptToInfo) -> Response {
        self.recipients_seen += 1;
        let local = info.recipient.rsplit_once('@').map_or("", |(l, _)| l);
        if self
            .config
            .refuse_local_parts
            .iter()
            .any(|r| r.eq_ignore_ascii_case(local))
        {
            host.log(
                Level::Info,
                "refusing recipient",
                &[("recipient", &info.recipient)],
            );
            return Verdict::reject(550, "5.1.1", "This address does not take mail").into();
        }
        Response::next()
    }

    fn on_data(
        &mut self,
        _host: &dyn Host,
        _envelope: &Envelope,
        message: &dyn Message,
    ) -> Response {
        let value = format!(
            "recipients-seen={} size={}",
            self.recipients_seen,
            message.raw_size()
        );
        Response::next().add_header(&self.config.header, &value)
    }
}

tidegate_plugin_sdk::export!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    #[test]
    fn refuses_configured_local_parts() {
        let host = TestHost::new().with_config(json!({ "refuse_local_parts": ["noreply"] }));
        let mut session = Harness::<Template>::new(host).unwrap();
        assert!(matches!(
            session.rcpt_to("NoReply@example.test").verdict,
            Verdict::Reject(_)
        ));
        assert_eq!(
            session.rcpt_to("alice@example.test").verdict,
            Verdict::Continue
        );
    }

    /// Real traffic as a test case: a listener with `record = { path = "var/records" }`
    /// writes what its plugins did; commit a records file and replay it here with
    /// `Recording::load("tests/fixtures/recorded.jsonl")`. (This one is inline.)
    #[test]
    fn a_recorded_session_replays_the_same() {
        use tidegate_plugin_sdk::testing::Recording;
        let line = r#"{"version":1,"listener":"mx","started_ms":0,"calls":[{"plugin":"template",
            "input":{"rcpt-to":{"recipient":"noreply@example.test","params":[]}},
            "session":{"client_ip":"192.0.2.1","client_port":40000,"listener":"mx",
              "reverse_dns":null,"helo":"client.example.org","tls":null,"auth_identity":null},
            "outcome":{"answer":{"verdict":{"reject":{"code":550,"enhanced":"5.1.1",
              "text":"This address does not take mail"}},"edits":[]}}}]}"#;
        let recording = Recording::from_lines("inline", &line.replace('\n', "")).unwrap();
        let report = recording
            .replay::<Template>("template", json!({ "refuse_local_parts": ["noreply"] }))
            .unwrap();
        assert!(report.is_identical(), "{}", report.render());
        // The same traffic against a configuration that refuses nothing: one difference.
        let report = recording.replay::<Template>("template", json!({})).unwrap();
        assert_eq!(report.differences.len(), 1, "{}", report.render());
    }

    #[test]
    fn adds_a_header_at_data() {
        let mut session = Harness::<Template>::new(TestHost::new()).unwrap();
        session.rcpt_to("alice@example.test");
        let response = session.data(
            Some("a@example.org"),
            &["alice@example.test"],
            b"Subject: x\r\n\r\nhi\r\n",
        );
        assert_eq!(
            response.edits,
            vec![Edit::AddHeader(
                "X-Plugin-Template".into(),
                "recipients-seen=1 size=18".into()
            )]
        );
    }

    #[test]
    fn a_new_session_starts_counting_again() {
        let mut session = Harness::<Template>::new(TestHost::new()).unwrap();
        session.rcpt_to("alice@example.test");
        session.rcpt_to("bob@example.test");
        session.next_session().unwrap();
        session.rcpt_to("carol@example.test");
        let response = session.data(
            Some("a@example.org"),
            &["carol@example.test"],
            b"Subject: x\r\n\r\nhi\r\n",
        );
        assert_eq!(
            response.edits,
            vec![Edit::AddHeader(
                "X-Plugin-Template".into(),
                "recipients-seen=1 size=18".into()
            )]
        );
    }

    #[test]
    fn a_bad_config_is_refused() {
        let host = TestHost::new().with_config(json!({ "refuse": [] }));
        assert!(Harness::<Template>::new(host).is_err());
    }
}
