//! The sandbox's second half: what a plugin can make the host do besides running its code.
//! A plugin that sleeps, floods the key/value store, invents counters, logs or prints in
//! a loop, returns thousands of tags, or smuggles CR/LF into an address or a header, gets
//! its failure policy applied (or its excess dropped) under the default limits, while a
//! stream of normal sessions on another listener all succeed, the gateway's memory stays
//! under a generous bound, and the failure shows in the metrics by kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, Reply, SmtpClient, sample_message};

/// A gateway with the hostile plugin (`mode`, triggered by the victim recipient only) on
/// the `mx` listener, and a `clean` listener without plugins.
fn hostile(mode: &str, settings: &[&str]) -> Gateway {
    hostile_built(
        &tidegate_e2e::plugin_dist().join("test_plugin.wasm"),
        mode,
        settings,
    )
}

/// The same with the test plugin as built against contract 0.1.0.
fn hostile_0_1_0(mode: &str, settings: &[&str]) -> Gateway {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/contract-0.1.0/test_plugin.wasm");
    hostile_built(&fixture, mode, settings)
}

fn hostile_built(component: &std::path::Path, mode: &str, settings: &[&str]) -> Gateway {
    let mut entry = PluginEntry::new("hostile", component.to_str().expect("UTF-8 path"))
        .config(&format!("mode = {mode:?}"))
        .config(r#"trigger = "victim@example.test""#);
    for setting in settings {
        entry = entry.setting(setting);
    }
    let mut config = GatewayConfig {
        plugins: vec![entry],
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        // Nobody may relay: a recipient outside example.test is refused from anyone.
        relay_networks: Vec::new(),
        ..GatewayConfig::default()
    };
    config
        .listeners
        .push(("clean".into(), "127.0.0.2:0".into()));
    let text = config.render().replace(
        "name = \"clean\"\naddress = \"127.0.0.2:0\"\n",
        "name = \"clean\"\naddress = \"127.0.0.2:0\"\nplugins = []\n",
    );
    Gateway::start_with_text(&text, 2)
}

/// Normal sessions on the clean listener, one after another until stopped; each must be
/// accepted. Returns how many went through.
struct Bystanders {
    stop: Arc<AtomicBool>,
    worker: thread::JoinHandle<usize>,
}

impl Bystanders {
    fn start(gateway: &Gateway) -> Bystanders {
        let clean = gateway.addr_of("clean");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let worker = thread::spawn(move || {
            let mut sent = 0;
            while !flag.load(Ordering::Relaxed) || sent == 0 {
                let mut client = SmtpClient::ehlo(clean);
                let reply = client.send_mail(
                    "a@example.org",
                    &["user@example.test"],
                    &sample_message("bystander", "ok"),
                );
                assert_eq!(reply.code, 250, "a bystander session was hurt: {reply:?}");
                client.command("QUIT");
                sent += 1;
            }
            sent
        });
        Bystanders { stop, worker }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().expect("the bystanders saw a failure")
    }
}

/// MAIL and RCPT for the victim in a new session; returns the RCPT reply and the session.
fn victim_rcpt(gateway: &Gateway) -> (Reply, SmtpClient) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<victim@example.test>");
    (reply, client)
}

/// The gateway's resident memory, in MiB.
fn rss_mib(gateway: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

fn metrics(gateway: &Gateway) -> String {
    gateway.admin_get("/metrics").1
}

fn failures(gateway: &Gateway, kind: &str) -> u64 {
    let prefix = "tidegate_plugin_failures_total{plugin=\"hostile\",hook=\"on-rcpt-to\",kind=\"";
    metrics(gateway)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{prefix}{kind}\"}} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_sleeping_plugin_gets_its_session_an_answer_within_its_time_limit() {
    let gateway = hostile("sleep", &["time_limit_ms = 500"]);
    let bystanders = Bystanders::start(&gateway);
    let started = Instant::now();
    let (reply, mut client) = victim_rcpt(&gateway);
    let took = started.elapsed();
    reply.expect(451, "4.3.0");
    // The plugin sleeps for ten minutes; the answer comes at its deadline.
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    // The session goes on with a fresh instance.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert!(bystanders.finish() > 0);
    gateway.wait_for_log("no answer within time_limit_ms (500 ms)");
    assert_eq!(failures(&gateway, "time"), 1);
}

#[test]
fn a_chain_of_slow_plugins_is_held_to_the_stage_deadline() {
    let slow = |name: &str| {
        PluginEntry::new(name, "test_plugin.wasm")
            .setting("time_limit_ms = 20000")
            .setting(r#"on_error = "continue""#)
            .config(r#"mode = "sleep""#)
            .config(r#"trigger = "victim@example.test""#)
    };
    let config = GatewayConfig {
        plugins: vec![slow("first"), slow("second"), slow("third")],
        ..GatewayConfig::default()
    };
    let text = config
        .render()
        .replace("[plugins]\n", "[plugins]\nstage_time_limit_ms = 1500\n");
    let gateway = Gateway::start_with_text(&text, 1);
    let started = Instant::now();
    let (reply, _client) = victim_rcpt(&gateway);
    let took = started.elapsed();
    // Each plugin's failure policy lets the recipient through, but no later than the
    // stage's deadline: not three times twenty seconds.
    reply.expect(250, "2.1.5");
    assert!(took < Duration::from_secs(12), "answered after {took:?}");
    gateway.wait_for_log("the stage's deadline ([plugins] stage_time_limit_ms) passed");
}

/// Four floods of 16 KiB values under fresh keys; the defaults (64 MiB, 100,000 keys)
/// hold. The CPU budget is raised so that the quota, not the fuel, is what stops each one.
fn flood_the_store(gateway: &Gateway) {
    let bystanders = Bystanders::start(gateway);
    for _ in 0..4 {
        let (reply, _client) = victim_rcpt(gateway);
        reply.expect(451, "4.3.0");
    }
    assert!(bystanders.finish() > 0);
    let page = metrics(gateway);
    let bytes: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_plugin_kv_bytes{plugin=\"hostile\"} "))
        .and_then(|v| v.parse().ok())
        .expect("kv bytes gauge");
    assert!(bytes <= 64 * 1024 * 1024, "{bytes} bytes stored");
    assert!(
        bytes > 60 * 1024 * 1024,
        "the flood never reached the quota: {bytes}"
    );
    // Without the quota four floods would have stored gigabytes.
    let rss = rss_mib(gateway);
    assert!(rss < 400, "gateway RSS {rss} MiB");
}

const FLOOD_BUDGET: &[&str] = &["cpu_limit_ms = 5000", "time_limit_ms = 20000"];

#[test]
fn a_key_value_flood_stops_at_the_namespace_quota_and_the_plugin_hears_why() {
    let gateway = hostile("kv-flood", FLOOD_BUDGET);
    // The current contract tells the plugin; this one answers with what it was told.
    let (reply, _client) = victim_rcpt(&gateway);
    reply.expect(451, "4.3.0");
    assert!(
        reply.text().contains("kv refused: kv quota reached"),
        "{reply:?}"
    );
    flood_the_store(&gateway);
    assert_eq!(failures(&gateway, "quota"), 0);
}

#[test]
fn a_key_value_flood_from_a_0_1_0_plugin_traps_at_the_quota() {
    // Contract 0.1.0's kv-set returns nothing: the write over the quota traps instead.
    let gateway = hostile_0_1_0("kv-flood", FLOOD_BUDGET);
    flood_the_store(&gateway);
    assert_eq!(failures(&gateway, "quota"), 4);
    gateway.wait_for_log("kv quota reached");
}

#[test]
fn invented_counter_names_stop_at_max_counters() {
    let gateway = hostile("counter-flood", &[]);
    let bystanders = Bystanders::start(&gateway);
    for _ in 0..5 {
        let (reply, _client) = victim_rcpt(&gateway);
        reply.expect(451, "4.3.0");
    }
    assert!(bystanders.finish() > 0);
    assert_eq!(failures(&gateway, "quota"), 5);
    let page = metrics(&gateway);
    let counters = page
        .lines()
        .filter(|l| l.starts_with("tidegate_plugin_counter_total{plugin=\"hostile\""))
        .count();
    assert_eq!(counters, 64, "the default max_counters");
    assert!(page.len() < 200_000, "metrics page is {} bytes", page.len());
}

#[test]
fn a_plugin_logging_in_a_loop_is_rate_limited_and_says_how_much_it_dropped() {
    let gateway = hostile(
        "log-flood",
        &["cpu_limit_ms = 5000", "time_limit_ms = 20000"],
    );
    let bystanders = Bystanders::start(&gateway);
    for _ in 0..3 {
        // The lines are dropped, not the mail: the plugin's answer still counts.
        let (reply, _client) = victim_rcpt(&gateway);
        reply.expect(250, "2.1.5");
    }
    assert!(bystanders.finish() > 0);
    gateway.wait_for_log("plugin is over log_lines_per_second, dropping its log lines");
    // 60,000 lines of 12 KB would be 720 MB of log; the budget lets a few hundred
    // through, each cut to a kilobyte and its fields.
    let log = gateway.log();
    assert!(log.len() < 2_000_000, "log is {} bytes", log.len());
    let dropped: u64 = metrics(&gateway)
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_plugin_log_dropped_total{plugin=\"hostile\"} "))
        .and_then(|v| v.parse().ok())
        .expect("dropped log lines counter");
    assert!(dropped > 50_000, "{dropped} lines dropped");
    // A line written later says how many went before it.
    thread::sleep(Duration::from_millis(1100));
    let (reply, _client) = victim_rcpt(&gateway);
    reply.expect(250, "2.1.5");
    gateway.wait_for_log("plugin log lines dropped over log_lines_per_second");
}

#[test]
fn what_a_plugin_prints_reaches_the_log_under_the_same_budget() {
    let gateway = hostile(
        "print-flood",
        &["cpu_limit_ms = 5000", "time_limit_ms = 20000"],
    );
    let (reply, _client) = victim_rcpt(&gateway);
    reply.expect(250, "2.1.5");
    gateway.wait_for_log("stdout: printed line 0");
    let log = gateway.log();
    let printed = log.matches("stdout: printed line").count();
    assert!(printed < 1_000, "{printed} printed lines logged");
}

#[test]
fn thousands_of_tags_are_an_invalid_response() {
    let gateway = hostile("tag-flood", &["cpu_limit_ms = 5000"]);
    let bystanders = Bystanders::start(&gateway);
    let (reply, _client) = victim_rcpt(&gateway);
    reply.expect(451, "4.3.0");
    assert!(bystanders.finish() > 0);
    gateway.wait_for_log("20000 edits in one response, at most 64");
    assert_eq!(failures(&gateway, "invalid"), 1);
    let rss = rss_mib(&gateway);
    assert!(rss < 400, "gateway RSS {rss} MiB");
}

#[test]
fn an_address_with_a_smuggled_command_never_reaches_the_envelope() {
    let gateway = hostile("smuggle-recipient", &[]);
    let (reply, _client) = victim_rcpt(&gateway);
    reply.expect(451, "4.3.0");
    gateway.wait_for_log("is not a valid address");
    assert_eq!(failures(&gateway, "invalid"), 1);
}

#[test]
fn a_recipient_rewritten_to_a_foreign_domain_is_held_to_relay_control() {
    let gateway = hostile("relay-rewrite", &[]);
    let (reply, mut client) = victim_rcpt(&gateway);
    reply.expect(554, "5.7.1");
    assert!(reply.text().contains("Relay access denied"), "{reply:?}");
    gateway.wait_for_log("recipient chosen by a plugin refused by relay control");
    // Nothing of it reaches the envelope: the transaction has no recipient.
    client.command("DATA").expect(554, "5.5.1");
}

#[test]
fn a_header_value_with_a_line_break_is_refused() {
    let gateway = hostile("smuggle-header", &[]);
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "a@example.org",
        &["user@example.test"],
        &sample_message("smuggle", "body"),
    );
    reply.expect(451, "4.3.0");
    gateway.wait_for_log("has CR, LF or other control characters");
    assert!(gateway.spool_list().is_empty());
}

#[test]
fn a_full_instance_pool_answers_a_temporary_failure_even_under_on_error_continue() {
    use tidegate_e2e::sink::{Behaviour, SinkServer};
    // One instance for one session through a chain of one plugin; the delivery side,
    // which keeps its own warm instance between attempts, takes it after the first
    // message, so the next session finds the pool full.
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let config = GatewayConfig {
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        limits: vec![("max_connections".into(), "1".into())],
        plugins: vec![
            PluginEntry::new("hostile", "test_plugin.wasm")
                .setting(r#"on_error = "continue""#)
                .config(r#"mode = "pass""#),
        ],
        ..GatewayConfig::default()
    }
    .route("internal", &["example.test"], sink.addr());
    let text = config
        .render()
        .replace("[plugins]\n", "[plugins]\nmax_instances = 1\n");
    let gateway = Gateway::start_with_text(&text, 1);
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["user@example.test"],
            &sample_message("first", "x"),
        )
        .expect(250, "2.0.0");
    client.command("QUIT");
    drop(client);
    sink.wait_for(1, Duration::from_secs(30));
    // on-delivery has run: the delivery side holds its instance.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics(&gateway).contains("name=\"delivery_delivered\"} 1") {
        assert!(Instant::now() < deadline, "on-delivery never ran");
        thread::sleep(Duration::from_millis(50));
    }
    // Policy cannot run: the recipient is deferred, not waved through.
    let (reply, _client) = victim_rcpt(&gateway);
    reply.expect(451, "4.3.0");
    assert_eq!(failures(&gateway, "pool_full"), 1);
    gateway.wait_for_log("no plugin instance free");
}
