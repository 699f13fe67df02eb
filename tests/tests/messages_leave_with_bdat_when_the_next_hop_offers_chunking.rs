//! Outbound CHUNKING (RFC 3030): to a next hop that offers it the message goes in BDAT
//! chunks, never dot-stuffed, byte for byte as accepted (lines that start with dots, a
//! message larger than one chunk); to one that does not, DATA as before; and
//! `[delivery] chunking = false` (or `chunking = false` on a route) keeps DATA even where
//! BDAT is on offer.

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PATIENCE, SmtpClient, dot_stuff, without_trace_header};

fn message(body_octets: usize) -> Vec<u8> {
    let mut message =
        b"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: chunks\r\n\r\n".to_vec();
    let mut n = 0usize;
    while message.len() < body_octets {
        let dots = ".".repeat(n % 3);
        message.extend_from_slice(format!("{dots}line {n} {}\r\n", "y".repeat(n % 61)).as_bytes());
        n += 1;
    }
    message.extend_from_slice(b".\r\n..\r\nlast\r\n");
    message
}

fn send(gateway: &Gateway, message: &[u8]) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(&dot_stuff(message));
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
}

#[test]
fn a_chunking_next_hop_gets_bdat_byte_exact_in_one_or_several_chunks() {
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().chunking(),
    );
    let gateway = Gateway::start_with(&GatewayConfig::default().route(
        "internal",
        &["example.test"],
        sink.addr(),
    ));
    let small = message(2_000);
    send(&gateway, &small);
    let received = sink.wait_for(1, PATIENCE);
    assert_eq!(received[0].chunks.len(), 1, "{:?}", received[0].chunks);
    assert!(
        without_trace_header(&received[0].data) == small.as_slice(),
        "changed on its way: {:?}",
        received[0].text()
    );
    assert!(
        sink.transcript()
            .iter()
            .any(|l| l.starts_with("BDAT ") && l.ends_with(" LAST"))
    );
    assert!(!sink.transcript().iter().any(|l| l == "DATA"));

    let large = message(700 * 1024);
    send(&gateway, &large);
    let received = sink.wait_for(2, PATIENCE);
    let chunks = &received[1].chunks;
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert_eq!(chunks.iter().sum::<usize>(), received[1].data.len());
    assert!(
        without_trace_header(&received[1].data) == large.as_slice(),
        "the large message changed: {} octets sent, {} received",
        large.len(),
        received[1].data.len()
    );
}

#[test]
fn data_is_used_where_chunking_is_not_offered_or_is_turned_off() {
    let plain = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(&GatewayConfig::default().route(
        "internal",
        &["example.test"],
        plain.addr(),
    ));
    let small = message(2_000);
    send(&gateway, &small);
    let received = plain.wait_for(1, PATIENCE);
    assert!(received[0].chunks.is_empty());
    assert!(without_trace_header(&received[0].data) == small.as_slice());
    assert!(plain.transcript().iter().any(|l| l == "DATA"));

    let chunking = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().chunking(),
    );
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], chunking.addr())
            .top("delivery", "{ chunking = false }"),
    );
    send(&gateway, &small);
    let received = chunking.wait_for(1, PATIENCE);
    assert!(received[0].chunks.is_empty(), "{:?}", received[0].chunks);
    assert!(without_trace_header(&received[0].data) == small.as_slice());
    assert!(!chunking.transcript().iter().any(|l| l.starts_with("BDAT")));

    // The same per route.
    let chunking = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().chunking(),
    );
    let mut config = GatewayConfig::default().deliver();
    config.routes.push(format!(
        r#"{{ name = "internal", domains = ["example.test"], smarthost = "{}", chunking = false }}"#,
        chunking.addr()
    ));
    let gateway = Gateway::start_with(&config);
    send(&gateway, &small);
    let received = chunking.wait_for(1, PATIENCE);
    assert!(received[0].chunks.is_empty(), "{:?}", received[0].chunks);
    assert!(!chunking.transcript().iter().any(|l| l.starts_with("BDAT")));
}
