//! The shipped `content-filter` plugin, loaded as real Wasm: an executable attachment is
//! refused after DATA, scores over the thresholds reject or quarantine, and every message
//! kept carries the score header.

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn gateway() -> Gateway {
    Gateway::start_with(&GatewayConfig {
        plugins: vec![
            PluginEntry::new("content", "content_filter.wasm")
                .config("reject_threshold = 10.0")
                .config("quarantine_threshold = 5.0")
                .config(r#"score_header = "X-Tidegate-Score""#)
                .config(r#"blocked_extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "jar"]"#)
                .config(r#"blocked_content_types = ["application/x-msdownload"]"#)
                .config("[[plugin.config.rules]]")
                .config(r#"name = "viagra""#)
                .config(r#"header = "subject""#)
                .config(r#"contains = "viagra""#)
                .config("score = 6.0")
                .config("[[plugin.config.rules]]")
                .config(r#"name = "lottery""#)
                .config("body = true")
                .config(r#"pattern = "*you have won*""#)
                .config("score = 5.0"),
        ],
        ..GatewayConfig::default()
    })
}

/// A multipart message with a text part and a base64 Windows executable.
fn with_executable(filename: &str) -> String {
    with_executable_and_text(filename, "Please find the invoice attached.")
}

/// The same, with the text part given.
fn with_executable_and_text(filename: &str, text: &str) -> String {
    format!(
        "From: sender@example.org\r\nTo: user@example.test\r\nSubject: Your invoice\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n\
         --b1\r\nContent-Type: application/octet-stream; name=\"{filename}\"\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n\
         TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\
         gAAAAA4fug4AtAnNIbgBTM0hVGhpcyBwcm9ncmFtIGNhbm5vdCBiZSBydW4gaW4gRE9TIG1vZGUu\r\n\
         --b1--\r\n"
    )
}

#[test]
fn an_executable_attachment_is_refused_after_data_and_nothing_is_spooled() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &with_executable("invoice.pdf.exe"),
    );
    reply.expect(550, "5.7.1");
    assert!(reply.text().contains("invoice.pdf.exe"), "{reply:?}");
    assert!(gateway.spool_list().is_empty());
    // The session goes on, and a clean message still flows.
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("hello", "nothing to see"),
    );
    reply.expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1);
    // Tags of the refused transaction do not leak into this one.
    let envelope = gateway.spool_envelope(&reply.queue_id().unwrap());
    assert_eq!(
        envelope["tags"],
        serde_json::json!({ "content_score": "0.0" }),
        "{envelope}"
    );
}

#[test]
fn a_clean_message_is_kept_with_a_zero_score_header() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // A forged score header from the sender does not survive.
    let message = "X-Tidegate-Score: -50.0\r\nFrom: sender@example.org\r\nSubject: lunch\r\n\r\nSee you at noon.\r\n";
    let reply = client.send_mail("sender@example.org", &["user@example.test"], message);
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().unwrap();
    let shown = String::from_utf8(gateway.spool_show(&id)).unwrap();
    assert!(
        shown.starts_with("X-Tidegate-Score: 0.0\r\nReceived: from "),
        "{shown}"
    );
    assert!(!shown.contains("-50.0"), "{shown}");
    let envelope = gateway.spool_envelope(&id);
    assert_eq!(
        envelope["quarantine"],
        serde_json::Value::Null,
        "{envelope}"
    );
    assert_eq!(envelope["tags"]["content_score"], "0.0", "{envelope}");
}

#[test]
fn a_message_over_the_quarantine_threshold_is_accepted_into_quarantine() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("Cheap VIAGRA", "best prices"),
    );
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().unwrap();
    let envelope = gateway.spool_envelope(&id);
    let reason = envelope["quarantine"]
        .as_str()
        .unwrap_or_else(|| panic!("no quarantine reason: {envelope}"));
    assert!(
        reason.contains("6.0") && reason.contains("viagra"),
        "{reason}"
    );
    assert_eq!(envelope["tags"]["content_score"], "6.0", "{envelope}");
    let shown = String::from_utf8(gateway.spool_show(&id)).unwrap();
    assert!(
        shown.starts_with("X-Tidegate-Score: 6.0 rules=viagra\r\n"),
        "{shown}"
    );
}

#[test]
fn a_message_over_the_reject_threshold_is_refused() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("viagra offer", "Congratulations, YOU HAVE WON a prize"),
    );
    reply.expect(550, "5.7.1");
    assert!(reply.text().contains("score 11.0"), "{reply:?}");
    assert!(gateway.spool_list().is_empty());
}

#[test]
fn messages_larger_than_the_spool_write_buffer_are_scanned_too() {
    // Over 64 KiB the spool has flushed part of the message to its file before on-data
    // reads it back; 110 kB stays within the 256 KiB that body rules read.
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let filler = "All work and no play makes a long message.\r\n".repeat(2500);
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &with_executable_and_text("setup.EXE", &filler),
    );
    reply.expect(550, "5.7.1");
    let late = format!("{filler}And finally: you have won!");
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("Re: viagra", &late),
    );
    reply.expect(550, "5.7.1");
    assert!(reply.text().contains("score 11.0"), "{reply:?}");
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("long but clean", &filler),
    );
    reply.expect(250, "2.0.0");
    let shown = gateway.spool_show(&reply.queue_id().unwrap());
    assert!(shown.starts_with(b"X-Tidegate-Score: 0.0\r\n"));
    assert!(shown.len() > 110_000);
}
