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
