//! The shipped `dnsbl` plugin, loaded as real Wasm and asking a real DNS server (dnsmasq
//! on loopback) through the host's resolver, refuses a listed client with 554 5.7.1 in
//! place of the greeting, lets an unlisted one send mail, and does not let a blocklist
//! outage stop mail unless told to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const LISTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const UNLISTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

fn blocklist() -> DnsServer {
    let dns = DnsServer::start(
        &["bl.example.test"],
        &[("2.0.0.127.bl.example.test", "127.0.0.2")],
    );
    // The fixture itself: listed, and NXDOMAIN (3) for everyone else.
    assert_eq!(
        dns.resolve_a("2.0.0.127.bl.example.test"),
        Ok(vec![Ipv4Addr::new(127, 0, 0, 2)])
    );
    assert_eq!(dns.resolve_a("1.0.0.127.bl.example.test"), Err(3));
    dns
}

fn gateway(nameserver: SocketAddr, extra: &[&str]) -> Gateway {
    gateway_with_timeout(nameserver, 2000, extra)
}

fn gateway_with_timeout(nameserver: SocketAddr, timeout_ms: u64, extra: &[&str]) -> Gateway {
    let mut plugin = PluginEntry::new("dnsbl", "dnsbl.wasm")
        .config(r#"zones = ["bl.example.test"]"#)
        .config("check_private = true");
    for line in extra {
        plugin = plugin.config(line);
    }
    Gateway::start_with(
        &GatewayConfig {
            plugins: vec![plugin],
            ..GatewayConfig::default()
        }
        .dns(nameserver, timeout_ms),
    )
}

#[test]
fn a_listed_client_gets_554_5_7_1_instead_of_the_greeting_and_an_unlisted_one_sends_mail() {
    let dns = blocklist();
    let gateway = gateway(dns.addr(), &[]);

    let mut listed = SmtpClient::connect_from(LISTED, gateway.addr());
    listed.greeting.expect(554, "5.7.1");
    let text = listed.greeting.text();
    assert!(text.contains("bl.example.test"), "zone not named: {text}");
    assert!(text.contains("127.0.0.2"), "client not named: {text}");
    assert!(listed.is_closed(), "connection left open after the refusal");

    let mut unlisted = SmtpClient::connect_from(UNLISTED, gateway.addr());
    assert_eq!(unlisted.greeting.code, 220, "{:?}", unlisted.greeting);
    unlisted
        .command("EHLO client.example.org")
        .code
        .eq(&250)
        .then_some(())
        .expect("EHLO accepted");
    unlisted
        .send_mail(
            "alice@example.org",
            &["bob@example.test"],
            &sample_message("dnsbl", "not listed"),
        )
        .expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1);

    gateway.wait_for_log("client listed");
    let log = gateway.log();
    assert!(
        log.contains("zone=\"bl.example.test\""),
        "listing not logged with its zone:\n{log}"
    );
    let queries = dns.log();
    assert!(
        queries.contains("query[A] 2.0.0.127.bl.example.test")
            && queries.contains("query[A] 1.0.0.127.bl.example.test"),
        "the gateway did not ask the blocklist:\n{queries}"
    );
}

#[test]
fn an_unreachable_blocklist_lets_mail_through_by_default() {
    // A name server that never answers: every lookup times out.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let gateway = gateway_with_timeout(silent.local_addr().unwrap(), 300, &[]);
    let mut client = SmtpClient::connect_from(UNLISTED, gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    client.command("EHLO client.example.org");
    client
        .send_mail(
            "alice@example.org",
            &["bob@example.test"],
            &sample_message("outage", "still flowing"),
        )
        .expect(250, "2.0.0");
    gateway.wait_for_log("blocklist lookup failed");
}

#[test]
fn a_failing_blocklist_defers_clients_with_421_4_4_3_when_on_dns_error_is_tempfail() {
    // A server that refuses queries for the zone (it is authoritative for another one):
    // a DNS error, not an answer.
    let dns = DnsServer::start(&["other.example.test"], &[]);
    let gateway = gateway(dns.addr(), &[r#"on_dns_error = "tempfail""#]);
    let mut client = SmtpClient::connect_from(UNLISTED, gateway.addr());
    client.greeting.expect(421, "4.4.3");
    assert!(client.is_closed(), "connection left open after the 421");

    // The same outage with the default policy: mail flows.
    let gateway = self::gateway(dns.addr(), &[]);
    let client = SmtpClient::connect_from(UNLISTED, gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
}
