//! SIZE (RFC 1870): a MAIL command declaring more than `max_message_size` is refused with
//! 552 5.3.4 before any data is sent, and the session can go on.

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

#[test]
fn mail_with_a_size_over_the_limit_is_refused_with_552_5_3_4() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_message_size", 10000));
    let mut client = SmtpClient::connect(gateway.addr());
    let ehlo = client.command("EHLO client.example.org");
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 10000"), "{ehlo:?}");

    client
        .command("MAIL FROM:<a@b.test> SIZE=10001")
        .expect(552, "5.3.4");
    // Far over the limit: the largest u64, and a valid 20-digit value (RFC 1870:
    // size-value = 1*20DIGIT) beyond it, which is too big rather than bad syntax.
    client
        .command("MAIL FROM:<a@b.test> SIZE=18446744073709551615")
        .expect(552, "5.3.4");
    client
        .command("MAIL FROM:<a@b.test> SIZE=99999999999999999999")
        .expect(552, "5.3.4");
    // Not a size-value at all: 21 digits, an empty value, junk.
    client
        .command("MAIL FROM:<a@b.test> SIZE=100000000000000000000")
        .expect(501, "5.5.4");
    client
        .command("MAIL FROM:<a@b.test> SIZE=")
        .expect(501, "5.5.4");
    client
        .command("MAIL FROM:<a@b.test> SIZE=12x")
        .expect(501, "5.5.4");
    // The refused MAIL opened no transaction: RCPT is out of sequence.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");

    // Exactly the limit is allowed, and the transaction then works.
    client
        .command("MAIL FROM:<a@b.test> SIZE=10000")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: small\r\n\r\nsmall\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1);
}
