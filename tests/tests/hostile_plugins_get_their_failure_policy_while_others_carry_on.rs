//! Plugins that loop forever, hoard memory, trap, answer nonsense or try to read a file
//! each get their failure policy applied, with the plugin and hook in the log, while a
//! concurrent session on a listener without that plugin goes through untouched, and the
//! gateway keeps serving.

use std::thread;

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn hostile(mode: &str, on_error: &str) -> Gateway {
    let mut config = GatewayConfig {
        plugins: vec![
            PluginEntry::new("hostile", "test_plugin.wasm")
                .setting(&format!("on_error = {on_error:?}"))
                .setting("cpu_limit_ms = 200")
                .setting("memory_limit_mib = 16")
                .config(&format!("mode = {mode:?}"))
                .config(r#"trigger = "victim@example.test""#),
        ],
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

/// Sends RCPT for the victim while, at the same time, a normal session on the clean
/// listener delivers a message; returns the victim's RCPT reply.
fn provoke(gateway: &Gateway) -> tidegate_e2e::Reply {
    let clean = gateway.addr_of("clean");
    let bystander = thread::spawn(move || {
        let mut client = SmtpClient::ehlo(clean);
        client
            .send_mail(
                "a@example.org",
                &["user@example.test"],
                &sample_message("bystander", "ok"),
            )
            .code
    });
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<victim@example.test>");
    // The same session goes on: another recipient passes the (fresh) plugin instance.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(
        bystander.join().unwrap(),
        250,
        "the bystander session was hurt"
    );
    reply
}

fn assert_logged(gateway: &Gateway, needle: &str) {
    gateway.wait_for_log("plugin failed");
    let log = gateway.log();
    let line = log
        .lines()
        .find(|l| l.contains("plugin failed"))
        .unwrap_or_default();
    assert!(
        line.contains("plugin=hostile") && line.contains("on-rcpt-to"),
        "{line}"
    );
    assert!(line.contains(needle), "expected {needle:?} in {line}");
}

#[test]
fn an_endless_loop_is_stopped_by_its_cpu_budget() {
    let gateway = hostile("loop", "tempfail");
    provoke(&gateway).expect(451, "4.3.0");
    assert_logged(&gateway, "CPU budget exhausted");
}

#[test]
fn a_memory_bomb_hits_its_limit() {
    let gateway = hostile("memory", "tempfail");
    provoke(&gateway).expect(451, "4.3.0");
    assert_logged(&gateway, "memory");
}

#[test]
fn a_trap_with_on_error_continue_lets_the_recipient_through() {
    let gateway = hostile("trap", "continue");
    provoke(&gateway).expect(250, "2.1.5");
    assert_logged(&gateway, "trap");
}

#[test]
fn an_invalid_verdict_is_a_plugin_error() {
    let gateway = hostile("invalid", "tempfail");
    provoke(&gateway).expect(451, "4.3.0");
    assert_logged(&gateway, "reply code 250 is not 5xx");
}

#[test]
fn a_plugin_cannot_read_files() {
    let gateway = hostile("file", "tempfail");
    // The plugin itself reports what happened: 451 4.7.1 means the read failed inside the
    // sandbox; 550 would mean it escaped.
    let reply = provoke(&gateway);
    reply.expect(451, "4.7.1");
    assert!(reply.text().contains("sandbox held"), "{reply:?}");
}
