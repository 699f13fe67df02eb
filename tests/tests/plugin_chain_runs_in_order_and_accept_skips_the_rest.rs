//! Plugins run in the order listed; `accept` ends the chain for that stage; tags set by
//! one plugin are seen by the next; a listener can have its own chain.

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn plugin(name: &str, mode: &str) -> PluginEntry {
    PluginEntry::new(name, "test_plugin.wasm")
        .config(&format!("mode = {mode:?}"))
        .config(&format!("label = {name:?}"))
}

#[test]
fn the_first_refusal_wins_in_chain_order() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![plugin("first", "reject"), plugin("second", "reject")],
        ..GatewayConfig::default()
    });
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<user@example.test>");
    reply.expect(550, "5.7.1");
    assert_eq!(reply.text(), "5.7.1 Rejected by first");
}

#[test]
fn accept_skips_the_rest_of_the_chain_and_tags_flow_to_later_stages() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![
            plugin("opener", "accept"),
            plugin("never", "reject"),
            plugin("H", "header"),
        ],
        ..GatewayConfig::default()
    });
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "a@example.org",
        &["user@example.test"],
        &sample_message("chain", "body"),
    );
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().unwrap();
    let shown = String::from_utf8(gateway.spool_show(&id)).unwrap();
    // `accept` at RCPT skipped `never` (no rejection) and `H`'s on-rcpt-to (calls=0), and
    // the tag set by `opener` reached `H` at DATA.
    assert!(
        shown.starts_with("X-Test-H: subject=chain calls=0 tag=opener\r\n"),
        "{shown}"
    );
}

#[test]
fn a_listener_can_run_its_own_chain() {
    let mut config = GatewayConfig {
        plugins: vec![plugin("strict", "reject")],
        ..GatewayConfig::default()
    };
    config.listeners.push(("open".into(), "127.0.0.2:0".into()));
    let text = config.render().replace(
        "name = \"open\"\naddress = \"127.0.0.2:0\"\n",
        "name = \"open\"\naddress = \"127.0.0.2:0\"\nplugins = []\n",
    );
    let gateway = Gateway::start_with_text(&text, 2);
    let mut strict = SmtpClient::ehlo(gateway.addr_of("mx"));
    strict
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    strict
        .command("RCPT TO:<user@example.test>")
        .expect(550, "5.7.1");
    let mut open = SmtpClient::ehlo(gateway.addr_of("open"));
    open.command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    open.command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
}
