//! A client that sends its message a few bytes at a time, each read well inside the data
//! timeout, cannot hold a session (and a spool file) for ever: the whole transfer, DATA or
//! every BDAT chunk of one message, is limited by `max_data_time_secs`, then the session
//! is closed with 421 4.4.2 and nothing is kept.

use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

fn gateway() -> Gateway {
    Gateway::start_with(&GatewayConfig::default().limit("max_data_time_secs", 2))
}

fn start_transaction(client: &mut SmtpClient) {
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
}

#[test]
fn a_trickle_after_data_is_cut_off() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    start_transaction(&mut client);
    client.command("DATA").expect_code(354);
    let started = Instant::now();
    client.send(b"Subject: slow\r\n\r\n");
    // One short line every 300 ms, for most of the limit: every read comes well inside
    // the data timeout (180 s). Then the client pauses, and is cut off at the limit, not
    // after the data timeout.
    while started.elapsed() < Duration::from_millis(1700) {
        client.send(b"x\r\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    let reply = client.try_read_reply();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let reply = reply.expect("a 421 before the close");
    reply.expect(421, "4.4.2");
    assert!(reply.text().contains("took too long"), "{reply:?}");
    assert!(client.is_closed());
    assert!(gateway.spool_list().is_empty());
    assert!(
        gateway.spool_partials().is_empty(),
        "{:?}",
        gateway.spool_partials()
    );
}

#[test]
fn small_bdat_chunks_spread_over_time_are_cut_off() {
    let gateway = gateway();
    let mut client = SmtpClient::ehlo(gateway.addr());
    start_transaction(&mut client);
    let started = Instant::now();
    let reply = loop {
        assert!(started.elapsed() < Duration::from_secs(15), "never cut off");
        client.send(b"BDAT 3\r\nabc");
        let reply = client.read_reply();
        if reply.code != 250 {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    reply.expect(421, "4.4.2");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(client.is_closed());
    assert!(gateway.spool_list().is_empty());
}
