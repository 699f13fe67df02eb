//! A success notice (NOTIFY=SUCCESS, RFC 3461) is made durable like a bounce: spooled
//! before the delivery it reports is recorded. When the disk is full at that moment the
//! delivery is not repeated (the next hop has the message) and not recorded either: the
//! outcome is held until the notice fits, then both go down, and the sender gets exactly
//! one notice. A 8 MiB tmpfs is mounted for the test (root only; without it the test says
//! so and passes without running).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PATIENCE, SmtpClient, Tmpfs, dot_stuff};

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0x55u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_holds_the_delivery_until_its_success_notice_is_spooled() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    // Slow enough that the disk can be filled between the 250 and the outcomes; no DSN
    // on offer, so the gateway owes a "relayed" notice.
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reply_delay(Duration::from_millis(700)),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let spool: PathBuf = tmpfs.path().join("spool");
    let text = GatewayConfig::default()
        .queue("retry_intervals", r#"["1s"]"#)
        .route("internal", &["example.test"], internal.addr())
        .route("back", &["example.org"], senders.addr())
        .render()
        .replace(
            "[spool]\npath = \"spool\"\n",
            &format!("[spool]\npath = {spool:?}\nmin_free_space = 0\n"),
        );
    let gateway = Gateway::start_with_text(&text, 1);
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test> NOTIFY=SUCCESS")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(&dot_stuff(b"Subject: notice me\r\n\r\nhello\r\n"));
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
    let filler = tmpfs.path().join("filler");
    fill(&filler);

    gateway.wait_for_log("a success notice could not be spooled");
    // Held while the disk is full: retried, but nothing is delivered again.
    gateway.wait_for_log("a success notice still cannot be spooled");
    assert_eq!(internal.received().len(), 1, "delivered again");
    assert!(senders.received().is_empty());
    assert_eq!(gateway.spool_list().len(), 1);

    std::fs::remove_file(&filler).expect("free the space");
    let notices = senders.wait_for(1, PATIENCE);
    let text = notices[0].text();
    assert!(text.contains("Action: relayed"), "{text}");
    assert!(text.contains("alice@example.test"), "{text}");
    let deadline = Instant::now() + PATIENCE;
    while !gateway.spool_list().is_empty() {
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(internal.received().len(), 1, "alice was delivered again");
    assert_eq!(senders.received().len(), 1, "the notice was repeated");
    drop(client);
    drop(gateway);
    drop(tmpfs);
}
