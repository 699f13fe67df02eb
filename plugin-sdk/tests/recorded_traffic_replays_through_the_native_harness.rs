//! A recording (the format `record` listeners write) replayed through the native harness:
//! a plugin that decides as the recorded one did gives no difference, one whose policy
//! changed shows the calls that came out otherwise, and the host answers come from the
//! recording (the test host has no DNS or KV of its own here).

use tidegate_plugin_sdk::prelude::*;
use tidegate_plugin_sdk::record::Outcome;
use tidegate_plugin_sdk::testing::Recording;

/// Refuses clients listed in `bl.example.test`; defers a client's third recipient.
struct Gate {
    limit: i64,
}

impl Plugin for Gate {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let config: serde_json::Value =
            serde_json::from_str(&host.config_json()).map_err(|e| e.to_string())?;
        Ok(Gate {
            limit: config["limit"].as_i64().unwrap_or(2),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            connect: true,
            rcpt_to: true,
            ..Hooks::default()
        }
    }

    fn on_connect(&mut self, host: &dyn Host, info: &ConnectInfo) -> Response {
        let reversed: Vec<&str> = info.client_ip.rsplit('.').collect();
        let name = format!("{}.bl.example.test", reversed.join("."));
        match host.resolve(&name, RecordType::A) {
            Ok(_) => Verdict::reject(554, "5.7.1", "listed").into(),
            Err(_) => Response::next(),
        }
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, _info: &RcptToInfo) -> Response {
        let ip = host.session().client_ip;
        let count = host.kv_incr(&format!("rcpt:{ip}"), 1, Some(60_000));
        let now = host.now_ms().to_string();
        match count {
            Ok(n) if n > self.limit => {
                Response::from(Verdict::tempfail(451, "4.7.1", "slow down")).tag("seen", &now)
            }
            _ => Response::next().tag("seen", &now),
        }
    }
}

fn fixture() -> Recording {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/recorded.jsonl");
    Recording::load(path).expect("the fixture loads")
}

#[test]
fn the_same_policy_replays_without_a_difference() {
    let recording = fixture();
    assert_eq!(recording.sessions.len(), 2);
    let report = recording
        .replay::<Gate>("gate", serde_json::json!({ "limit": 2 }))
        .expect("replay");
    assert!(report.is_identical(), "{}", report.render());
    assert_eq!((report.sessions, report.calls, report.same), (2, 3, 3));
    assert_eq!(report.misses, 0, "{}", report.render());
}

#[test]
fn a_changed_policy_shows_the_calls_that_came_out_otherwise() {
    let report = fixture()
        .replay::<Gate>("gate", serde_json::json!({ "limit": 5 }))
        .expect("replay");
    assert!(!report.is_identical());
    assert_eq!(report.differences.len(), 1, "{}", report.render());
    let difference = &report.differences[0];
    assert_eq!(difference.stage, "on-rcpt-to");
    assert!(matches!(
        &difference.recorded,
        Outcome::Answer(Response {
            verdict: Verdict::Tempfail(_),
            ..
        })
    ));
    assert_eq!(
        difference.replayed,
        Outcome::Answer(Response::next().tag("seen", "1764600001500"))
    );
    let text = report.render();
    assert!(
        text.contains("recorded: tempfail 451 4.7.1 slow down"),
        "{text}"
    );
    assert!(text.contains("replayed: continue"), "{text}");
}

#[test]
fn a_record_of_an_unknown_version_is_refused_with_its_place() {
    let dir = std::env::temp_dir().join(format!("sdk-recording-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("records-1.jsonl");
    std::fs::write(&file, "{\"version\":2,\"listener\":\"mx\"}\n").expect("write");
    let error = Recording::load(&dir).expect_err("version 2 is unknown");
    assert!(error.to_string().contains("records-1.jsonl:1"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts the session's recipients in a tag: state that lives across a session's calls.
struct Counter {
    seen: u32,
}

impl Plugin for Counter {
    fn init(_host: &dyn Host) -> Result<Self, String> {
        Ok(Counter { seen: 0 })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            rcpt_to: true,
            ..Hooks::default()
        }
    }

    fn on_rcpt_to(&mut self, _host: &dyn Host, _info: &RcptToInfo) -> Response {
        self.seen += 1;
        Response::next().tag("seen", &self.seen.to_string())
    }
}

fn rcpt_line(id: u64, part: u32, seen: u32) -> String {
    format!(
        r#"{{"version":1,"id":{id},"part":{part},"listener":"mx","started_ms":0,"calls":[{{"plugin":"counter","input":{{"rcpt-to":{{"recipient":"bob@example.test","params":[]}}}},"session":{{"client_ip":"192.0.2.1","client_port":1,"listener":"mx","reverse_dns":null,"helo":null,"tls":null,"auth_identity":null}},"outcome":{{"answer":{{"verdict":"continue","edits":[{{"set-tag":["seen","{seen}"]}}]}}}}}}]}}"#
    )
}

#[test]
fn the_parts_of_a_long_session_replay_in_one_plugin_value() {
    // Session 7 in two parts (its second recipient counted 2), then session 8 anew.
    let text = [rcpt_line(7, 0, 1), rcpt_line(7, 1, 2), rcpt_line(8, 0, 1)].join("\n");
    let recording = Recording::from_lines("parts", &text).expect("parses");
    let report = recording
        .replay::<Counter>("counter", serde_json::json!({}))
        .expect("replay");
    assert!(report.is_identical(), "{}", report.render());
    assert_eq!((report.sessions, report.calls), (2, 3));
}
