//! Start-up is not defeated by what a crash leaves behind: a gateway started while the
//! spool lock is still held (the dying process of a `kill -9`, for a moment) waits for it
//! instead of failing, and a file in `msg/` that cannot be read is set aside into
//! `corrupt/` while every other message is delivered as usual.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

/// The default test configuration with its spool at `spool`.
fn config_with_spool(spool: &Path) -> String {
    GatewayConfig::default().render().replace(
        "[spool]\npath = \"spool\"\n",
        &format!("[spool]\npath = {spool:?}\n"),
    )
}

#[test]
fn a_gateway_started_while_the_spool_lock_is_held_waits_for_it() {
    let base = tempfile::tempdir().unwrap();
    let spool: PathBuf = base.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // This process holds the lock, as a process being killed still does for a moment.
    let lock = std::fs::File::create(spool.join("lock")).unwrap();
    lock.lock().expect("take the spool lock");
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(lock);
    });
    let started = Instant::now();
    let gateway = Gateway::start_with_text(&config_with_spool(&spool), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "started without waiting for the lock"
    );
    released.join().unwrap();
    assert!(
        gateway.log().contains("waiting for the spool lock"),
        "{}",
        gateway.log()
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["alice@example.test"],
            &sample_message("locked", "x"),
        )
        .expect(250, "2.0.0");
}

#[test]
fn an_unreadable_file_in_msg_is_set_aside_and_the_gateway_starts() {
    let base = tempfile::tempdir().unwrap();
    let spool: PathBuf = base.path().join("spool");
    // A queued message from an earlier run, then something in msg/ that cannot be read
    // as a file at all (reading a directory fails with EISDIR).
    let first = Gateway::start_with_text(&config_with_spool(&spool), 1);
    let mut client = SmtpClient::ehlo(first.addr());
    client
        .send_mail(
            "a@example.org",
            &["alice@example.test"],
            &sample_message("kept", "x"),
        )
        .expect(250, "2.0.0");
    drop(client);
    drop(first);
    let unreadable = spool.join("msg").join("0000000000000001");
    std::fs::create_dir(&unreadable).unwrap();

    let gateway = Gateway::start_with_text(&config_with_spool(&spool), 1);
    assert!(
        gateway.log().contains("unusable spool file set aside"),
        "{}",
        gateway.log()
    );
    assert!(!unreadable.exists(), "left in msg/");
    assert!(spool.join("corrupt").join("0000000000000001").exists());
    // The readable message is still queued, and new mail is taken.
    assert_eq!(gateway.spool_list().len(), 1, "{:?}", gateway.spool_list());
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["alice@example.test"],
            &sample_message("new", "x"),
        )
        .expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 2);
}
