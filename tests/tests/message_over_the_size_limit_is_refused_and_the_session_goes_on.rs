//! A message that grows past `max_message_size` while it is being sent (whatever SIZE
//! said, or without SIZE) is read to its end, refused with 552 5.3.4, leaves nothing in
//! the spool, and the same session can then send a message that fits.

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, without_trace_header};

const LIMIT: usize = 10_000;

fn gateway() -> Gateway {
    Gateway::start_with(&GatewayConfig::default().limit("max_message_size", LIMIT))
}

/// About `size` octets of message in 78-character lines, with CRLF line endings.
fn big_message(size: usize) -> Vec<u8> {
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    while message.len() < size {
        message.extend_from_slice(&[b'x'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    message
}

fn assert_nothing_spooled(gateway: &Gateway) {
    assert_eq!(gateway.spool_list(), Vec::new());
    assert_eq!(gateway.spool_partials(), Vec::<String>::new());
}

fn send_good_message(client: &mut SmtpClient, gateway: &Gateway) {
    let good = "Subject: fits\r\n\r\nThis one fits.\r\n";
    let reply = client.send_mail("a@b.test", &["user@example.test"], good);
    reply.expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), good.as_bytes());
}

#[test]
fn data_over_the_limit_is_refused_after_the_dot() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // SIZE under the limit, then 50 KB anyway.
    client
        .command("MAIL FROM:<a@b.test> SIZE=5000")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(&big_message(50_000));
    client.send(b".\r\n");
    client.read_reply().expect(552, "5.3.4");
    assert_nothing_spooled(&gateway);

    // The refusal ended the transaction, and the session is still usable.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");
    send_good_message(&mut client, &gateway);
}

#[test]
fn data_of_exactly_the_limit_is_accepted_and_one_octet_more_is_not() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let mut exact = big_message(LIMIT - 100);
    let pad = LIMIT - exact.len() - 2;
    exact.extend_from_slice(&vec![b'y'; pad]);
    exact.extend_from_slice(b"\r\n");
    assert_eq!(exact.len(), LIMIT);
    let exact = String::from_utf8(exact).unwrap();
    let reply = client.send_mail("a@b.test", &["user@example.test"], &exact);
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), exact.as_bytes());

    let over = format!("z{exact}");
    client
        .send_mail("a@b.test", &["user@example.test"], &over)
        .expect(552, "5.3.4");
    assert_eq!(gateway.spool_list().len(), 1);
}

#[test]
fn bdat_over_the_limit_in_one_chunk_is_refused() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let message = big_message(50_000);
    client.command("MAIL FROM:<a@b.test>").expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.send(format!("BDAT {} LAST\r\n", message.len()).as_bytes());
    client.send(&message);
    client.read_reply().expect(552, "5.3.4");
    assert_nothing_spooled(&gateway);
    // The whole chunk was consumed: the next bytes are read as a command again.
    client.command("NOOP").expect(250, "2.0.0");
    send_good_message(&mut client, &gateway);
}

#[test]
fn bdat_growing_over_the_limit_across_chunks_is_refused_at_once() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client.command("MAIL FROM:<a@b.test>").expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    let chunk = big_message(6_000);
    // First chunk fits.
    client.send(format!("BDAT {}\r\n", chunk.len()).as_bytes());
    client.send(&chunk);
    client.read_reply().expect(250, "2.0.0");
    // The second crosses the limit: refused at once, even though it is not the last
    // (RFC 3030 §2), and a chunk pipelined after it finds no transaction.
    let mut wire = format!("BDAT {}\r\n", chunk.len()).into_bytes();
    wire.extend_from_slice(&chunk);
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    wire.extend_from_slice(&chunk);
    wire.extend_from_slice(b"NOOP\r\n");
    client.send(&wire);
    client.read_reply().expect(552, "5.3.4");
    client.read_reply().expect(503, "5.5.1");
    client.read_reply().expect(250, "2.0.0");
    assert_nothing_spooled(&gateway);
    send_good_message(&mut client, &gateway);
}
