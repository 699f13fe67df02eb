//! Admission control: a client over `max_connections_per_ip`, or any client once
//! `max_connections` sessions run, is told 421 4.7.0 instead of the greeting and
//! disconnected; a slot frees up as soon as a session ends.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tidegate_e2e::{Gateway, GatewayConfig, PATIENCE, SmtpClient};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn admitted(from: IpAddr, addr: SocketAddr) -> SmtpClient {
    let client = SmtpClient::connect_from(from, addr);
    assert_eq!(
        (client.greeting.code, client.greeting.text()),
        (220, "relay.example.test ESMTP".to_owned()),
        "from {from}"
    );
    client
}

#[track_caller]
fn assert_turned_away(from: IpAddr, addr: SocketAddr, why: &str) {
    let mut client = SmtpClient::connect_from(from, addr);
    client.greeting.expect(421, "4.7.0");
    assert!(
        client.greeting.text().contains(why),
        "{:?} does not say {why:?}",
        client.greeting
    );
    assert!(client.is_closed(), "the refused connection stays open");
}

/// Ends a session politely and waits until its slot is free again, i.e. until a new
/// connection from `from` is greeted with 220 (which it keeps and returns).
fn free_a_slot(mut client: SmtpClient, from: IpAddr, addr: SocketAddr) -> SmtpClient {
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut next = SmtpClient::connect_from(from, addr);
        match next.greeting.code {
            220 => return next,
            421 => assert!(next.is_closed()),
            other => panic!("unexpected greeting {other}: {:?}", next.greeting),
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_third_connection_from_one_address_is_refused() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_connections_per_ip", 2));
    let addr = gateway.addr();
    let local = ip("127.0.0.1");
    let first = admitted(local, addr);
    let _second = admitted(local, addr);

    assert_turned_away(local, addr, "too many connections from your address");
    // Another address is not affected.
    let mut other = admitted(ip("127.0.0.2"), addr);
    other.command("EHLO other.example.org");
    // Refusals hold no slot: refusing again still works, and the admitted sessions work.
    assert_turned_away(local, addr, "too many connections from your address");
    other.command("NOOP").expect(250, "2.0.0");

    let mut third = free_a_slot(first, local, addr);
    third.command("NOOP").expect(250, "2.0.0");
    // And the freed slot is taken again.
    assert_turned_away(local, addr, "too many connections from your address");
}

#[test]
fn connections_over_the_total_are_refused_whatever_the_address() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_connections", 2));
    let addr = gateway.addr();
    let first = admitted(ip("127.0.0.1"), addr);
    let _second = admitted(ip("127.0.0.2"), addr);

    assert_turned_away(ip("127.0.0.3"), addr, "too many connections");
    assert_turned_away(ip("127.0.0.1"), addr, "too many connections");

    let mut third = free_a_slot(first, ip("127.0.0.3"), addr);
    third.command("NOOP").expect(250, "2.0.0");
    assert_turned_away(ip("127.0.0.4"), addr, "too many connections");
}
