//! Start-up recovery of the spool: partial files a crash left in `spool/tmp` are deleted,
//! unreadable files in `spool/msg` are moved to `spool/corrupt/` for the operator, and the
//! good messages are listed and kept.

use std::fs;
use std::path::Path;

use tidegate_e2e::{Gateway, SmtpClient, sample_message};

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn leftovers_are_removed_and_corrupt_files_set_aside() {
    let mut gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let mut good = Vec::new();
    for n in 0..3 {
        let reply = client.send_mail(
            "sender@example.org",
            &[&format!("user{n}@example.test")],
            &sample_message(&format!("good-{n}"), "Keep me."),
        );
        reply.expect(250, "2.0.0");
        good.push(reply.queue_id().expect("queue id"));
    }
    client.command("QUIT").expect(221, "2.0.0");
    gateway.kill9();

    let spool = gateway.spool_dir();
    let (tmp, msg) = (spool.join("tmp"), spool.join("msg"));
    // Partial files as a crash leaves them: one named like a queue ID, one not.
    fs::write(
        tmp.join("0000000000000001"),
        b"Received: from half a message",
    )
    .unwrap();
    fs::write(tmp.join("junk"), b"").unwrap();
    // Garbage in msg/: a file with a queue-ID name but no footer, one with a name that is
    // no queue ID, and a good message cut short (its footer gone).
    let garbage_id = "00000000000000AB";
    fs::write(msg.join(garbage_id), b"this is not a spool file at all").unwrap();
    fs::write(msg.join("notes.txt"), b"TGSPOOL1").unwrap();
    let truncated_id = "00000000000000CD";
    let whole = fs::read(msg.join(&good[0])).unwrap();
    fs::write(msg.join(truncated_id), &whole[..whole.len() - 5]).unwrap();

    gateway.restart(1);

    assert_eq!(gateway.spool_partials(), Vec::<String>::new());
    let mut set_aside = vec![
        garbage_id.to_owned(),
        truncated_id.to_owned(),
        "notes.txt".to_owned(),
    ];
    set_aside.sort();
    assert_eq!(names_in(&spool.join("corrupt")), set_aside);
    let mut expected_msg = good.clone();
    expected_msg.sort();
    assert_eq!(names_in(&msg), expected_msg);
    // What was set aside is the very file that was put there, untouched.
    assert_eq!(
        fs::read(spool.join("corrupt").join(garbage_id)).unwrap(),
        b"this is not a spool file at all"
    );

    let listed = gateway.spool_list();
    assert_eq!(
        listed.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        good
    );
    for (n, entry) in listed.iter().enumerate() {
        assert_eq!(entry.recipients, vec![format!("user{n}@example.test")]);
        let stored = String::from_utf8(gateway.spool_message(&entry.id)).unwrap();
        assert!(
            stored.ends_with(&sample_message(&format!("good-{n}"), "Keep me.")),
            "{stored}"
        );
    }
    let log = gateway.log();
    assert!(log.contains("partial_files_removed=2"), "{log}");
    assert!(log.contains("corrupt_set_aside=3"), "{log}");

    // The recovered gateway works.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@example.test"],
            &sample_message("after-recovery", "New."),
        )
        .expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 4);
}
