//! The DSN extension (RFC 3461) end to end: the gateway offers DSN, checks RET, ENVID,
//! NOTIFY and ORCPT (501 5.5.4 when malformed), passes them byte for byte to a next hop
//! that offers DSN, and otherwise honours them in its own notices: a "relayed" notice for
//! NOTIFY=SUCCESS to a next hop without DSN, "delivered" for a local maildir, no bounce
//! with NOTIFY=NEVER, headers only with RET=HDRS and the whole message with RET=FULL, the
//! ENVID in Original-Envelope-Id and the ORCPT in Original-Recipient.

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use tidegate_e2e::sink::{Behaviour, ReceivedMessage, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PATIENCE, SmtpClient};

const MESSAGE: &str = "From: sender@example.org\r\nTo: alice@example.test\r\nSubject: dsn test\r\n\r\nSECRET BODY LINE\r\n.leading dot\r\n";

/// One transaction with the given MAIL parameters and (recipient, RCPT parameters).
fn send(gateway: &Gateway, mail_params: &str, recipients: &[(&str, &str)]) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command(&format!("MAIL FROM:<sender@example.org>{mail_params}"))
        .expect(250, "2.1.0");
    for (address, params) in recipients {
        client
            .command(&format!("RCPT TO:<{address}>{params}"))
            .expect(250, "2.1.5");
    }
    assert_eq!(client.command("DATA").code, 354);
    client.send(tidegate_e2e::dot_stuff(MESSAGE.as_bytes()).as_slice());
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
}

/// What a notice is made of: the content types of the report's parts, the
/// delivery-status part, the returned part.
struct Notice {
    raw: String,
    types: Vec<String>,
    status: String,
    returned: String,
}

fn notice(message: &ReceivedMessage) -> Notice {
    assert_eq!(message.mail_from, "", "a notice comes from <>");
    let raw = message.text();
    let parsed = MessageParser::default()
        .parse(&message.data)
        .expect("the notice parses as MIME");
    let content_type = parsed.content_type().expect("Content-Type");
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("multipart", Some("report")),
        "{raw}"
    );
    assert_eq!(
        content_type.attribute("report-type"),
        Some("delivery-status"),
        "{raw}"
    );
    let PartType::Multipart(children) = &parsed.parts[0].body else {
        panic!("not multipart: {raw}")
    };
    let mut types = Vec::new();
    let mut status = String::new();
    let mut returned = String::new();
    for &i in children {
        let part = &parsed.parts[i as usize];
        let ct = part.content_type().expect("a part's Content-Type");
        let kind = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default());
        let body = String::from_utf8_lossy(
            &message.data[part.offset_body as usize..part.offset_end as usize],
        )
        .into_owned();
        if kind == "message/delivery-status" {
            status = body;
        } else if kind != "text/plain" {
            returned = body;
        }
        types.push(kind);
    }
    Notice {
        raw,
        types,
        status,
        returned,
    }
}

fn senders_sink() -> SinkServer {
    SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default())
}

#[test]
fn the_parameters_are_checked_at_mail_and_rcpt() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let ehlo = client.command("EHLO client.example.org");
    assert!(ehlo.lines.iter().any(|l| l == "DSN"), "{ehlo:?}");
    for bad in [
        "RET=ALL",
        "RET",
        "ENVID=a=b",
        &format!("ENVID={}", "x".repeat(101)),
        "RET=FULL RET=HDRS",
    ] {
        client
            .command(&format!("MAIL FROM:<sender@example.org> {bad}"))
            .expect(501, "5.5.4");
    }
    client
        .command(&format!(
            "MAIL FROM:<sender@example.org> RET=hdrs ENVID={}",
            "x".repeat(100)
        ))
        .expect(250, "2.1.0");
    for bad in [
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=SOMETIMES",
        "NOTIFY=SUCCESS,SUCCESS",
        "ORCPT=alice@example.test",
        "ORCPT=x400;alice",
        "ORCPT=rfc822;a+4",
        "NOTIFY=NEVER NOTIFY=NEVER",
    ] {
        client
            .command(&format!("RCPT TO:<alice@example.test> {bad}"))
            .expect(501, "5.5.4");
    }
    client
        .command(
            "RCPT TO:<alice@example.test> notify=success,delay orcpt=rfc822;alice@example.test",
        )
        .expect(250, "2.1.5");
}

#[test]
fn the_parameters_reach_a_next_hop_that_offers_dsn_byte_exact_and_it_reports_from_there() {
    let internal = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default().dsn());
    let senders = senders_sink();
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], internal.addr())
            .route("back", &["example.org"], senders.addr()),
    );
    send(
        &gateway,
        " RET=HDRS ENVID=QQ+2B314+3Dx",
        &[
            (
                "alice@example.test",
                " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Bold@example.test",
            ),
            ("bob@example.test", ""),
        ],
    );
    let received = internal.wait_for(1, PATIENCE);
    let message = &received[0];
    assert!(
        message.mail_params.contains(&"RET=HDRS".to_owned())
            && message
                .mail_params
                .contains(&"ENVID=QQ+2B314+3Dx".to_owned()),
        "{:?}",
        message.mail_params
    );
    assert_eq!(message.rcpt_to, ["alice@example.test", "bob@example.test"]);
    assert_eq!(
        message.rcpt_params,
        vec![
            vec![
                "NOTIFY=SUCCESS,FAILURE".to_owned(),
                "ORCPT=rfc822;alice+2Bold@example.test".to_owned()
            ],
            Vec::new()
        ]
    );
    // The next hop took NOTIFY on: the gateway itself sends no success notice.
    gateway.wait_for_log("delivery attempt");
    std::thread::sleep(Duration::from_millis(700));
    assert!(senders.received().is_empty(), "{:?}", senders.received());
}

#[test]
fn notify_success_to_a_next_hop_without_dsn_gives_one_relayed_notice() {
    let internal = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let senders = senders_sink();
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], internal.addr())
            .route("back", &["example.org"], senders.addr()),
    );
    send(
        &gateway,
        " ENVID=QQ+2B314",
        &[
            (
                "alice@example.test",
                " NOTIFY=SUCCESS ORCPT=rfc822;alice+2Bold@example.test",
            ),
            ("bob@example.test", ""),
        ],
    );
    let delivered = internal.wait_for(1, PATIENCE);
    // Nothing of DSN goes to a next hop that does not offer it.
    assert!(
        !delivered[0]
            .mail_params
            .iter()
            .any(|p| p.starts_with("ENVID")),
        "{:?}",
        delivered[0].mail_params
    );
    assert_eq!(delivered[0].rcpt_params, vec![Vec::<String>::new(); 2]);

    let notices = senders.wait_for(1, PATIENCE);
    assert_eq!(notices[0].rcpt_to, ["sender@example.org"]);
    let notice = notice(&notices[0]);
    assert_eq!(
        notice.types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ],
        "{}",
        notice.raw
    );
    assert!(
        notice.status.contains("Action: relayed"),
        "{}",
        notice.status
    );
    assert!(notice.status.contains("Status: 2.0.0"), "{}", notice.status);
    assert!(
        notice.status.contains("Original-Envelope-Id: QQ+314"),
        "{}",
        notice.status
    );
    assert!(
        notice
            .status
            .contains("Original-Recipient: rfc822; alice+old@example.test"),
        "{}",
        notice.status
    );
    assert!(
        notice
            .status
            .contains("Final-Recipient: rfc822; alice@example.test"),
        "{}",
        notice.status
    );
    // Only alice asked; bob (no NOTIFY) hears nothing of a success.
    assert!(!notice.status.contains("bob@"), "{}", notice.status);
    assert!(
        notice.returned.contains("Subject: dsn test"),
        "{}",
        notice.raw
    );
    assert!(!notice.raw.contains("SECRET BODY"), "{}", notice.raw);
    // One notice, once.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(senders.received().len(), 1);
}

#[test]
fn notify_success_into_a_maildir_gives_a_delivered_notice() {
    let senders = senders_sink();
    let mailboxes = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .maildir_route("local", &["example.test"], mailboxes.path())
            .route("back", &["example.org"], senders.addr()),
    );
    send(
        &gateway,
        "",
        &[("alice@example.test", " NOTIFY=SUCCESS,FAILURE")],
    );
    let notices = senders.wait_for(1, PATIENCE);
    let notice = notice(&notices[0]);
    assert!(
        notice.status.contains("Action: delivered"),
        "{}",
        notice.status
    );
    assert!(
        notice
            .raw
            .contains("Subject: Successful Mail Delivery Report"),
        "{}",
        notice.raw
    );
    assert!(
        mailboxes
            .path()
            .join("alice@example.test")
            .join("new")
            .exists()
    );
}

#[test]
fn notify_never_means_no_bounce_and_ret_chooses_what_a_bounce_returns() {
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default()
            .reject_rcpt("never@example.test", 550, "5.1.1")
            .reject_rcpt("hdrs@example.test", 550, "5.1.1")
            .reject_rcpt("full@example.test", 550, "5.1.1"),
    );
    let senders = senders_sink();
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], internal.addr())
            .route("back", &["example.org"], senders.addr()),
    );
    // NOTIFY=NEVER: the refusal is recorded, nobody is told.
    send(&gateway, "", &[("never@example.test", " NOTIFY=NEVER")]);
    gateway.wait_for_log("no failure notice: NOTIFY does not ask for one");

    send(
        &gateway,
        " RET=HDRS",
        &[("hdrs@example.test", " NOTIFY=FAILURE")],
    );
    let notices = senders.wait_for(1, PATIENCE);
    let hdrs = notice(&notices[0]);
    assert!(hdrs.status.contains("Action: failed"), "{}", hdrs.status);
    assert!(hdrs.status.contains("Status: 5.1.1"), "{}", hdrs.status);
    assert!(hdrs.status.contains("hdrs@example.test"), "{}", hdrs.status);
    assert_eq!(hdrs.types[2], "text/rfc822-headers", "{}", hdrs.raw);
    assert!(hdrs.returned.contains("Subject: dsn test"), "{}", hdrs.raw);
    assert!(!hdrs.raw.contains("SECRET BODY"), "{}", hdrs.raw);

    send(&gateway, " RET=FULL", &[("full@example.test", "")]);
    let notices = senders.wait_for(2, PATIENCE);
    let full = notice(&notices[1]);
    assert!(full.status.contains("full@example.test"), "{}", full.status);
    assert_eq!(full.types[2], "message/rfc822", "{}", full.raw);
    assert!(full.returned.contains("Subject: dsn test"), "{}", full.raw);
    assert!(
        full.returned
            .contains("SECRET BODY LINE\r\n.leading dot\r\n"),
        "{}",
        full.raw
    );

    // The NOTIFY=NEVER message never produced one.
    std::thread::sleep(Duration::from_millis(500));
    let all = senders.received();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| !m.text().contains("never@example.test")));
}

#[test]
fn a_delay_notice_only_for_recipients_whose_notify_asks_for_delays() {
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().tempfail_data_first(usize::MAX),
    );
    let senders = senders_sink();
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .queue("retry_intervals", r#"["500ms"]"#)
            .queue("delay_notice_after", r#""1s""#)
            .queue("max_lifetime", r#""4s""#)
            .route("internal", &["example.test"], internal.addr())
            .route("back", &["example.org"], senders.addr()),
    );
    send(
        &gateway,
        "",
        &[
            ("alice@example.test", " NOTIFY=FAILURE"),
            ("bob@example.test", " NOTIFY=DELAY,FAILURE"),
        ],
    );
    let notices = senders.wait_for(2, PATIENCE);
    let delay = notice(&notices[0]);
    assert!(delay.status.contains("Action: delayed"), "{}", delay.status);
    assert!(
        delay.status.contains("bob@example.test"),
        "{}",
        delay.status
    );
    assert!(
        !delay.status.contains("alice@example.test"),
        "{}",
        delay.status
    );
    let expired = notice(&notices[1]);
    assert!(
        expired.status.contains("Action: failed"),
        "{}",
        expired.status
    );
    assert!(
        expired.status.contains("alice@example.test")
            && expired.status.contains("bob@example.test"),
        "{}",
        expired.status
    );
}
