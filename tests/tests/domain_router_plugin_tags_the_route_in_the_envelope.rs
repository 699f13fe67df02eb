//! The shipped `domain-router` plugin, loaded as real Wasm, tags each transaction at RCPT
//! TO with the route its recipients' domains map to, and the tag is kept in the spooled
//! envelope. (Its on-route answers are covered by its unit tests until the queue exists.)

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

#[test]
fn the_route_chosen_at_rcpt_to_is_kept_in_the_envelope_tags() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![PluginEntry::new("router", "domain_router.wasm").config(
            r#"routes = { "example.test" = "internal", ".example.test" = "internal", "lists.example.test" = "local", "void.example.test" = "discard" }"#,
        )],
        ..GatewayConfig::default()
    });
    let mut client = SmtpClient::ehlo(gateway.addr());

    let reply = client.send_mail(
        "a@example.org",
        &["User@Example.TEST"],
        &sample_message("one", "b"),
    );
    reply.expect(250, "2.0.0");
    let envelope = gateway.spool_envelope(&reply.queue_id().unwrap());
    assert_eq!(
        envelope["tags"],
        serde_json::json!({ "route": "internal" }),
        "{envelope}"
    );

    // The next transaction of the same session starts afresh; recipients going different
    // ways are all named, once each, in order.
    let reply = client.send_mail(
        "a@example.org",
        &[
            "list@lists.example.test",
            "x@sub.example.test",
            "y@example.test",
        ],
        &sample_message("two", "b"),
    );
    reply.expect(250, "2.0.0");
    let envelope = gateway.spool_envelope(&reply.queue_id().unwrap());
    assert_eq!(
        envelope["tags"],
        serde_json::json!({ "route": "local,internal" }),
        "{envelope}"
    );

    // A domain the table does not know (relayed, from 127.0.0.1) gets no tag at all.
    let reply = client.send_mail(
        "a@example.org",
        &["x@elsewhere.test"],
        &sample_message("three", "b"),
    );
    reply.expect(250, "2.0.0");
    let envelope = gateway.spool_envelope(&reply.queue_id().unwrap());
    assert_eq!(envelope["tags"], serde_json::Value::Null, "{envelope}");
    assert_eq!(gateway.spool_list().len(), 3);
}
