//! Header edits from on-data are kept in the envelope and applied when the message is read
//! out: the added header is there, the removed one is gone, the body is untouched.

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient};

#[test]
fn added_and_removed_headers_show_in_the_message_as_delivered() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![
            PluginEntry::new("hdr", "test_plugin.wasm")
                .config(r#"mode = "header""#)
                .config(r#"label = "Scan""#),
        ],
        ..GatewayConfig::default()
    });
    let mut client = SmtpClient::ehlo(gateway.addr());
    let message = "Subject: Quarterly report\r\nX-Remove-Me: secret\r\nFrom: a@example.org\r\n\r\nX-Remove-Me: stays in the body\r\n";
    let reply = client.send_mail("a@example.org", &["user@example.test"], message);
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().unwrap();
    let shown = String::from_utf8(gateway.spool_show(&id)).unwrap();
    assert!(
        shown.starts_with("X-Test-Scan: subject=Quarterly report calls=1 tag=\r\nReceived: from "),
        "{shown}"
    );
    assert!(!shown.contains("X-Remove-Me: secret"), "{shown}");
    assert!(
        shown.ends_with("\r\n\r\nX-Remove-Me: stays in the body\r\n"),
        "{shown}"
    );
    // The raw spool file itself was never rewritten.
    let raw = String::from_utf8(gateway.spool_message(&id)).unwrap();
    assert!(raw.contains("X-Remove-Me: secret"));
}
