//! `max_recipients`: the recipient after the limit gets 452 4.5.3 (RFC 5321 §4.5.3.1.10:
//! a temporary failure, so the client retries it later), and the message still goes to
//! the recipients accepted before it.

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

#[test]
fn the_fourth_recipient_of_three_allowed_gets_452_4_5_3() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_recipients", 3));
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    for n in 1..=3 {
        client
            .command(&format!("RCPT TO:<r{n}@example.test>"))
            .expect(250, "2.1.5");
    }
    client
        .command("RCPT TO:<r4@example.test>")
        .expect(452, "4.5.3");
    client
        .command("RCPT TO:<r5@example.test>")
        .expect(452, "4.5.3");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].id, reply.queue_id().unwrap());
    assert_eq!(
        spooled[0].recipients,
        vec![
            "r1@example.test".to_owned(),
            "r2@example.test".to_owned(),
            "r3@example.test".to_owned()
        ]
    );

    // The limit is per transaction: the next one may have three again.
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    for n in 4..=6 {
        client
            .command(&format!("RCPT TO:<r{n}@example.test>"))
            .expect(250, "2.1.5");
    }
    client
        .command("RCPT TO:<r7@example.test>")
        .expect(452, "4.5.3");
}

#[test]
fn the_limit_holds_for_a_pipelined_batch_too() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_recipients", 3));
    let mut client = SmtpClient::ehlo(gateway.addr());
    let mut batch = String::from("MAIL FROM:<sender@example.org>\r\n");
    for n in 1..=5 {
        batch.push_str(&format!("RCPT TO:<r{n}@example.test>\r\n"));
    }
    batch.push_str("DATA\r\n");
    client.send(batch.as_bytes());
    client.read_reply().expect(250, "2.1.0");
    for _ in 1..=3 {
        client.read_reply().expect(250, "2.1.5");
    }
    client.read_reply().expect(452, "4.5.3");
    client.read_reply().expect(452, "4.5.3");
    assert_eq!(client.read_reply().code, 354);
    client.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].recipients.len(), 3, "{spooled:?}");
}
