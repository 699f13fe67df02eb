//! A real, independent SMTP client (swaks) runs a whole session against the gateway, once
//! plainly and once pipelined, and each message ends up in the spool as it was sent.

use std::process::Command;

use tidegate_e2e::{Gateway, without_trace_header};

/// Runs swaks against `gateway` with `extra` arguments; asserts it exits 0.
fn swaks(gateway: &Gateway, subject: &str, body: &str, extra: &[&str]) -> String {
    let server = gateway.addr().to_string();
    let header = format!("Subject: {subject}");
    let output = Command::new("swaks")
        .args(["--server", &server])
        .args(["--helo", "client.example.org"])
        .args(["--from", "a@example.org"])
        .args(["--to", "user@example.test"])
        .args(["--header", &header])
        .args(["--body", body])
        .args(["--timeout", "30"])
        .args(extra)
        .output()
        .expect("run swaks (install it: apt-get install swaks)");
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "swaks failed with {}:\n{transcript}\ngateway log:\n{}",
        output.status,
        gateway.log()
    );
    transcript
}

#[test]
fn swaks_session_ends_with_the_message_in_the_spool() {
    let gateway = Gateway::start();
    let transcript = swaks(
        &gateway,
        "swaks",
        "Hello from swaks.\n.a line starting with a dot",
        &[],
    );
    // swaks saw the server's own words for the outcome.
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued as "),
        "{transcript}"
    );
    assert!(transcript.contains("<-  221 2.0.0 Bye"), "{transcript}");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].sender, "a@example.org");
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
    assert!(
        transcript.contains(&format!("queued as {}", spooled[0].id)),
        "{transcript}"
    );
    let stored = gateway.spool_message(&spooled[0].id);
    let message = String::from_utf8(without_trace_header(&stored).to_vec()).unwrap();
    assert!(
        message.lines().any(|l| l.trim_end() == "Subject: swaks"),
        "{message}"
    );
    // swaks sent the body with CRLF line endings (and some empty lines after it) and
    // dot-stuffed the dot line, which arrives with exactly one dot.
    let body = "\r\n\r\nHello from swaks.\r\n.a line starting with a dot\r\n";
    let at = message.find(body).unwrap_or_else(|| panic!("{message:?}"));
    assert!(
        message[at + body.len()..]
            .bytes()
            .all(|b| b == b'\r' || b == b'\n'),
        "{message:?}"
    );
}

#[test]
fn swaks_pipelined_session_ends_with_the_message_in_the_spool() {
    let gateway = Gateway::start();
    let transcript = swaks(
        &gateway,
        "swaks pipelined",
        "Pipelined body.",
        &["--pipeline"],
    );
    assert!(transcript.contains("queued as "), "{transcript}");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let stored = gateway.spool_message(&spooled[0].id);
    let message = String::from_utf8(without_trace_header(&stored).to_vec()).unwrap();
    assert!(
        message.contains("\r\nSubject: swaks pipelined\r\n"),
        "{message}"
    );
    assert!(
        message.contains("\r\n\r\nPipelined body.\r\n"),
        "{message:?}"
    );
}
