//! The queue on a full disk: when the file system fills up while a message is being
//! delivered, a recipient that bounced is not recorded as bounced while its DSN cannot be
//! spooled (it stays deferred, and the bounce comes once there is room), and outcomes
//! that cannot be written to the state log hold the message rather than have what was
//! delivered delivered again. A 8 MiB tmpfs is mounted for the test (root only; without
//! it the test says so and passes without running).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, Tmpfs, sample_message};

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0x55u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_keeps_the_bounce_and_does_not_repeat_the_delivery() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    // Slow enough that the disk can be filled between the 250 and the outcomes.
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default()
            .reject_rcpt("bob@example.test", 550, "5.1.1")
            .reply_delay(Duration::from_millis(700)),
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
        .send_mail(
            "sender@example.org",
            &["alice@example.test", "bob@example.test"],
            &sample_message("full-disk", "x"),
        )
        .expect(250, "2.0.0");
    let filler = tmpfs.path().join("filler");
    fill(&filler);

    // alice is delivered, bob refused; neither the bounce nor the outcomes fit on disk.
    gateway.wait_for_log("cannot spool a delivery status notification");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        gateway.spool_list().len(),
        1,
        "the message was dropped, and bob's bounce with it"
    );
    gateway.wait_for_log("delivery outcomes could not be recorded");
    // Held while the disk is full: retried (every second), but nothing is delivered again.
    gateway.wait_for_log("still cannot be recorded");
    assert_eq!(internal.received().len(), 1, "delivered again");
    assert!(senders.received().is_empty());

    // Space returns: the outcomes are recorded, bob is tried again and bounced, and this
    // time the bounce is spooled and delivered; alice is not delivered a second time.
    std::fs::remove_file(&filler).expect("free the space");
    let bounces = senders.wait_for(1, Duration::from_secs(30));
    let text = bounces[0].text();
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("bob@example.test"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.spool_list().is_empty() {
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(internal.received().len(), 1, "alice was delivered again");
    assert_eq!(internal.received()[0].rcpt_to, ["alice@example.test"]);
    assert!(
        gateway
            .log()
            .contains("held delivery outcomes recorded at last"),
        "{}",
        gateway.log()
    );
    drop(client);
    drop(gateway);
    drop(tmpfs);
}
