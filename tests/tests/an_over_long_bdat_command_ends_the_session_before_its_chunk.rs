//! A BDAT command line over the length limit cannot be obeyed, and its chunk cannot be
//! skipped without its size: if the session went on, the chunk's bytes would be read as
//! commands (a smuggling vector). So the line is refused and the session closed, and
//! nothing in the chunk is ever executed, whether the line is a little over the limit
//! (padded with spaces, still parseable) or far over it (thrown away unread).

use tidegate_e2e::{Gateway, SmtpClient};

fn over_long_bdat_closes(padding: usize) {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    let chunk = "RSET\r\nMAIL FROM:<smuggled@example.org>\r\n";
    let line = format!("BDAT {}{} LAST\r\n", chunk.len(), " ".repeat(padding));
    client.send(format!("{line}{chunk}").as_bytes());
    client.read_reply().expect(500, "5.5.2");
    let closing = client.read_reply();
    closing.expect(421, "4.7.0");
    assert!(client.is_closed(), "the session went on");
    assert!(gateway.spool_list().is_empty());
}

#[test]
fn a_bdat_line_a_little_over_the_limit_closes_the_session() {
    // Over 512 octets but under the 1,024 read for MAIL and RCPT: the line parses.
    over_long_bdat_closes(600);
}

#[test]
fn a_bdat_line_far_over_the_limit_closes_the_session() {
    over_long_bdat_closes(5000);
}
