//! The command timeout: a client that says nothing for `command_timeout_secs` is told
//! 421 4.4.2 and disconnected, whether it is idle before EHLO or inside a transaction.

use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

#[test]
fn an_idle_client_gets_421_and_is_disconnected() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("command_timeout_secs", 1));
    let started = Instant::now();
    let mut silent = SmtpClient::connect(gateway.addr());
    assert_eq!(silent.greeting.code, 220);
    let mut stalled = SmtpClient::ehlo(gateway.addr());
    stalled
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    stalled
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");

    for client in [&mut silent, &mut stalled] {
        let reply = client.read_reply();
        reply.expect(421, "4.4.2");
        assert!(reply.text().contains("timeout"), "{reply:?}");
        assert!(client.is_closed(), "still open after the 421");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "timed out too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "timed out too late: {elapsed:?}"
    );
    assert_eq!(gateway.spool_list(), Vec::new());
}

#[test]
fn a_client_that_keeps_talking_is_not_timed_out() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("command_timeout_secs", 1));
    let mut client = SmtpClient::ehlo(gateway.addr());
    let started = Instant::now();
    // Commands every 400 ms for over two timeouts' worth: each resets the clock.
    while started.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(400));
        client.command("NOOP").expect(250, "2.0.0");
    }
}

#[test]
fn a_client_trickling_a_command_byte_by_byte_still_times_out() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("command_timeout_secs", 1));
    let mut client = SmtpClient::connect(gateway.addr());
    let started = Instant::now();
    // One byte every 200 ms never completes a line; each byte alone would reset a
    // per-read timeout, but the timeout covers the whole command.
    let trickle = std::thread::spawn({
        let stream = client.stream().try_clone().unwrap();
        move || {
            use std::io::Write;
            let mut stream = stream;
            for _ in 0..40 {
                if stream.write_all(b"N").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    let reply = client.read_reply();
    reply.expect(421, "4.4.2");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    trickle.join().unwrap();
}
