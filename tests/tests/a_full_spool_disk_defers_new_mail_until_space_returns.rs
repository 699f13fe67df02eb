//! The disk reserve: on a small file system made for the test (a 24 MiB tmpfs), the
//! gateway takes mail while there is room, answers MAIL FROM with `452 4.3.1` once the
//! free space falls below `[spool] min_free_space` (here after a filler file takes most
//! of it), and takes mail again once the space is freed. Needs root (to mount); without
//! it the test says so and passes without running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, Tmpfs, sample_message};

/// Tries MAIL FROM until its reply has `code`, resetting in between; panics after 10 s.
fn wait_for_mail_reply(client: &mut SmtpClient, code: u16, gateway: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.command("MAIL FROM:<sender@example.org>");
        if reply.code == code {
            client.command("RSET").expect(250, "2.0.0");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "MAIL FROM never answered {code}; last {reply:?}\n{}",
            gateway.log()
        );
        client.command("RSET").expect(250, "2.0.0");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mail_is_deferred_below_the_disk_reserve_and_taken_again_when_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("24m") else {
        return;
    };
    let spool: PathBuf = tmpfs.path().join("spool");
    let text = GatewayConfig::default().render().replace(
        "[spool]\npath = \"spool\"\n",
        &format!("[spool]\npath = {spool:?}\nmin_free_space = \"16MiB\"\n"),
    );
    assert!(text.contains("min_free_space"), "{text}");
    let gateway = Gateway::start_with_text(&text, 1);

    // 24 MiB free: mail is taken.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test"],
            &sample_message("room", "x"),
        )
        .expect(250, "2.0.0");
    // A declared size that would eat into the reserve is refused at once.
    client
        .command("MAIL FROM:<sender@example.org> SIZE=9000000")
        .expect(452, "4.3.1");
    client.command("RSET").expect(250, "2.0.0");

    // Something else fills the file system to below the reserve (12 MiB left).
    let filler = tmpfs.path().join("filler");
    std::fs::write(&filler, vec![0x55u8; 12 << 20]).expect("fill the tmpfs");
    wait_for_mail_reply(&mut client, 452, &gateway);
    let reply = client.command("MAIL FROM:<sender@example.org>");
    reply.expect(452, "4.3.1");
    assert!(
        reply.text().contains("Insufficient system storage"),
        "{reply:?}"
    );
    client.command("RSET").expect(250, "2.0.0");
    // A 452 is not an error that ends the session, and the message stays with the client.
    assert_eq!(gateway.spool_list().len(), 1);
    assert!(
        gateway.log().contains("below min_free_space"),
        "{}",
        gateway.log()
    );

    // Space returns: mail is taken again, on the same session.
    std::fs::remove_file(&filler).expect("free the space");
    wait_for_mail_reply(&mut client, 250, &gateway);
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test"],
            &sample_message("again", "x"),
        )
        .expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 2);
    drop(client);
    drop(gateway);
    drop(tmpfs);
}
