//! Graceful shutdown on SIGTERM: the listener stops accepting, idle sessions are told
//! 421 4.3.2, a session inside a transaction may finish it (its message is spooled), and
//! the process exits 0 once no session is left, or at the end of `shutdown_grace` at the
//! latest, leaving nothing half-written in the spool.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PATIENCE, SmtpClient, dot_stuff, sample_message};

/// Asserts that a new connection is refused, or closed without a greeting.
fn assert_not_greeted(addr: SocketAddr) {
    let mut stream = match TcpStream::connect_timeout(&addr, PATIENCE) {
        Ok(stream) => stream,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ),
                "{e}"
            );
            return;
        }
    };
    // Connected into a backlog that is about to be dropped: it must end without a 220.
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection neither refused nor closed: {e}"),
    }
    assert!(
        !received.starts_with(b"220"),
        "greeted after shutdown began: {:?}",
        String::from_utf8_lossy(&received)
    );
}

fn in_transaction(addr: SocketAddr) -> SmtpClient {
    let mut client = SmtpClient::ehlo(addr);
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client
}

#[test]
fn sigterm_closes_idle_sessions_and_lets_a_transaction_finish() {
    let mut gateway = Gateway::start();
    let addr = gateway.addr();
    let mut idle = SmtpClient::ehlo(addr);
    let mut busy = in_transaction(addr);

    let signalled = Instant::now();
    gateway.signal(libc::SIGTERM);

    let reply = idle.read_reply();
    reply.expect(421, "4.3.2");
    assert!(idle.is_closed(), "the idle session stays open");

    assert_not_greeted(addr);

    busy.command("DATA");
    let message = sample_message("during-shutdown", "Finished after SIGTERM.");
    busy.send(&dot_stuff(message.as_bytes()));
    busy.send(b".\r\n");
    let reply = busy.read_reply();
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().expect("queue id");
    // The session is idle again after its transaction, so the server may close it
    // itself; either way the client hears a reply and then EOF.
    let bye = busy.command("QUIT");
    assert!(
        (bye.code, bye.enhanced()) == (221, Some("2.0.0"))
            || (bye.code, bye.enhanced()) == (421, Some("4.3.2")),
        "{bye:?}"
    );
    assert!(busy.is_closed());

    let status = gateway.wait_exit();
    assert!(status.success(), "exit status {status}");
    // With every session gone the process does not wait out the 30 s grace period.
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?} to exit",
        signalled.elapsed()
    );

    gateway.restart(1);
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].id, id);
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
    let stored = gateway.spool_message(&id);
    assert!(stored.ends_with(message.as_bytes()));
}

#[test]
fn the_grace_period_bounds_a_transaction_that_never_ends() {
    let mut gateway =
        Gateway::start_with(&GatewayConfig::default().top("shutdown_grace", "\"1s\""));
    let addr = gateway.addr();

    // One message is committed before the shutdown; it is all the spool should hold after.
    let mut early = SmtpClient::ehlo(addr);
    let reply = early.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("before-shutdown", "Committed."),
    );
    reply.expect(250, "2.0.0");
    let committed = reply.queue_id().expect("queue id");
    early.command("QUIT").expect(221, "2.0.0");

    // One client stops after RCPT, another in the middle of a large message's data, with
    // part of it already written to spool/tmp.
    let mut after_rcpt = in_transaction(addr);
    let mut mid_data = in_transaction(addr);
    assert_eq!(mid_data.command("DATA").code, 354);
    let mut partial = sample_message("never-finished", "").into_bytes();
    for line in 0..3000 {
        partial.extend_from_slice(
            format!("line {line:05} of a message that never ends\r\n").as_bytes(),
        );
    }
    mid_data.send(&dot_stuff(&partial));
    let deadline = Instant::now() + PATIENCE;
    while gateway.spool_partials().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the data never reached spool/tmp"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let signalled = Instant::now();
    gateway.signal(libc::SIGTERM);
    let status = gateway.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the grace period was over"
    );
    assert!(
        took < Duration::from_secs(6),
        "exited after {took:?}, long after the 1 s grace period"
    );
    // Neither client got a 250, and both connections are gone with the process.
    for client in [&mut after_rcpt, &mut mid_data] {
        if let Some(reply) = client.try_read_reply() {
            assert_ne!(reply.code, 250, "{reply:?}");
        }
        assert!(client.is_closed());
    }

    let in_msg: Vec<String> = std::fs::read_dir(gateway.spool_dir().join("msg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        in_msg,
        vec![committed.clone()],
        "spool/msg holds more than the committed message"
    );

    gateway.restart(1);
    assert_eq!(gateway.spool_partials(), Vec::<String>::new());
    let spooled = gateway.spool_list();
    assert_eq!(
        spooled.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec![committed.as_str()]
    );
}
