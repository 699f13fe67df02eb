//! The error limit: a client that draws `max_errors` refusals is told 421 4.7.0 and
//! disconnected; good commands in between do not reset the count.

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

#[test]
fn the_third_error_closes_the_session() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_errors", 3));
    let mut client = SmtpClient::ehlo(gateway.addr());

    assert_eq!(client.command("FROB").code, 500);
    client.command("NOOP").expect(250, "2.0.0");
    // Out of sequence: counted too.
    assert_eq!(client.command("RCPT TO:<user@example.test>").code, 503);
    client.command("NOOP").expect(250, "2.0.0");

    let third = client.command("MAIL FROM:<no-closing-bracket@example.org");
    assert_eq!(third.code / 100, 5, "{third:?}");
    let last = client.read_reply();
    last.expect(421, "4.7.0");
    assert!(last.text().contains("Too many errors"), "{last:?}");
    assert!(client.is_closed(), "still open after the 421");
}

#[test]
fn fewer_errors_than_the_limit_are_tolerated() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_errors", 3));
    let mut client = SmtpClient::ehlo(gateway.addr());
    assert_eq!(client.command("FROB").code, 500);
    assert_eq!(client.command("FROB").code, 500);
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &tidegate_e2e::sample_message("errors", "Two errors are fine."),
    );
    reply.expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1);
}
