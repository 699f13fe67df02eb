//! Protocol abuse on the SMTP listener ends the session and leaves the gateway serving
//! everyone else: an HTTP request (a browser or proxy made to talk to port 25) is
//! disconnected at its first line wherever it comes, with nothing after it executed; a
//! client looping over NOOP/RSET/VRFY is closed after `max_junk_commands`; a client that
//! talks before the greeting is refused with 554 5.5.1. The RFC 4954 `AUTH=` MAIL
//! parameter is accepted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

#[test]
fn an_http_request_is_disconnected_at_its_first_line() {
    let gateway = Gateway::start();
    // A browser's form post, pipelined with SMTP commands in its body: none of them runs.
    let mut client = SmtpClient::connect(gateway.addr());
    client.send(
        b"POST / HTTP/1.1\r\nHost: relay.example.test:25\r\nContent-Length: 80\r\n\r\n\
          MAIL FROM:<spam@example.org>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\n",
    );
    client.read_reply().expect(221, "2.7.0");
    assert!(client.is_closed());

    // After EHLO, in the middle of a transaction, a `Host:` line alone is enough.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("Host: relay.example.test")
        .expect(221, "2.7.0");
    assert!(client.is_closed());

    for line in [
        "GET / HTTP/1.0",
        "CONNECT relay.example.test:25 HTTP/1.1",
        "User-Agent: curl/8",
    ] {
        let mut client = SmtpClient::connect(gateway.addr());
        client.command(line).expect(221, "2.7.0");
        assert!(client.is_closed(), "{line}");
    }
    assert!(
        gateway.log().contains("HTTP request on the SMTP port"),
        "{}",
        gateway.log()
    );
    assert!(gateway.spool_list().is_empty());

    // Everyone else is still served.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["alice@example.test"],
            &sample_message("ok", "x"),
        )
        .expect(250, "2.0.0");
}

#[test]
fn junk_commands_over_the_limit_close_the_session() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_junk_commands", 5));
    let mut client = SmtpClient::ehlo(gateway.addr());
    for command in ["NOOP", "RSET", "VRFY alice", "HELP", "NOOP"] {
        client.command(command).expect_code(command_code(command));
    }
    let reply = client.command("NOOP");
    reply.expect(421, "4.7.0");
    assert!(reply.text().contains("Too many junk commands"), "{reply:?}");
    assert!(client.is_closed());

    // An accepted message starts the count again: a long session that moves mail, with
    // RSET and NOOP between messages, is never cut off.
    let mut client = SmtpClient::ehlo(gateway.addr());
    for n in 0..3 {
        for _ in 0..4 {
            client.command("NOOP").expect(250, "2.0.0");
        }
        client.command("RSET").expect(250, "2.0.0");
        client
            .send_mail(
                "a@example.org",
                &["alice@example.test"],
                &sample_message(&format!("m{n}"), "x"),
            )
            .expect(250, "2.0.0");
    }
    client.command("QUIT").expect(221, "2.0.0");
}

fn command_code(command: &str) -> u16 {
    match command {
        "HELP" => 214,
        c if c.starts_with("VRFY") => 252,
        _ => 250,
    }
}

#[test]
fn a_client_that_talks_before_the_greeting_is_refused() {
    let gateway = Gateway::start_with(&GatewayConfig::default().smtp("greet_pause", "\"1s\""));

    let mut early = TcpStream::connect(gateway.addr()).expect("connect");
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    early
        .write_all(b"EHLO impatient.example.org\r\nMAIL FROM:<spam@example.org>\r\n")
        .expect("send");
    let mut answer = String::new();
    early.read_to_string(&mut answer).expect("read to the end");
    assert!(
        answer.starts_with("554 5.5.1 ") && answer.contains("before the greeting"),
        "{answer:?}"
    );
    assert!(!answer.contains("220"), "greeted anyway: {answer:?}");

    // A client that waits is greeted after the pause, and mail flows.
    let started = Instant::now();
    let mut polite = SmtpClient::connect(gateway.addr());
    assert_eq!(polite.greeting.code, 220, "{:?}", polite.greeting);
    assert!(started.elapsed() >= Duration::from_millis(900));
    polite.command("EHLO polite.example.org").expect_code(250);
    polite
        .send_mail(
            "a@example.org",
            &["alice@example.test"],
            &sample_message("ok", "x"),
        )
        .expect(250, "2.0.0");
    assert!(
        gateway
            .log()
            .contains("client sent data before the greeting"),
        "{}",
        gateway.log()
    );
}

#[test]
fn the_auth_mail_parameter_is_accepted() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org> AUTH=<>")
        .expect(250, "2.1.0");
    client.command("RSET").expect(250, "2.0.0");
    client
        .command("MAIL FROM:<a@example.org> AUTH=e+3Dmc2@example.org SIZE=100")
        .expect(250, "2.1.0");
    client.command("RSET").expect(250, "2.0.0");
    client
        .command("MAIL FROM:<a@example.org> AUTH=bad+zz")
        .expect(501, "5.5.4");
}
