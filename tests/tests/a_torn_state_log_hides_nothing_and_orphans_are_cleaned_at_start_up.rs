//! State logs after a crash: a torn line in the middle of a message's state log (a crash
//! mid-append, with later appends after it) hides none of the outcomes recorded after it,
//! so recipients already delivered are not delivered again; and the state files of
//! messages no longer in the spool are removed at start-up.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

fn delivered(rcpt: usize) -> String {
    format!(
        "{{\"rcpt\":{rcpt},\"outcome\":\"delivered\",\"attempt\":1,\"at\":1,\"reply\":\"250 ok\"}}\n"
    )
}

#[test]
fn outcomes_after_a_torn_line_count_and_orphaned_state_files_go() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    // First run: the queue is held, so the message stays in the spool.
    let mut gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "sender@example.org",
        &["alice@example.test", "bob@example.test"],
        &sample_message("torn", "x"),
    );
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().expect("queue ID");
    drop(client);
    gateway.kill9();

    // Its log as a crash mid-append leaves it: alice delivered, a torn line, then bob
    // delivered by a later attempt.
    let state = gateway.spool_dir().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let log = format!("{}{{\"rcpt\":1,\"outc\n{}", delivered(0), delivered(1));
    std::fs::write(state.join(&id), log).unwrap();
    // And the leftovers of a message that is gone.
    let orphan = "0000000000000ABC";
    std::fs::write(state.join(orphan), delivered(0)).unwrap();
    std::fs::write(state.join(format!("{orphan}.delayed")), b"").unwrap();

    // Second run, delivering: both recipients are known to be delivered, so nothing is
    // sent and the message is finished.
    let text = GatewayConfig::default()
        .route("internal", &["example.test"], sink.addr())
        .render();
    std::fs::write(gateway.config_path(), text).unwrap();
    gateway.restart(1);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        sink.received().is_empty(),
        "delivered again: {:?}",
        sink.received()
    );
    assert!(
        gateway.spool_list().is_empty(),
        "{:?}",
        gateway.spool_list()
    );
    assert!(!state.join(orphan).exists(), "orphaned state log left");
    assert!(!state.join(format!("{orphan}.delayed")).exists());
    assert!(!state.join(&id).exists());
}
