//! The shipped `recipient-policy` plugin, loaded as real Wasm, refuses denied recipients
//! and senders through a real SMTP session while other mail flows.

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn gateway() -> Gateway {
    Gateway::start_with(&GatewayConfig {
        plugins: vec![
            PluginEntry::new("recipients", "recipient_policy.wasm")
                .config(r#"deny = ["blocked@example.test", "*@spam.example.test"]"#)
                .config(r#"deny_senders = ["*@bad.test"]"#),
        ],
        ..GatewayConfig::default()
    })
}

#[test]
fn denied_recipients_get_550_5_1_1_and_others_are_accepted() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<Blocked@example.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<x@spam.example.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client
        .command("DATA")
        .code
        .eq(&354)
        .then_some(())
        .expect("354");
    client.send(b"Subject: ok\r\n\r\nfine\r\n.\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
}

#[test]
fn denied_senders_get_550_5_7_1() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<x@bad.test>")
        .expect(550, "5.7.1");
    let reply = client.send_mail(
        "ok@example.org",
        &["user@example.test"],
        &sample_message("s", "b"),
    );
    reply.expect(250, "2.0.0");
}
