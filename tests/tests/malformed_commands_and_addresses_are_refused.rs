//! Syntax: unknown commands, bad parameters and bad addresses get the documented reply
//! codes and enhanced codes, open nothing, and leave the session usable (the error
//! limit itself is the subject of `too_many_errors_end_the_session.rs`).

use tidegate_e2e::{Gateway, SmtpClient};

#[test]
fn unknown_commands_are_refused_with_500_5_5_1() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    for line in ["FOO", "XYZZY bar", "MAILFROM:<a@b.test>", "DAT"] {
        let reply = client.command(line);
        assert_eq!(
            (reply.code, reply.enhanced()),
            (500, Some("5.5.1")),
            "{line}: {reply:?}"
        );
    }
    // A command line with control characters or invalid UTF-8.
    client.send(b"NOOP \x01\r\n");
    client.read_reply().expect(500, "5.5.2");
    client.send(b"NOOP \xff\xfe\r\n");
    client.read_reply().expect(500, "5.5.2");
    client.command("NOOP").expect(250, "2.0.0");
}

#[test]
fn commands_with_malformed_arguments_are_refused_with_501_5_5_4() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    client.command("EHLO").expect(501, "5.5.4");
    client.command("EHLO bad..name").expect(501, "5.5.4");
    assert_eq!(client.command("EHLO client.example.org").code, 250);
    for line in [
        "MAIL <a@b.test>",
        "MAIL TO:<a@b.test>",
        "DATA now",
        "QUIT please",
        "RSET everything",
        "VRFY",
    ] {
        let reply = client.command(line);
        assert_eq!(
            (reply.code, reply.enhanced()),
            (501, Some("5.5.4")),
            "{line}: {reply:?}"
        );
    }
    // None of them opened or ended anything: QUIT with arguments did not close.
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
}

#[test]
fn unknown_and_malformed_mail_parameters_are_refused() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@b.test> FOO=bar")
        .expect(555, "5.5.4");
    client
        .command("MAIL FROM:<a@b.test> BODY=9BIT")
        .expect(555, "5.5.4");
    client
        .command("MAIL FROM:<a@b.test> SIZE=10 SIZE=10")
        .expect(501, "5.5.4");
    // A refused MAIL opens no transaction.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");
    // Known parameters are fine, in any case.
    client
        .command("MAIL FROM:<a@b.test> size=100 body=8bitmime")
        .expect(250, "2.1.0");
    // RCPT takes only the DSN parameters (RFC 3461), and only well-formed.
    client
        .command("RCPT TO:<user@example.test> XFOO=1")
        .expect(555, "5.5.4");
    client
        .command("RCPT TO:<user@example.test> NOTIFY=NEVER,SUCCESS")
        .expect(501, "5.5.4");
    client
        .command("RCPT TO:<user@example.test> ORCPT=user@example.test")
        .expect(501, "5.5.4");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
}

#[test]
fn mail_parameters_after_helo_are_refused() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.command("HELO client.example.org").code, 250);
    let reply = client.command("MAIL FROM:<a@b.test> SIZE=100");
    assert!(
        matches!(reply.code, 501 | 555) && reply.enhanced() == Some("5.5.4"),
        "{reply:?}"
    );
    client.command("MAIL FROM:<a@b.test>").expect(250, "2.1.0");
}

#[test]
fn bad_address_syntax_is_refused_with_the_right_enhanced_code() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let bad = [
        "a@b.test",        // no angle brackets
        "<a@b.test",       // unclosed
        "<a b@c.test>",    // space in the local part
        "<a@b..test>",     // empty label
        "<a@b.test.>",     // trailing dot
        "<a.@b.test>",     // dot at the end of a dot-string
        "<a@-b.test>",     // label starting with a hyphen
        "<@b.test>",       // no local part
        "<a@>",            // no domain
        "<a@b.test>junk",  // junk after the path
        "<a@[300.0.0.1]>", // bad address literal
    ];
    for path in bad {
        let reply = client.command(&format!("MAIL FROM:{path}"));
        assert_eq!(
            (reply.code, reply.enhanced()),
            (501, Some("5.1.7")),
            "MAIL {path}: {reply:?}"
        );
    }
    // Reconnect: that was many errors for one session.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client.command("MAIL FROM:<a@b.test>").expect(250, "2.1.0");
    for path in bad.iter().chain(&["<>"]) {
        let reply = client.command(&format!("RCPT TO:{path}"));
        assert_eq!(
            (reply.code, reply.enhanced()),
            (501, Some("5.1.3")),
            "RCPT {path}: {reply:?}"
        );
    }
    // Over-long parts (RFC 5321 §4.5.3.1): 65-octet local part.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command(&format!("MAIL FROM:<{}@b.test>", "l".repeat(65)))
        .expect(501, "5.1.7");
    client.command("MAIL FROM:<a@b.test>").expect(250, "2.1.0");
    client
        .command(&format!("RCPT TO:<{}@example.test>", "l".repeat(65)))
        .expect(501, "5.1.3");
    client
        .command(&format!("RCPT TO:<{}@example.test>", "l".repeat(64)))
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(
        spooled[0].recipients,
        vec![format!("{}@example.test", "l".repeat(64))]
    );
}

#[test]
fn a_bdat_without_a_valid_size_closes_the_session() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client.command("MAIL FROM:<a@b.test>").expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    // What follows cannot be told apart from chunk data, so it must not run.
    client.send(b"BDAT many\r\nMAIL FROM:<x@y.test>\r\n");
    client.read_reply().expect(501, "5.5.4");
    client.read_reply().expect(421, "4.7.0");
    assert!(client.is_closed());
    assert_eq!(gateway.spool_list(), Vec::new());
}
